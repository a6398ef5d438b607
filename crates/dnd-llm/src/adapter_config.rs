//! Strict reading of a PEFT `adapter_config.json`, from a file or an uploaded body: every field dnd uses
//! must have its type and a sane value, and every PEFT feature dnd does not apply must be off. An
//! adapter dnd would run differently from PEFT is refused, naming the field, instead of being scored as
//! something it is not.

use crate::config::Target;
use crate::error::{LlmError, Result};
use crate::lora::LoraConfig;
use serde_json::{Map, Value};
use std::path::Path;

/// Fields that describe the adapter or its training but do not change what it computes at inference,
/// accepted with any value. `qalora_group_size` and `megatron_core` have non-empty defaults and only act
/// with `use_qalora` / `megatron_config`, which are checked like every other feature.
const DESCRIPTIVE: [&str; 13] = [
    "base_model_name_or_path",
    "revision",
    "task_type",
    "peft_version",
    "auto_mapping",
    "inference_mode",
    "init_lora_weights",
    "layers_pattern",
    "megatron_core",
    "qalora_group_size",
    "eva_config",
    "corda_config",
    "runtime_config",
];

/// Largest rank accepted: far above any LoRA in use, low enough that a hostile config cannot make dnd
/// allocate without bound.
const MAX_RANK: u64 = 4096;

/// Parse a PEFT LoRA config; `source` names it in errors (a file, or a request).
pub fn parse(v: &Value, source: &Path) -> Result<LoraConfig> {
    let bad = |key: &str, reason: String| LlmError::Config {
        path: source.into(),
        key: key.into(),
        reason,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| bad("(top level)", format!("expected a JSON object, got {v}")))?;
    if obj.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        let got = obj
            .get("peft_type")
            .map_or("missing".into(), Value::to_string);
        return Err(bad(
            "peft_type",
            format!("{got}, only \"LORA\" is supported"),
        ));
    }
    let rank = match obj.get("r").and_then(Value::as_u64) {
        Some(r) if (1..=MAX_RANK).contains(&r) => r as usize,
        _ => {
            return Err(bad(
                "r",
                format!(
                    "{}: expected an integer from 1 to {MAX_RANK}",
                    shown(obj, "r")
                ),
            ))
        }
    };
    let alpha = match obj.get("lora_alpha").and_then(Value::as_f64) {
        Some(a) if a.is_finite() && a > 0.0 => a,
        _ => {
            return Err(bad(
                "lora_alpha",
                format!("{}: expected a positive number", shown(obj, "lora_alpha")),
            ))
        }
    };
    let mut config = LoraConfig::new(rank, alpha, &targets(obj, &bad)?);
    config.use_rslora = flag(obj, "use_rslora", &bad)?;
    for (k, what) in [
        ("use_dora", "DoRA adapters are not supported"),
        (
            "fan_in_fan_out",
            "transposed (Conv1D) layouts are not supported",
        ),
    ] {
        if flag(obj, k, &bad)? {
            return Err(bad(k, what.into()));
        }
    }
    match obj.get("lora_dropout") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_f64().is_some_and(|d| (0.0..1.0).contains(&d)) => {}
        Some(d) => {
            return Err(bad(
                "lora_dropout",
                format!("{d}: expected a number in [0, 1)"),
            ))
        }
    }
    match obj.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(b)) if b == "none" => {}
        Some(Value::String(b)) => {
            return Err(bad(
                "bias",
                format!("\"{b}\": trained biases are not supported"),
            ))
        }
        Some(b) => return Err(bad("bias", format!("{b}: expected a string"))),
    }
    const HANDLED: [&str; 9] = [
        "peft_type",
        "r",
        "lora_alpha",
        "target_modules",
        "use_rslora",
        "use_dora",
        "fan_in_fan_out",
        "lora_dropout",
        "bias",
    ];
    for (k, val) in obj {
        if !HANDLED.contains(&k.as_str()) && !DESCRIPTIVE.contains(&k.as_str()) && !is_off(val) {
            return Err(bad(
                k,
                format!("{val}: a PEFT feature dnd does not apply (it must be unset, null, false or empty)"),
            ));
        }
    }
    Ok(config)
}

/// `target_modules`: a list of the seven projection names (PEFT's regular-expression string form and
/// `all-linear` are refused: they can reach modules dnd does not adapt).
fn targets(
    obj: &Map<String, Value>,
    bad: &impl Fn(&str, String) -> LlmError,
) -> Result<Vec<Target>> {
    let Some(Value::Array(list)) = obj.get("target_modules") else {
        return Err(bad(
            "target_modules",
            format!(
                "{}: expected a list of module names",
                shown(obj, "target_modules")
            ),
        ));
    };
    if list.is_empty() {
        return Err(bad("target_modules", "the list is empty".into()));
    }
    list.iter()
        .map(|m| {
            m.as_str().and_then(Target::from_module).ok_or_else(|| {
                bad(
                    "target_modules",
                    format!("unsupported module {m} (supported: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)"),
                )
            })
        })
        .collect()
}

/// A boolean field: absent or null is false, anything but a boolean is an error.
fn flag(
    obj: &Map<String, Value>,
    key: &str,
    bad: &impl Fn(&str, String) -> LlmError,
) -> Result<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(key, format!("{v}: expected true or false"))),
    }
}

/// Whether a feature field is switched off: null, false, or an empty string, list or object.
fn is_off(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn shown(obj: &Map<String, Value>, key: &str) -> String {
    obj.get(key).map_or("missing".into(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
               "qalora_group_size": 16, "megatron_core": "megatron.core", "loftq_config": {},
               "modules_to_save": null, "use_qalora": false})
    }

    fn err(patch: Value) -> String {
        let mut v = base();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        parse(&v, Path::new("adapter_config.json"))
            .expect_err(&patch.to_string())
            .to_string()
    }

    #[test]
    fn a_plain_config_parses() {
        let c = parse(&base(), Path::new("x")).unwrap();
        assert_eq!((c.rank, c.alpha, c.targets.len()), (8, 16.0, 2));
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        for (patch, field) in [
            (json!({"lora_alpha": 0}), "lora_alpha"),
            (json!({"lora_alpha": -2.0}), "lora_alpha"),
            (json!({"lora_alpha": "16"}), "lora_alpha"),
            (json!({"r": 0}), "`r`"),
            (json!({"r": 8.5}), "`r`"),
            (json!({"r": 1_000_000}), "`r`"),
            (json!({"use_rslora": "x"}), "use_rslora"),
            (json!({"fan_in_fan_out": "x"}), "fan_in_fan_out"),
            (json!({"lora_dropout": []}), "lora_dropout"),
            (json!({"lora_dropout": 1.5}), "lora_dropout"),
            (json!({"bias": 3}), "bias"),
            (json!({"bias": "all"}), "bias"),
            (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
            (json!({"rank_pattern": {"q_proj": 4}}), "rank_pattern"),
            (
                json!({"layers_to_transform": [0, 1]}),
                "layers_to_transform",
            ),
            (json!({"use_dora": true}), "use_dora"),
            (json!({"target_modules": "all-linear"}), "target_modules"),
            (json!({"target_modules": []}), "target_modules"),
            (json!({"target_modules": ["lm_head"]}), "target_modules"),
            (json!({"peft_type": "IA3"}), "peft_type"),
            (
                json!({"some_future_feature": {"on": true}}),
                "some_future_feature",
            ),
        ] {
            let e = err(patch.clone());
            assert!(
                e.contains(field) && e.contains("adapter_config.json"),
                "{patch}: {e}"
            );
        }
        let e = parse(&json!([1]), Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
    }
}
