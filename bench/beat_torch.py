"""PyTorch peer of the Beat training-throughput benchmark (`beatlab bench beat`).

The same model as `beatlab_nn::beat::Beat` (crates/nn/src/beat.rs), layer for layer:
patch embedding, a pre-norm transformer encoder over patch tokens + learned query tokens
(one fused q/k/v projection split as [3, heads, head_dim], heads wider than width / heads,
tanh GELU MLP, final LayerNorm), residual VQ with EMA codebooks and dead-code restarts, a pre-norm
decoder over per-patch mask tokens + positioned latents, and one output head shared by the
reconstruction and the prediction. One training step is forward, backward, global-norm clipping,
AdamW, then the EMA codebook update, as in the Rust benchmark.

The parameter count is checked against the Rust side's (`--expect-params`) so that the two sides
cannot silently benchmark different models. Talks the line protocol of `serve.py`: the hello
after the peak measurement and the warm-up steps, then one JSON line per timed round.
"""

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import serve


class Config:
    """The paper configuration (beatlab_nn::BeatConfig::default())."""

    leads = 12
    patch_size = 25
    width = 128
    encoder_depth = 6
    decoder_depth = 6
    heads = 8
    head_dim = 64
    mlp_ratio = 4.0
    query_ratio = 0.5
    codebook_size = 512
    input_len = 1000
    predict_len = 500
    dvq_levels = 2
    ema_decay = 0.8
    commitment = 1.0
    laplace_eps = 1e-5
    dead_code_threshold = 0.1
    norm_eps = 1e-5
    w_recon = 1.0
    w_pred = 0.5
    w_vq = 0.25

    def __init__(self, **overrides):
        for k, v in overrides.items():
            setattr(self, k, v)
        self.patches = self.input_len // self.patch_size
        self.queries = round(self.patches * self.query_ratio)
        self.predict_patches = self.predict_len // self.patch_size
        self.patch_values = self.leads * self.patch_size
        self.mlp_hidden = round(self.width * self.mlp_ratio)
        # The paper config has as many queries as predicted patches, so the Rust model has no
        # query map; this peer covers only that case.
        assert self.queries == self.predict_patches


