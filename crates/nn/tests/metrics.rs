//! Code usage and per-lead error accumulators against hand-computed values.

use beatlab_nn::metrics::{CodeUsage, LeadErrors};
use candle_core::{Device, Tensor};

fn codes(values: &[u32]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap()
}

#[test]
fn code_percent_and_perplexity() {
    // check(codes of one level added in two batches, codebook size, used, Code%, perplexity)
    fn check(batches: &[&[u32]], size: usize, used: usize, percent: f64, perplexity: f64) {
        let mut usage = CodeUsage::new(1, size);
        for b in batches {
            usage.add(&[codes(b)]).unwrap();
        }
        assert_eq!(usage.used(0), used, "{batches:?}");
        assert!(
            (usage.code_percent(0) - percent).abs() < 1e-9,
            "{batches:?}"
        );
        assert!(
            (usage.perplexity(0) - perplexity).abs() < 1e-9,
            "{batches:?}: {}",
            usage.perplexity(0)
        );
    }
    // Usage 1/2, 1/4, 1/4: entropy 1.5 ln 2, perplexity 2^1.5.
    check(&[&[0, 0], &[1, 2]], 4, 3, 75.0, 2f64.powf(1.5));
    // Uniform over the whole codebook: perplexity = size.
    check(&[&[0, 1, 2], &[3, 4, 5, 6, 7]], 8, 8, 100.0, 8.0);
    // One code only.
    check(&[&[5, 5, 5]], 512, 1, 100.0 / 512.0, 1.0);
    // Accumulated over batches: the second batch's codes count, not only the last batch.
    check(&[&[0], &[1], &[2], &[3]], 8, 4, 50.0, 4.0);
}

#[test]
fn levels_are_counted_separately_and_out_of_range_codes_are_errors() {
    let mut usage = CodeUsage::new(2, 4);
    usage
        .add(&[
            Tensor::new(&[[0u32, 1], [0, 1]], &Device::Cpu).unwrap(),
            Tensor::new(&[[3u32, 3], [3, 3]], &Device::Cpu).unwrap(),
        ])
        .unwrap();
    assert_eq!(usage.counts(0), [2, 2, 0, 0]);
    assert_eq!(usage.counts(1), [0, 0, 0, 4]);
    assert!(usage.add(&[codes(&[4]), codes(&[0])]).is_err());
    assert!(usage.add(&[codes(&[0])]).is_err(), "one level missing");
    assert_eq!(CodeUsage::new(1, 4).perplexity(0), 0.0);
}

#[test]
fn per_lead_errors() {
    let mut errors = LeadErrors::new(2);
    // Batch of 1, 2 leads, 2 samples: lead 0 errors (1, 1), lead 1 errors (0, 2).
    let est = Tensor::new(&[[[1f32, 1.0], [0.0, 2.0]]], &Device::Cpu).unwrap();
    let target = Tensor::zeros((1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    errors.add(&est, &target).unwrap();
    assert_eq!(errors.mse_per_lead(), [1.0, 2.0]);
    // A second batch with zero error halves both.
    errors.add(&target, &target).unwrap();
    assert_eq!(errors.mse_per_lead(), [0.5, 1.0]);
    assert_eq!(errors.mse(), 0.75);
    let three_leads = Tensor::zeros((1, 3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(errors.add(&three_leads, &three_leads).is_err());
    assert!(errors.add(&est, &three_leads).is_err());
    assert!(LeadErrors::new(2).mse().is_nan());
}
