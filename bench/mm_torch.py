"""PyTorch + transformers peer of the multimodal benchmark (`beatlab bench mm`).

Two workloads, with the shapes the Rust side sends as JSON (`--shape`):
- `step`: one training step of a Hugging Face `Qwen2ForCausalLM` (randomly initialised, base
  frozen) with LoRA adapters on q/k/v/o (A uniform in +-1/sqrt(in), B zero, scale alpha / rank,
  no dropout) and a signal projector (`depth` x [Linear, exact GELU], then LayerNorm), the
  projected latents as a prefix before the token embeddings, next-token cross-entropy on the
  text positions, backward, `clip_grad_norm_(1.0)`, AdamW over the adapters and the projector;
- `vision`: a forward pass of `SiglipVisionModel` under `torch.no_grad()`.

The hello reports the trainable and frozen parameter counts, which the Rust side checks against
its own before timing. Talks the line protocol of `serve.py`.
"""

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

import serve


class LoraLinear(nn.Module):
    """`base(x) + scale * B(A(x))` with the base frozen."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        bound = 1.0 / math.sqrt(base.in_features)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


class Projector(nn.Module):
    """beatlab_mm::SignalProjector: depth x (Linear, exact GELU), then LayerNorm."""

    def __init__(self, in_dim, out_dim, depth):
        super().__init__()
        dims = [in_dim] + [out_dim] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, x):
        for layer in self.layers:
            x = F.gelu(layer(x))
        return self.norm(x)


def qwen2(shape):
    q = shape["qwen2"]
    config = transformers.Qwen2Config(
        vocab_size=q["vocab_size"],
        hidden_size=q["hidden_size"],
        intermediate_size=q["intermediate_size"],
        num_hidden_layers=q["num_hidden_layers"],
        num_attention_heads=q["num_attention_heads"],
        num_key_value_heads=q.get("num_key_value_heads") or q["num_attention_heads"],
        max_position_embeddings=q["max_position_embeddings"],
        rope_theta=q["rope_theta"],
        rms_norm_eps=q["rms_norm_eps"],
        tie_word_embeddings=q["tie_word_embeddings"],
        hidden_act="silu",
        use_sliding_window=False,
    )
    return transformers.Qwen2ForCausalLM(config)


def count(params):
    return sum(p.numel() for p in params)


def step_workload(shape, seed):
    torch.manual_seed(seed)
    model = qwen2(shape)
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(shape["lora_targets"])
    for layer in model.model.layers:
        attn = layer.self_attn
        for name in targets:
            setattr(attn, name, LoraLinear(getattr(attn, name), shape["lora_rank"], shape["lora_alpha"]))
    hidden = shape["qwen2"]["hidden_size"]
    projector = Projector(shape["latent_dim"], hidden, shape["projector_depth"])
    trainable = [p for p in list(model.parameters()) + list(projector.parameters()) if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=shape["lr"], weight_decay=0.0)
    b, pre, text = shape["batch"], shape["prefix"], shape["text"]
    vocab = shape["qwen2"]["vocab_size"]
    latents = torch.randn(b, pre, shape["latent_dim"])
    ids = torch.randint(0, vocab, (b, text))

    def step():
        embeds = torch.cat([projector(latents), model.model.embed_tokens(ids)], dim=1)
        logits = model(inputs_embeds=embeds).logits
        # Position t predicts token t + 1; the targets are the text tokens.
        pred = logits[:, pre - 1 : -1].reshape(-1, vocab)
        loss = F.cross_entropy(pred.float(), ids.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        return loss.item()

    return step, count(trainable), count(frozen), b


def vision_workload(shape, seed):
    torch.manual_seed(seed)
    c = shape["siglip"]
    config = transformers.SiglipVisionConfig(
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        num_channels=c["num_channels"],
        image_size=c["image_size"],
        patch_size=c["patch_size"],
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=c["layer_norm_eps"],
        vision_use_head=c["vision_use_head"],
    )
    model = transformers.SiglipVisionModel(config).eval()
    images = torch.randn(shape["batch"], c["num_channels"], c["image_size"], c["image_size"])

    def forward():
        with torch.no_grad():
            out = model(pixel_values=images).last_hidden_state
        out.sum().item()
        return None

    return forward, 0, count(model.parameters()), shape["batch"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["step", "vision"], required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = json.loads(args.shape)
    build = step_workload if args.workload == "step" else vision_workload
    run_once, trainable, frozen, per_step = build(shape, args.seed)
    for _ in range(args.warmup):
        run_once()

    def round_fn():
        last = {}

        def work():
            loss = None
            for _ in range(args.steps):
                loss = run_once()
            last["loss"] = loss
            return args.steps * per_step, {"loss": loss}

        return serve.timed(work)

    hello = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trainable": trainable,
        "frozen": frozen,
        "threads": torch.get_num_threads(),
    }
    serve.serve(hello, round_fn)


if __name__ == "__main__":
    main()
