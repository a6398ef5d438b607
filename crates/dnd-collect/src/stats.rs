//! How much each LoRA weight moves within a task's checkpoints: the element-wise standard deviation
//! across them. docs/method.md step 6 weights the generator's loss by this spread, averaged per LoRA token;
//! the token layout belongs to the LoRA tokenizer, so this stores the raw element-wise spread, keyed
//! like the checkpoints, for the tokenizer to average per chunk.

use crate::error::{CollectError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Population standard deviation (divisor K) of every tensor across K >= 2 PEFT checkpoints, f32,
/// under the checkpoints' own keys. Computed in f64 with two passes (mean, then squared deviations):
/// A matrices move by ~1e-5 of their size, which one-pass formulas would lose to cancellation.
pub fn checkpoint_std(dirs: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    if dirs.len() < 2 {
        return Err(CollectError::Config(format!(
            "a spread needs at least 2 checkpoints, got {}",
            dirs.len()
        )));
    }
    let load = |d: &PathBuf| -> Result<HashMap<String, Tensor>> {
        let p = d.join(dnd_llm::peft::WEIGHTS_FILE);
        candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| CollectError::State {
            path: p,
            reason: e.to_string(),
        })
    };
    let all = dirs.iter().map(load).collect::<Result<Vec<_>>>()?;
    let k = all.len() as f64;
    let mut out = HashMap::new();
    for name in all[0].keys() {
        let mut xs = Vec::with_capacity(all.len());
        for (d, ck) in dirs.iter().zip(&all) {
            let t = ck.get(name).ok_or_else(|| CollectError::State {
                path: d.clone(),
                reason: format!("`{name}` missing"),
            })?;
            xs.push(t.to_dtype(DType::F64)?);
        }
        let mut sum = xs[0].clone();
        for x in &xs[1..] {
            sum = (sum + x)?;
        }
        let mean = (sum / k)?;
        let mut sq = xs[0].broadcast_sub(&mean)?.sqr()?;
        for x in &xs[1..] {
            sq = (sq + x.broadcast_sub(&mean)?.sqr()?)?;
        }
        out.insert(name.clone(), (sq / k)?.sqrt()?.to_dtype(DType::F32)?);
    }
    Ok(out)
}

/// Mean element-wise spread of all `lora_A` and of all `lora_B` tensors.
pub fn mean_spread(std: &HashMap<String, Tensor>) -> Result<(f64, f64)> {
    let mean_of = |which: &str| -> Result<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        // In key order: a HashMap's order changes from process to process, and so would the sum's
        // last bits (and collection.json's bytes).
        let mut keys: Vec<&String> = std.keys().collect();
        keys.sort();
        for (k, t) in keys.into_iter().map(|k| (k, &std[k])) {
            if k.contains(which) {
                sum += t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
                n += t.elem_count();
            }
        }
        Ok(if n == 0 { 0.0 } else { sum / n as f64 })
    };
    Ok((mean_of(".lora_A.")?, mean_of(".lora_B.")?))
}

/// An older collection's element-wise spread (f32, or the checkpoints' storage type), still read
/// where it exists. Nothing reads its elements (training derives its loss weights from the
/// checkpoints themselves), so new collections keep only its two means, in [`SPREAD_FILE`]: it was
/// as large as a task's two f16 checkpoints, half of a 291-task collection's disk.
pub const STD_FILE: &str = "checkpoint_std.safetensors";

/// A task's mean checkpoint spreads, cached so an index rebuild does not reread every checkpoint.
pub const SPREAD_FILE: &str = "spread.json";

/// The contents of [`SPREAD_FILE`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub mean_std_lora_a: f64,
    pub mean_std_lora_b: f64,
}

/// The mean spreads of the task in `dir` over its checkpoints `ckpts`: from [`SPREAD_FILE`], else from
/// an older collection's [`STD_FILE`], else computed (the element-wise spread rounded to `dtype`, the
/// checkpoints' storage type, as the old file stored it, then averaged) and cached in [`SPREAD_FILE`].
pub fn task_spread(dir: &Path, ckpts: &[PathBuf], dtype: DType) -> Result<Spread> {
    let path = dir.join(SPREAD_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text).map_err(|e| CollectError::State {
            path,
            reason: e.to_string(),
        });
    }
    let old = dir.join(STD_FILE);
    let std = if old.is_file() {
        candle_core::safetensors::load(&old, &Device::Cpu)?
    } else {
        checkpoint_std(ckpts)?
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
            .collect::<Result<HashMap<_, _>>>()?
    };
    let (a, b) = mean_spread(&std)?;
    let spread = Spread {
        mean_std_lora_a: a,
        mean_std_lora_b: b,
    };
    dnd_io::write_json::<_, CollectError>(&path, &spread)?;
    Ok(spread)
}