class SelfAttention(nn.Module):
    def __init__(self, width, heads, head_dim):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(width, 3 * inner)
        self.proj = nn.Linear(inner, width)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Bidirectional attention, scale 1 / sqrt(head_dim), as the Rust fused op.
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg.width, cfg.heads, cfg.head_dim)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.width)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class Transformer(nn.Module):
    def __init__(self, cfg, depth):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ResidualVq(nn.Module):
    """Residual VQ; codebooks and EMA statistics are buffers, moved by `update` only."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        k, d = cfg.codebook_size, cfg.width
        for level in range(cfg.dvq_levels):
            embed = torch.randn(k, d)
            self.register_buffer(f"embed{level}", embed)
            self.register_buffer(f"cluster_size{level}", torch.ones(k))
            self.register_buffer(f"embed_sum{level}", embed.clone())

    def codebook(self, level):
        return getattr(self, f"embed{level}")

    def forward(self, z):
        """z: [N, dim] -> (straight-through quantized, codes per level, commit loss, inputs)."""
        target = z.detach()
        residual = target
        total = None
        codes, level_inputs = [], []
        commit = 0.0
        for level in range(self.cfg.dvq_levels):
            book = self.codebook(level)
            # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c)
            dist = book.pow(2).sum(1).unsqueeze(0) - 2.0 * residual @ book.t()
            idx = dist.argmin(1)
            q = book.index_select(0, idx)
            live = z if total is None else z - total
            commit = commit + F.mse_loss(live, q)
            level_inputs.append(residual)
            residual = residual - q
            total = q if total is None else total + q
            codes.append(idx)
        quantized = z + (total - target)
        return quantized, codes, commit * self.cfg.commitment, level_inputs

    @torch.no_grad()
    def update(self, codes, level_inputs):
        cfg = self.cfg
        k, decay, eps = cfg.codebook_size, cfg.ema_decay, cfg.laplace_eps
        for level, (idx, x) in enumerate(zip(codes, level_inputs)):
            counts = torch.bincount(idx, minlength=k).to(x.dtype)
            sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
            sums.index_add_(0, idx, x)
            cluster_size = getattr(self, f"cluster_size{level}")
            embed_sum = getattr(self, f"embed_sum{level}")
            cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
            embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
            n = cluster_size.sum()
            smoothed = (cluster_size + eps) / (n + k * eps) * n
            embed = embed_sum / smoothed.unsqueeze(1)
            dead = cluster_size < cfg.dead_code_threshold
            if dead.any():
                m = x.shape[0]
                if m >= k:
                    picks = torch.randperm(m, device=x.device)[:k]
                else:
                    picks = torch.randint(0, m, (k,), device=x.device)
                replacement = x.index_select(0, picks)
                rows = dead.unsqueeze(1)
                embed = torch.where(rows, replacement, embed)
                embed_sum.copy_(torch.where(rows, replacement * cfg.dead_code_threshold, embed_sum))
                cluster_size.copy_(
                    torch.where(dead, torch.full_like(cluster_size, cfg.dead_code_threshold), cluster_size)
                )
            self.codebook(level).copy_(embed)


class Beat(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch_embed = nn.Linear(cfg.patch_values, w)
        self.encoder_pos = nn.Parameter(torch.randn(cfg.patches + cfg.queries, w) * 0.02)
        self.queries = nn.Parameter(torch.randn(cfg.queries, w) * 0.02)
        self.encoder = Transformer(cfg, cfg.encoder_depth)
        self.quantizer = ResidualVq(cfg)
        self.mask_tokens = nn.Parameter(torch.randn(cfg.patches, w) * 0.02)
        self.latent_pos = nn.Parameter(torch.randn(cfg.queries, w) * 0.02)
        self.decoder = Transformer(cfg, cfg.decoder_depth)
        # One head for the reconstruction and the prediction ("the same 128 -> 300 head").
        self.head = nn.Linear(w, cfg.patch_values)

    def patchify(self, x):
        b, c, _ = x.shape
        p, s = self.cfg.patches, self.cfg.patch_size
        return x.reshape(b, c, p, s).permute(0, 2, 1, 3).reshape(b, p, c * s)

    def unpatchify(self, tokens):
        b, n, _ = tokens.shape
        c, s = self.cfg.leads, self.cfg.patch_size
        return tokens.reshape(b, n, c, s).permute(0, 2, 1, 3).reshape(b, c, n * s)

    def forward(self, windows):
        cfg = self.cfg
        b = windows.shape[0]
        inp = windows[:, :, : cfg.input_len]
        future = windows[:, :, cfg.input_len :]
        tokens = torch.cat(
            [self.patch_embed(self.patchify(inp)), self.queries.unsqueeze(0).expand(b, -1, -1)], 1
        ) + self.encoder_pos
        z = self.encoder(tokens)[:, cfg.patches :]
        quantized, codes, commit, level_inputs = self.quantizer(z.reshape(-1, cfg.width))
        latents = quantized.reshape(b, cfg.queries, cfg.width) + self.latent_pos
        dec_in = torch.cat([self.mask_tokens.unsqueeze(0).expand(b, -1, -1), latents], 1)
        out = self.decoder(dec_in)
        reconstruction = self.unpatchify(self.head(out[:, : cfg.patches]))
        prediction = self.unpatchify(self.head(z))
        loss = (
            cfg.w_recon * F.mse_loss(reconstruction, inp)
            + cfg.w_pred * F.mse_loss(prediction, future)
            + cfg.w_vq * commit
        )
        return loss, codes, level_inputs


def windows_of_sines(cfg, batch, device, generator):
    """Sums of sines varied per window and lead (what the Rust side feeds)."""
    length = cfg.input_len + cfg.predict_len
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.empty(batch, cfg.leads, 1).uniform_(0.005, 0.04, generator=generator)
    phase = torch.empty(batch, cfg.leads, 1).uniform_(0.0, 2 * math.pi, generator=generator)
    return torch.sin(t.view(1, 1, -1) * freqs * 2 * math.pi + phase).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gflops(device, size, reps):
    """Best rate of a size x size f32 matrix product, GFLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    sync(device)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the hello")
    ap.add_argument("--steps", type=int, default=2, help="steps per timed round")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--expect-params", type=int, default=None)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--peak-reps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cfg = Config()
    model = Beat(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    if args.expect_params is not None and params != args.expect_params:
        raise SystemExit(
            f"beat_torch.py: parameter count {params} differs from the Rust model's "
            f"{args.expect_params}: the two sides would benchmark different models"
        )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    windows = windows_of_sines(cfg, args.batch, device, torch.Generator().manual_seed(args.seed))

    def step():
        """One training step; returns the seconds of each phase and the loss."""
        t0 = time.perf_counter()
        loss, codes, level_inputs = model(windows)
        loss_value = loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        model.quantizer.update(codes, level_inputs)
        sync(device)
        t4 = time.perf_counter()
        return (t1 - t0, t2 - t1, t3 - t2, t4 - t3), loss_value

    def one_round():
        phases = {"forward": [], "backward": [], "clip_adamw": [], "codebook_ema": []}
        loss = float("nan")
        for _ in range(args.steps):
            times, loss = step()
            for name, seconds in zip(phases, times):
                phases[name].append(seconds * 1e3)
        return args.batch * args.steps, {"phase_ms": phases, "loss": loss}

    peak = peak_gflops(device, args.peak_size, args.peak_reps)
    for _ in range(args.warmup):
        step()
    serve.serve(
        {
            "peer": "pytorch",
            "torch": torch.__version__,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "params": params,
            "peak_gflops": peak,
        },
        lambda: serve.timed(one_round),
    )


if __name__ == "__main__":
    main()
