//! Helpers shared by the export tests.

use candle_core::{Device, Tensor};
use dnd_llm::{Lora, LoraConfig, ModelConfig, Target};
use std::path::Path;

/// A rank-`r` adapter on all seven projections with non-zero, distinct A and B of amplitude `amp` (a
/// sinusoid of the index, so that a wrong permutation or transpose changes the result).
pub fn adapter(cfg: &ModelConfig, r: usize, alpha: f64, rslora: bool, amp: f64) -> Lora {
    let wave = |n: usize, (rows, cols): (usize, usize), freq: f64| {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (amp * ((i + n) as f64 * freq).sin()) as f32)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    };
    let mut parts = Vec::new();
    for layer in 0..cfg.num_layers {
        for t in Target::ALL {
            let (i, o) = cfg.module_shape(t);
            let n = layer * 7 + t.index();
            parts.push((layer, t, wave(n, (r, i), 0.71), wave(n, (o, r), 1.37)));
        }
    }
    let mut config = LoraConfig::new(r, alpha, &Target::ALL);
    config.use_rslora = rslora;
    Lora::from_parts(config, cfg, parts, Path::new("test")).unwrap()
}
