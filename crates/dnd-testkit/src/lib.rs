//! Test fixtures shared by the workspace's tests, so that no test file carries its own copy: a tiny
//! base-model config, a tiny Llama with pseudo-random weights and a byte-level tokenizer written as a
//! Hugging Face directory (tests train real LoRA adapters in well under a second per step without any
//! downloaded model), synthetic benchmark data and the settings of a tiny checkpoint collection.
//!
//! A dev-dependency only (`publish = false`); helpers panic on failure, as tests want.

use candle_core::{DType, Device, Tensor};
use dnd_collect::{BaseModel, CollectPlan, LoraTrainConfig};
use dnd_llm::{Arch, Llm, ModelConfig, Target};
use dnd_tasks::SplitConfig;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A 2-layer Llama config (hidden 32, 4 heads, 2 KV heads, vocabulary 100), for tests that need only
/// the shapes of a base model.
pub fn tiny_model_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 100,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        qkv_bias: false,
        max_position_embeddings: 128,
    }
}

/// SmolLM2-135M's config (what its GGUF declares), for tests and benchmarks that need the real shapes
/// without loading the model.
pub fn smollm2_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        qkv_bias: false,
        max_position_embeddings: 8192,
    }
}

/// GPT-2's byte alphabet in byte order (its byte-to-character map), so that every byte has a token:
/// in the tiny tokenizer, byte b is token b.
pub fn byte_chars() -> Vec<String> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b).to_string()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap().to_string()
            }
        })
        .collect()
}

fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, json!(i)))
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                            "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    })
}

/// Pseudo-random weights in [-scale, scale) (+1 for norms) from a splitmix64 stream seeded by the
/// name: full rank, unlike a smooth formula, so that LoRA can actually learn on this model.
fn weights(name: &str, shape: &[usize], scale: f64) -> Tensor {
    let mut state = name.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    let norm = name.contains("norm");
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let x = scale * (2.0 * next() - 1.0);
            (if norm { 1.0 + x } else { x }) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Write the tiny model (config.json, model.safetensors, tokenizer.json) into `dir` and load it.
pub fn tiny_llm(dir: &Path) -> Llm {
    let config = json!({
        "model_type": "llama", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let mut w = HashMap::new();
    let h = cfg.hidden_size;
    w.insert(
        "model.embed_tokens.weight".to_string(),
        // Large enough that the tied output layer can make one token likely.
        weights("embed", &[cfg.vocab_size, h], 1.0),
    );
    w.insert("model.norm.weight".into(), weights("norm", &[h], 0.1));
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            let name = format!("{p}.{n}.weight");
            w.insert(name.clone(), weights(&name, &[h], 0.1));
        }
        for t in Target::ALL {
            let (i, o) = cfg.module_shape(t);
            let name = format!("{p}.{}.weight", t.path());
            w.insert(name.clone(), weights(&name, &[o, i], 0.1));
        }
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    Llm::load(dir, DType::F32).unwrap()
}

/// A data root with a synthetic BoolQ (`boolq/val.jsonl`, `n` items) whose answer follows the passage.
pub fn boolq_root(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("boolq")).unwrap();
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let yes = i % 3 != 0;
            json!({
                "question": format!("is item {i} red"),
                "passage": format!("Item {i} is {}.", if yes { "red" } else { "blue" }),
                "label": yes,
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("boolq/val.jsonl"), lines.join("\n")).unwrap();
}

/// A user's multiple-choice task of `n` items `{query, choices, gold}` written to `path`, split as a pool.
pub fn mc_task(name: &str, path: &Path, n: usize) -> dnd_tasks::Task {
    let rows: Vec<String> = (0..n)
        .map(|i| {
            json!({"query": format!("q{i}"), "choices": ["a", "b"], "gold": i % 2}).to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n")).unwrap();
    dnd_tasks::Task::custom(
        name,
        dnd_tasks::Template::Gauntlet,
        dnd_tasks::Layout::GauntletMc,
        path,
    )
}

/// The tiny model (`dir/model`) and a task file (`dir/tasks.toml`) of four user multiple-choice tasks
/// of 60 items each (`alpha`, `beta`, `gamma`, `delta`), for the CLI's tests.
pub fn tiny_cli_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    tiny_llm(&model);
    let mut toml = String::new();
    for t in ["alpha", "beta", "gamma", "delta"] {
        mc_task(t, &dir.join(format!("{t}.jsonl")), 60);
        toml += &format!(
            "[[task]]\nname = \"{t}\"\nfile = \"{t}.jsonl\"\nlayout = \"multiple-choice\"\n\n"
        );
    }
    let tasks = dir.join("tasks.toml");
    std::fs::write(&tasks, toml).unwrap();
    (model, tasks)
}

/// Every file under `dir` (relative path -> bytes), for byte-for-byte comparisons.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// JSON fields of a collection that measure the machine (time, memory, speed), not the collection.
pub const MACHINE_FIELDS: [&str; 5] = [
    "wall_time_s",
    "seconds",
    "sessions",
    "peak_rss_mb",
    "train_tokens_per_s",
];

/// A collection directory for comparing two ways of making it: every file byte for byte, the JSON
/// files without their [`MACHINE_FIELDS`], the unit markers (`units/`) left out.
pub fn collection_contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| !MACHINE_FIELDS.contains(&k.as_str()));
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    files(dir)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("units/"))
        .map(|(k, v)| {
            if !k.ends_with(".json") {
                return (k, v);
            }
            let mut j: serde_json::Value = serde_json::from_slice(&v)
                .unwrap_or_else(|e| panic!("{k} in {} is not JSON: {e}", dir.display()));
            strip(&mut j);
            (k, j.to_string().into_bytes())
        })
        .collect()
}

