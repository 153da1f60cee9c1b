//! Scratch diagnostic (not committed): does Beat learn to reconstruct simulated ECG windows?
use beatlab::spec::{self, Overrides};
use beatlab_nn::ParamStore;
use beatlab_nn::beat::{Beat, Mode};
use beatlab_nn::optim::{AdamW, AdamWConfig, clip_grad_norm};
use candle_core::{DType, Device, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lr: f64 = args.first().map_or(1e-3, |s| s.parse().unwrap());
    let restart: f64 = args.get(1).map_or(0.1, |s| s.parse().unwrap());
    let levels: usize = args.get(2).map_or(2, |s| s.parse().unwrap());
    let width: u32 = args.get(3).map_or(64, |s| s.parse().unwrap());
    let loaded = spec::load(
        std::path::Path::new("experiments/quickstart.toml"),
        &Overrides::default(),
    )
    .unwrap();
    let mut s = loaded.spec.clone();
    s.data.synthetic_records = 400;
    s.beat.width = width;
    let data = beatlab::data::windows(&s, std::path::Path::new("/tmp/diagcache")).unwrap();
    let mut cfg = beatlab::stages::beat::beat_config(&s);
    cfg.dvq_levels = levels;
    cfg.dead_code_threshold = (restart > 0.0).then_some(restart);
    let store = ParamStore::new(0);
    let beat = Beat::new(cfg.clone(), &store, DType::F32, &Device::Cpu).unwrap();
    let vars = store.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let wl = data.window_len();
    let n = data.train.len();
    let b = 16;
    for step in 0..1200u64 {
        let idx: Vec<usize> = (0..b)
            .map(|i| ((step as usize * b + i) * 7919) % n)
            .collect();
        let mut v = Vec::new();
        for &i in &idx {
            v.extend_from_slice(data.train.window(i, wl));
        }
        let x = Tensor::from_vec(v, (b, 12, wl), &Device::Cpu).unwrap();
        let out = beat.forward(&x, Mode::Train { step }).unwrap();
        let mut g = out.loss.backward().unwrap();
        clip_grad_norm(&mut g, &vars, 1.0).unwrap();
        opt.step(&g).unwrap();
        beat.update_codebooks(&out).unwrap();
        if step % 100 == 0 {
            let xv = {
                let mut v = Vec::new();
                for i in 0..data.val.len().min(32) {
                    v.extend_from_slice(data.val.window(i, wl));
                }
                Tensor::from_vec(v, (data.val.len().min(32), 12, wl), &Device::Cpu).unwrap()
            };
            let o = beat.forward(&xv, Mode::Eval).unwrap();
            // decoder with zeroed latents: does it use them?
            let z = beat.decode(&o.latents.zeros_like().unwrap()).unwrap();
            let mse0 = z
                .sub(&xv.narrow(2, 0, cfg.input_len).unwrap())
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            println!(
                "step {step} train {:.4} val recon {:.4} pred {:.4} vq {:.5} | recon with zero latents {:.4}",
                out.loss.to_scalar::<f32>().unwrap(),
                o.recon_loss.to_scalar::<f32>().unwrap(),
                o.pred_loss.to_scalar::<f32>().unwrap(),
                o.vq_loss.to_scalar::<f32>().unwrap(),
                mse0
            );
        }
    }
}
