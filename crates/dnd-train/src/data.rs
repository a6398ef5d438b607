//! Training material: per task, its checkpoints as LoRA tokens and its pool of encoded prompts; and the
//! per-token loss weights docs/method.md step 6 derives from how much each token moves within a task.

use crate::{Result, TrainError};
use candle_core::{DType, Tensor, D};
use dnd_tokenize::LoraTokenizer;
use std::path::Path;

/// One training task: checkpoints (`[N_w, r+2, cw+2]` each, in step order) and prompt states
/// (`[len, C]` each) to draw conditions from.
pub struct TrainingTask {
    pub name: String,
    /// Held in f16 where that keeps every value exactly (a collection saved in f16): half the memory
    /// of f32, for a collection of hundreds of tasks several gigabytes; [`Self::checkpoint`] gives f32.
    pub(crate) checkpoints: Vec<Tensor>,
    pub prompts: Vec<Tensor>,
}

impl TrainingTask {
    /// The task from its checkpoints (f32 tokens) and prompt states; each checkpoint is kept in f16
    /// when converting it back gives the same values, bit for bit.
    pub fn new(name: String, checkpoints: Vec<Tensor>, prompts: Vec<Tensor>) -> Result<Self> {
        let checkpoints = checkpoints
            .into_iter()
            .map(compact)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name,
            checkpoints,
            prompts,
        })
    }

    /// Checkpoint `i` in f32.
    pub fn checkpoint(&self, i: usize) -> Result<Tensor> {
        Ok(self.checkpoints[i].to_dtype(DType::F32)?)
    }

    /// How many checkpoints the task has.
    pub fn num_checkpoints(&self) -> usize {
        self.checkpoints.len()
    }

    /// Every checkpoint in f32, stacked: `[k, N_w, r+2, cw+2]`.
    pub fn stacked(&self) -> Result<Tensor> {
        let all = (0..self.num_checkpoints())
            .map(|i| self.checkpoint(i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&all, 0)?)
    }
}

/// `t` in f16 if that round-trips exactly (every value is an f16 already), otherwise as it is.
fn compact(t: Tensor) -> Result<Tensor> {
    let half = t.to_dtype(DType::F16)?;
    let exact = half
        .to_dtype(t.dtype())?
        .eq(&t)?
        .min_all()?
        .to_scalar::<u8>()?
        == 1;
    Ok(if exact { half } else { t })
}

/// Tokenize every checkpoint of `task` in a finished collection.
pub fn load_checkpoints(
    collection: &Path,
    task: &str,
    tokenizer: &LoraTokenizer,
) -> Result<Vec<Tensor>> {
    let dirs = dnd_collect::task_checkpoints(collection, task)?;
    if dirs.is_empty() {
        return Err(TrainError::Data(format!("task {task} has no checkpoints")));
    }
    dirs.iter()
        .map(|d| {
            let lora = dnd_llm::peft::load(d, tokenizer.model_config(), DType::F32)?;
            Ok(tokenizer.encode(&lora)?.0)
        })
        .collect()
}

/// Per-token loss weights `[N_w]`: per task, the element-wise std (over real cells, population) across
/// its checkpoints, averaged per token and normalised to mean 1; then averaged over the tasks with at
/// least two checkpoints. Uniform when no task has a spread. Weights below `floor` are raised to it
/// and the result renormalised to mean 1: a token that (nearly) never moves within a task, like the A
/// factors of a short run, must still be learned, or generated adapters get arbitrary A matrices.
pub fn token_weights(tasks: &[TrainingTask], mask: &Tensor, floor: f64) -> Result<Tensor> {
    let n_w = mask.dim(0)?;
    let cells = mask.sum((1, 2))?;
    let mut per_task = Vec::new();
    for t in tasks.iter().filter(|t| t.num_checkpoints() >= 2) {
        let x = t.stacked()?.to_dtype(DType::F64)?;
        let mean = x.mean_keepdim(0)?;
        let std = x.broadcast_sub(&mean)?.sqr()?.mean(0)?.sqrt()?;
        let m = mask.to_dtype(DType::F64)?;
        let tok = (std * &m)?.sum((1, 2))?.div(&cells.to_dtype(DType::F64)?)?;
        let avg = tok.mean_all()?.to_scalar::<f64>()?;
        if avg > 0.0 {
            per_task.push((tok / avg)?);
        }
    }
    if per_task.is_empty() {
        return Ok(Tensor::ones(n_w, DType::F32, mask.device())?);
    }
    let k = per_task.len() as f64;
    let w = (Tensor::stack(&per_task, 0)?.sum(0)? / k)?.maximum(floor)?;
    let mean = w.mean_all()?.to_scalar::<f64>()?;
    Ok((w / mean)?.to_dtype(DType::F32)?)
}

/// `Σ w·mask·(pred − target)²` over a batch `[B, N_w, H, W]`, divided by B times the real cells per
/// sample: with mean-1 weights, comparable to a plain MSE. `wmask` is `weights ⊗ mask` `[N_w, H, W]`.
pub fn weighted_mse(pred: &Tensor, target: &Tensor, wmask: &Tensor, cells: f64) -> Result<Tensor> {
    let b = pred.dim(0)? as f64;
    let se = (pred - target)?.sqr()?.broadcast_mul(wmask)?;
    Ok((se.sum_all()? / (b * cells))?)
}

/// The weighted mask `[N_w, H, W]` and its number of real cells.
pub fn weighted_mask(weights: &Tensor, mask: &Tensor) -> Result<(Tensor, f64)> {
    let w = weights.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?;
    let cells = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((mask.broadcast_mul(&w)?, cells))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn checkpoints_are_held_in_f16_only_when_that_is_exact() {
        let exact = Tensor::new(&[[[0.5f32, -1.25, 3.0]]], &Device::Cpu).unwrap();
        let inexact = Tensor::new(&[[[0.5f32, 0.1, 3.0]]], &Device::Cpu).unwrap();
        let t = TrainingTask::new("t".into(), vec![exact.clone(), inexact.clone()], Vec::new())
            .unwrap();
        assert_eq!(t.checkpoints[0].dtype(), DType::F16);
        assert_eq!(t.checkpoints[1].dtype(), DType::F32);
        for (i, want) in [exact, inexact].iter().enumerate() {
            let got = t.checkpoint(i).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let bits = |x: &Tensor| -> Vec<u32> {
                let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|f| f.to_bits()).collect()
            };
            assert_eq!(bits(&got), bits(want), "checkpoint {i}");
        }
        assert_eq!(t.stacked().unwrap().dims(), [2, 1, 1, 3]);
    }
}
