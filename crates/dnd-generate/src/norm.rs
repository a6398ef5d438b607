//! Per-channel standardisation of the prompt encoder's states, fitted on a generator's training prompts
//! and stored with it (`condition_norm.safetensors`).
//!
//! MiniLM's token states share a large common component and a few channels of outsized scale, so
//! prompts of different tasks differ by a small part of each state's norm (the train manifest's
//! `condition_probe.separation`). The decoder's LayerNorm works per prompt map and removes neither.
//! Subtracting each channel's mean over the training prompts' word pieces and dividing by its std
//! makes task differences the bulk of what the decoder reads.

use crate::{GenerateError, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

pub const NORM_FILE: &str = "condition_norm.safetensors";
/// Floor on a channel's std, so a constant channel maps to 0 rather than dividing by 0.
const MIN_STD: f64 = 1e-6;

/// Channel means and stds `[C]`.
#[derive(Debug, Clone)]
pub struct ConditionNorm {
    mean: Tensor,
    std: Tensor,
}

impl ConditionNorm {
    /// Fit on every word piece of `prompts` (each `[len, C]`).
    pub fn fit<'a>(prompts: impl IntoIterator<Item = &'a Tensor>) -> Result<Self> {
        let mut sum: Option<(Tensor, Tensor)> = None;
        let mut rows = 0usize;
        for p in prompts {
            let p = p.to_dtype(DType::F64)?;
            rows += p.dim(0)?;
            let (s, q) = (p.sum(0)?, p.sqr()?.sum(0)?);
            sum = Some(match sum {
                Some((a, b)) => ((a + s)?, (b + q)?),
                None => (s, q),
            });
        }
        let Some((s, q)) = sum.filter(|_| rows > 0) else {
            return Err(GenerateError::NoPrompts(
                "no word pieces to fit the condition's standardisation on".into(),
            ));
        };
        let mean = (s / rows as f64)?;
        let var = ((q / rows as f64)? - mean.sqr()?)?.relu()?;
        let std = var.sqrt()?.clamp(MIN_STD, f64::INFINITY)?;
        Ok(Self {
            mean: mean.to_dtype(DType::F32)?,
            std: std.to_dtype(DType::F32)?,
        })
    }

    /// One prompt's states `[len, C]`, standardised channel by channel.
    pub fn apply(&self, states: &Tensor) -> Result<Tensor> {
        let c = self.mean.dim(0)?;
        if states.rank() != 2 || states.dim(1)? != c {
            return Err(GenerateError::Encoder(format!(
                "prompt states {:?}, the generator's standardisation has {c} channels",
                states.dims()
            )));
        }
        let x = states.to_dtype(DType::F32)?;
        Ok(x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }

    /// Write `dir/condition_norm.safetensors` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let map = [
            ("mean".to_string(), self.mean.clone()),
            ("std".to_string(), self.std.clone()),
        ]
        .into();
        dnd_io::write_atomic_with(&dir.join(NORM_FILE), |tmp| {
            Ok::<_, GenerateError>(candle_core::safetensors::save(&map, tmp)?)
        })
    }

    /// The standardisation stored in `dir`, if the generator has one, checked against `channels`.
    pub fn load(dir: &Path, channels: usize) -> Result<Option<Self>> {
        let path = dir.join(NORM_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bad = |reason: String| GenerateError::File {
            path: path.clone(),
            reason,
        };
        let mut map =
            candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let mut take = |key: &str| -> Result<Tensor> {
            let t = map
                .remove(key)
                .ok_or_else(|| bad(format!("no `{key}` tensor")))?;
            if t.dims() != [channels] {
                return Err(bad(format!(
                    "`{key}` of shape {:?}, the condition has {channels} channels",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        Ok(Some(Self {
            mean: take("mean")?,
            std: take("std")?,
        }))
    }
}
