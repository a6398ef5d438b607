//! Tiny models whose weights follow a closed formula, shared with `scripts/reference/tiny_fixture.py`,
//! so tests can compare against transformers/PEFT logits without shipping weights.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use dnd_llm::{hf, Lora, LoraConfig, ModelConfig, Target, Transformer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The fixture formula: `0.1 sin(0.7 i + 0.013 h + 0.5)` (+1 for norms), h = byte sum of the name mod 1000.
pub fn formula(name: &str, n: usize) -> Vec<f32> {
    let h = name.bytes().map(|b| b as u64).sum::<u64>() % 1000;
    let norm = name.contains("layernorm") || name.contains("norm.weight");
    (0..n)
        .map(|i| {
            let v = 0.1 * (0.7 * i as f64 + 0.013 * h as f64 + 0.5).sin();
            (if norm { 1.0 + v } else { v }) as f32
        })
        .collect()
}

pub fn formula_tensor(name: &str, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(formula(name, n), shape, &Device::Cpu).unwrap()
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every weight of the model under Hugging Face names, from the formula.
pub fn formula_weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize]| {
        let t = formula_tensor(&name, shape);
        w.insert(name, t);
    };
    let h = cfg.hidden_size;
    put("model.embed_tokens.weight".into(), &[cfg.vocab_size, h]);
    put("model.norm.weight".into(), &[h]);
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), &[cfg.vocab_size, h]);
    }
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[h]);
        put(format!("{p}.post_attention_layernorm.weight"), &[h]);
        for t in Target::ALL {
            let (i, o) = cfg.module_shape(t);
            put(format!("{p}.{}.weight", t.path()), &[o, i]);
            if cfg.qkv_bias && matches!(t, Target::Q | Target::K | Target::V) {
                put(format!("{p}.{}.bias", t.path()), &[o]);
            }
        }
    }
    w
}

/// Write a Hugging Face model directory (config.json + model.safetensors) for the formula model.
pub fn write_hf_dir(config_json: &serde_json::Value, dir: &Path) -> PathBuf {
    std::fs::write(dir.join("config.json"), config_json.to_string()).unwrap();
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    candle_core::safetensors::save(&formula_weights(&cfg), dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Load the formula model of a fixture (`tiny_llama.json` / `tiny_qwen2.json`) through the HF-dir path.
pub fn tiny_model(
    fixture_name: &str,
    dtype: DType,
) -> (Transformer, serde_json::Value, tempfile::TempDir) {
    let fx = fixture(fixture_name);
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(&fx["config"], dir.path());
    let cfg = ModelConfig::from_hf_file(&dir.path().join("config.json")).unwrap();
    let weights = hf::read_weights(dir.path(), dtype).unwrap();
    let model = Transformer::new(cfg, weights, dtype, dir.path()).unwrap();
    (model, fx, dir)
}

/// The fixture's LoRA: every A/B from the formula under its PEFT key.
pub fn formula_lora(cfg: &ModelConfig, config: LoraConfig, dtype: DType) -> Lora {
    formula_lora_times(cfg, config, dtype, 1.0)
}

/// [`formula_lora`] with every entry (of the f32 formula) multiplied by `scale`.
pub fn formula_lora_times(cfg: &ModelConfig, config: LoraConfig, dtype: DType, scale: f64) -> Lora {
    let mut parts = Vec::new();
    for l in 0..cfg.num_layers {
        for &t in &config.targets {
            let (i, o) = cfg.module_shape(t);
            let key = |w: char| {
                format!(
                    "base_model.model.model.layers.{l}.{}.lora_{w}.weight",
                    t.path()
                )
            };
            let entries = |w: char, shape: &[usize]| {
                (formula_tensor(&key(w), shape) * scale)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let (a, b) = (
                entries('A', &[config.rank, i]),
                entries('B', &[o, config.rank]),
            );
            parts.push((l, t, a, b));
        }
    }
    Lora::from_parts(config, cfg, parts, Path::new("<formula>")).unwrap()
}

pub fn ids(seq: &[u32]) -> Tensor {
    Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Largest absolute difference between a `[T, V]` tensor and nested JSON numbers.
pub fn max_diff(t: &Tensor, expected: &serde_json::Value) -> f64 {
    let got: Vec<Vec<f32>> = t.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    let mut m = 0f64;
    for (row, exp) in got.iter().zip(expected.as_array().unwrap()) {
        for (g, e) in row.iter().zip(exp.as_array().unwrap()) {
            m = m.max((*g as f64 - e.as_f64().unwrap()).abs());
        }
    }
    m
}

pub fn input_seqs(fx: &serde_json::Value) -> Vec<Vec<u32>> {
    fx["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// A cached model file (`$DND_CACHE/models/FILE`, default `~/.cache/dnd`), or `None` with a message when
/// absent. With `DND_REQUIRE_ASSETS=1` (CI, after `dnd fetch`) a missing asset fails the test instead.
pub fn asset(file: &str) -> Option<PathBuf> {
    let root = std::env::var_os("DND_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dnd")
        });
    let path = root.join("models").join(file);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("DND_REQUIRE_ASSETS").as_deref() != Ok("1"),
        "{} is required (DND_REQUIRE_ASSETS=1); run `dnd fetch --all`",
        path.display()
    );
    eprintln!("skipping: {} not cached", path.display());
    None
}
