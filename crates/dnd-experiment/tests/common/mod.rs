//! What the experiment's tests share: a synthetic prompt encoder.

use candle_core::{Device, Tensor};
use dnd_encode::PromptEncoder;

/// States that depend only on the prompt's bytes: `[min(words, max_len), 16]`.
pub struct Synthetic;

impl PromptEncoder for Synthetic {
    fn encode(&self, prompts: &[&str]) -> dnd_encode::Result<Vec<Tensor>> {
        Ok(prompts
            .iter()
            .map(|p| {
                let len = p.split_whitespace().count().clamp(1, 8);
                let v: Vec<f32> = (0..len * 16)
                    .map(|i| {
                        let b = p.as_bytes()[i % p.len()] as f32;
                        ((b * 0.37 + i as f32 * 0.11).sin()) * 0.5
                    })
                    .collect();
                Tensor::from_vec(v, (len, 16), &Device::Cpu).unwrap()
            })
            .collect())
    }
    fn hidden_size(&self) -> usize {
        16
    }
    fn model_hash(&self) -> String {
        "synthetic".into()
    }
    fn max_len(&self) -> usize {
        8
    }
}
