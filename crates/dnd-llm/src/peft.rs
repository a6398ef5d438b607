//! Hugging Face PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (A `[r, in]`, B `[out, r]`).
//! Written atomically (temporary name, then rename) so a killed writer never leaves a half adapter.

use crate::config::{ModelConfig, Target};
use crate::error::{io_err, LlmError, Result};
use crate::lora::{Lora, LoraConfig};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT state-dict key of factor `which` ('A' or 'B') of `target` in `layer`, as saved adapters name it.
pub fn key(layer: usize, target: Target, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{which}.weight",
        target.path()
    )
}

/// Parse a saved key back into (layer, target, 'A' | 'B').
fn parse_key(k: &str) -> Option<(usize, Target, char)> {
    let rest = k.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let which = match rest {
        "lora_A.weight" | "lora_A.default.weight" => 'A',
        "lora_B.weight" | "lora_B.default.weight" => 'B',
        _ => return None,
    };
    let target = Target::from_module(module).filter(|t| t.path() == format!("{block}.{module}"))?;
    Some((layer.parse().ok()?, target, which))
}

/// Write `lora` as a PEFT adapter directory (created if needed), weights in f32. `base_model` is
/// recorded as `base_model_name_or_path`.
pub fn save(lora: &Lora, dir: &Path, base_model: &str) -> Result<()> {
    save_as(lora, dir, base_model, DType::F32)
}

/// [`save`] with the weights stored as `dtype` (f16 halves a checkpoint collection's disk; [`load`]
/// reads any float type back into the dtype it is asked for).
pub fn save_as(lora: &Lora, dir: &Path, base_model: &str, dtype: DType) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let c = lora.config();
    let alpha = if c.alpha.fract() == 0.0 {
        json!(c.alpha as i64)
    } else {
        json!(c.alpha)
    };
    let config = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": c.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": c.targets.iter().map(|t| t.module()).collect::<Vec<_>>(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": c.use_rslora,
    });
    let mut tensors = HashMap::new();
    for (layer, target, a, b) in lora.modules() {
        tensors.insert(key(layer, target, 'A'), a.to_dtype(dtype)?);
        tensors.insert(key(layer, target, 'B'), b.to_dtype(dtype)?);
    }
    dnd_io::write_atomic_with(&dir.join(WEIGHTS_FILE), |tmp| {
        candle_core::safetensors::save(&tensors, tmp).map_err(|e| LlmError::Safetensors {
            path: tmp.into(),
            reason: e.to_string(),
        })
    })?;
    dnd_io::write_json(&dir.join(CONFIG_FILE), &config)
}

/// Read the LoRA settings of an `adapter_config.json`, rejecting PEFT features dnd does not implement
/// ([`crate::adapter_config::parse`]).
pub fn read_config(path: &Path) -> Result<LoraConfig> {
    let v: Value = dnd_io::read_json::<_, LlmError>(path)?;
    crate::adapter_config::parse(&v, path)
}

/// Load a PEFT adapter directory for a base model of config `model`, checking every shape.
pub fn load(dir: &Path, model: &ModelConfig, dtype: DType) -> Result<Lora> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let weights = dir.join(WEIGHTS_FILE);
    if !weights.is_file() && dir.join("adapter_model.bin").is_file() {
        return Err(LlmError::Unsupported {
            path: dir.join("adapter_model.bin"),
            reason: "pickled adapters are not read; re-save with safe_serialization=True".into(),
        });
    }
    let tensors = crate::hf::read_safetensors(&weights, dtype)?;
    let mut halves: HashMap<(usize, Target), (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (name, t) in tensors {
        let (layer, target, which) = parse_key(&name).ok_or_else(|| LlmError::Tensor {
            path: weights.clone(),
            name: name.clone(),
            reason: "not a LoRA A/B weight of a decoder projection".into(),
        })?;
        let entry = halves.entry((layer, target)).or_default();
        if which == 'A' {
            entry.0 = Some(t);
        } else {
            entry.1 = Some(t);
        }
    }
    let mut parts = Vec::new();
    for ((layer, target), (a, b)) in halves {
        match (a, b) {
            (Some(a), Some(b)) => parts.push((layer, target, a, b)),
            _ => {
                return Err(LlmError::AdapterMismatch {
                    path: weights.clone(),
                    reason: format!(
                        "layer {layer} {} has only one of lora_A/lora_B",
                        target.module()
                    ),
                })
            }
        }
    }
    parts.sort_by_key(|p| (p.0, p.1));
    Lora::from_parts(config, model, parts, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for t in Target::ALL {
            let k = key(12, t, 'B');
            assert_eq!(parse_key(&k), Some((12, t, 'B')), "{k}");
        }
        assert_eq!(
            parse_key("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"),
            None,
            "q_proj lives under self_attn"
        );
        assert_eq!(parse_key("base_model.model.lm_head.weight"), None);
    }
}