/// LoRA fine-tuning settings small enough for the tiny model: rank 2 on q/v/down, batches of 4, `steps`
/// updates.
pub fn tiny_collect_config(steps: usize) -> LoraTrainConfig {
    LoraTrainConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        seed: 5,
        lr: 1e-2,
        warmup_steps: 1,
        min_lr_ratio: 0.1,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        batch: 4,
        micro_batch_tokens: 128,
        max_len: 64,
        steps,
    }
}

/// A collection of `tasks` into `dir` from the data under `root`: 6 steps of [`tiny_collect_config`],
/// the first 3 a first phase, run state every 2 steps.
pub fn tiny_collect_plan(dir: &Path, root: &Path, tasks: &[&str]) -> CollectPlan {
    CollectPlan {
        dir: dir.into(),
        tasks: tasks
            .iter()
            .map(|t| dnd_tasks::find_task(t).expect("a built-in task"))
            .collect(),
        train: tiny_collect_config(6),
        first_phase: 3,
        data_root: root.into(),
        split: SplitConfig::default(),
        state_every: 2,
        storage: Default::default(),
    }
}

/// The base model of a test collection: `path` with a made-up sha256.
pub fn test_base_model(path: &str) -> BaseModel {
    BaseModel {
        path: path.into(),
        sha256: "ab".repeat(32),
    }
}

/// The largest absolute element-wise difference of two tensors of one shape, in f64 (so f32 and f64
/// comparisons read the same).
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let f = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    (f(a) - f(b))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Write a Llama's Hugging Face `weights` as llama.cpp lays them out in a GGUF at `path`: llama.cpp
/// tensor names, Q/K rows permuted, the hyper-parameter keys of `cfg`, no tokenizer. With `quantize`,
/// matrices whose rows are whole Q8_0 blocks are stored as Q8_0 (the rest F32), as real GGUFs mix types.
pub fn write_llama_gguf(
    cfg: &ModelConfig,
    mut weights: HashMap<String, Tensor>,
    quantize: bool,
    path: &Path,
) {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let mut tensors = Vec::new();
    let mut add = |name: String, t: Tensor| {
        let dtype = if quantize && t.rank() == 2 && t.dims()[1].is_multiple_of(32) {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        tensors.push((name, QTensor::quantize(&t, dtype).unwrap()));
    };
    let mut take = |n: &str| weights.remove(n).unwrap_or_else(|| panic!("no weight {n}"));
    add(
        "token_embd.weight".into(),
        take("model.embed_tokens.weight"),
    );
    add("output_norm.weight".into(), take("model.norm.weight"));
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        add(
            format!("blk.{l}.attn_norm.weight"),
            take(&format!("{p}.input_layernorm.weight")),
        );
        add(
            format!("blk.{l}.ffn_norm.weight"),
            take(&format!("{p}.post_attention_layernorm.weight")),
        );
        for t in Target::ALL {
            let w = take(&format!("{p}.{}.weight", t.path()));
            let name = format!("blk.{l}.{}.weight", t.gguf());
            let w = match dnd_llm::gguf::rope_heads(cfg, &name) {
                Some(heads) => dnd_llm::gguf::permute(&w, heads).unwrap(),
                None => w,
            };
            add(name, w);
        }
    }
    let u = |x: usize| Value::U32(x as u32);
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u(cfg.num_layers)),
        ("llama.embedding_length", u(cfg.hidden_size)),
        ("llama.feed_forward_length", u(cfg.intermediate_size)),
        ("llama.attention.head_count", u(cfg.num_heads)),
        ("llama.attention.head_count_kv", u(cfg.num_kv_heads)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        ("llama.context_length", u(cfg.max_position_embeddings)),
    ];
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta, &tensors).unwrap();
}
