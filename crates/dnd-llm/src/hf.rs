//! Hugging Face model directories: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Any float dtype is converted to the requested one.

use crate::error::{io_err, LlmError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The safetensors files of a model directory.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(LlmError::Unsupported {
            path: dir.into(),
            reason: "no model.safetensors or model.safetensors.index.json".into(),
        });
    }
    let v: serde_json::Value = dnd_io::read_json::<_, LlmError>(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LlmError::Config {
            path: index.clone(),
            key: "weight_map".into(),
            reason: "missing or not an object".into(),
        })?;
    let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Read a safetensors file into tensors of `dtype`, with errors naming the file.
///
/// The file is memory-mapped rather than read: each tensor is then copied once (page cache -> tensor)
/// instead of twice (-> buffer -> tensor), which halves the memory a load touches (the encoder's 90 MB
/// were a large part of `dnd generate`'s start-up).
pub fn read_safetensors(path: &Path, dtype: DType) -> Result<HashMap<String, Tensor>> {
    use candle_core::safetensors::Load;
    let bad = |reason: String| LlmError::Safetensors {
        path: path.into(),
        reason,
    };
    std::fs::metadata(path).map_err(io_err(path))?;
    // SAFETY: the mapping lives only for this call and every tensor is copied out of it; the files
    // read here (model weights, adapters, generator checkpoints) are written by rename, never in place.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
        .map_err(|e| bad(e.to_string()))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = view
                .load(&Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            Ok((name, t))
        })
        .collect()
}

/// All weights of a model directory.
pub fn read_weights(dir: &Path, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for file in shard_files(dir)? {
        out.extend(read_safetensors(&file, dtype)?);
    }
    Ok(out)
}
