//! Baselines built from the collection itself: the uniform average of checkpoints in weight space, and
//! the task whose prompts are nearest in embedding space.

use crate::{ExperimentError, Result};
use candle_core::{DType, Tensor};
use dnd_llm::{Lora, ModelConfig};
use std::path::{Path, PathBuf};

/// The element-wise mean of the A and of the B factors of `checkpoints` (not the mean of the B·A
/// products: the same recipe as averaging the weights the generator is trained to emit).
pub fn uniform_average(checkpoints: &[PathBuf], model: &ModelConfig) -> Result<Lora> {
    let first = checkpoints
        .first()
        .ok_or_else(|| ExperimentError::Config("no checkpoints to average".into()))?;
    let mut config = None;
    let mut sums: Vec<(usize, dnd_llm::Target, Tensor, Tensor)> = Vec::new();
    for dir in checkpoints {
        let lora = dnd_llm::peft::load(dir, model, DType::F32)?;
        if sums.is_empty() {
            sums = lora
                .modules()
                .map(|(l, t, a, b)| (l, t, a.clone(), b.clone()))
                .collect();
            config = Some(lora.config().clone());
            continue;
        }
        if Some(lora.config()) != config.as_ref() {
            return Err(ExperimentError::Config(format!(
                "{} has another LoRA config than {}",
                dir.display(),
                first.display()
            )));
        }
        for (sum, (_, _, a, b)) in sums.iter_mut().zip(lora.modules()) {
            sum.2 = (&sum.2 + a)?;
            sum.3 = (&sum.3 + b)?;
        }
    }
    let k = checkpoints.len() as f64;
    let parts = sums
        .into_iter()
        .map(|(l, t, a, b)| Ok((l, t, (a / k)?, (b / k)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Lora::from_parts(
        config.expect("at least one checkpoint"),
        model,
        parts,
        Path::new("uniform average"),
    )?)
}

/// The mean over prompts of each prompt's mean token state: one vector per task.
pub fn mean_pooled(states: &[Tensor]) -> Result<Vec<f32>> {
    if states.is_empty() {
        return Err(ExperimentError::Config("no prompt states to pool".into()));
    }
    let pooled = states
        .iter()
        .map(|s| s.mean(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&pooled, 0)?
        .mean(0)?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
