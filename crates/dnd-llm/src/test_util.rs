//! Helpers of the unit tests that check the fused kernels against candle's autograd.

use candle_core::{Device, Tensor};

/// Deterministic values in [-1, 1] of shape `dims` (f64): a sine of the index, varied by `seed`.
pub(crate) fn seeded(dims: &[usize], seed: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| ((i as f64 + 1.0) * (seed + 0.37) * 12.9898).sin())
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}
