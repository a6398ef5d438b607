//! Model hyper-parameters, read from a Hugging Face `config.json` or GGUF metadata. Every shape the rest of
//! dnd needs (LoRA module sizes, token counts) is derived from here, never from a template checkpoint.

use crate::error::{LlmError, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The supported decoder families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    /// The name llama.cpp uses in `general.architecture` and as the prefix of its hyper-parameter keys.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        [Arch::Llama, Arch::Qwen2]
            .into_iter()
            .find(|a| a.gguf_name() == name)
    }
}

/// The seven projections of a decoder block that can carry a LoRA, in PEFT's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module name PEFT uses (`q_proj`, ...).
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// `self_attn.q_proj`, `mlp.down_proj`, ...: the path below `model.layers.N`.
    pub fn path(self) -> String {
        let block = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        };
        format!("{block}.{}", self.module())
    }

    /// The tensor name llama.cpp uses below `blk.N` (`attn_q`, `ffn_down`, ...).
    pub fn gguf(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    pub fn from_gguf(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.gguf() == name)
    }

    pub fn from_module(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.module() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Hyper-parameters of a Llama or Qwen2 decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (always for Qwen2).
    pub qkv_bias: bool,
    pub max_position_embeddings: usize,
}

impl ModelConfig {
    /// `(in_features, out_features)` of a projection.
    pub fn module_shape(&self, target: Target) -> (usize, usize) {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        match target {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
        }
    }

    /// A base model's config without loading its weights: `path` is a GGUF file or a Hugging Face
    /// directory (its `config.json`).
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_file(&path.join("config.json"))
        } else {
            crate::gguf::GgufFile::open(path)?.config()
        }
    }

    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let v: Value = dnd_io::read_json::<_, LlmError>(path)?;
        let key = |k: &str, reason: &str| LlmError::Config {
            path: path.into(),
            key: k.into(),
            reason: reason.into(),
        };
        let usize_of = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| key(k, "missing or not a non-negative integer"))
        };
        let arch = match v.get("model_type").and_then(Value::as_str) {
            Some("llama") => Arch::Llama,
            Some("qwen2") => Arch::Qwen2,
            Some(other) => {
                return Err(key(
                    "model_type",
                    &format!("`{other}` is not llama or qwen2"),
                ))
            }
            None => return Err(key("model_type", "missing")),
        };
        if let Some(scaling) = v.get("rope_scaling").filter(|s| !s.is_null()) {
            return Err(key(
                "rope_scaling",
                &format!("rope scaling {scaling} is not supported"),
            ));
        }
        // transformers >= 5 writes `rope_parameters: {rope_theta, rope_type}` instead of `rope_theta`.
        let rope = v.get("rope_parameters").filter(|r| !r.is_null());
        if let Some(kind) = rope
            .and_then(|r| r.get("rope_type"))
            .and_then(Value::as_str)
        {
            if kind != "default" {
                return Err(key(
                    "rope_parameters",
                    &format!("rope type `{kind}` is not supported"),
                ));
            }
        }
        let rope_theta = v
            .get("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        if arch == Arch::Qwen2 && v.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
        {
            return Err(key(
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(key("hidden_act", &format!("`{act}` is not silu")));
            }
        }
        let hidden_size = usize_of("hidden_size")?;
        let num_heads = usize_of("num_attention_heads")?;
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map_or(num_heads, |x| x as usize);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map_or(hidden_size / num_heads.max(1), |x| x as usize);
        let f64_or = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        let cfg = Self {
            arch,
            vocab_size: usize_of("vocab_size")?,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers: usize_of("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta,
            rms_norm_eps: f64_or("rms_norm_eps", 1e-6),
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(arch == Arch::Llama),
            qkv_bias: arch == Arch::Qwen2
                || v.get("attention_bias").and_then(Value::as_bool) == Some(true),
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .map_or(4096, |x| x as usize),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check the relations the forward pass relies on.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, reason: String| LlmError::Config {
            path: path.into(),
            key: key.into(),
            reason,
        };
        for (k, x) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
        ] {
            if x == 0 {
                return Err(bad(k, "must be positive".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} heads are not a multiple of {} kv heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} must be even and positive", self.head_dim),
            ));
        }
        Ok(())
    }

    /// The `config.json` a Hugging Face loader would accept for this model.
    pub fn to_hf_json(&self) -> Value {
        let (model_type, arch) = match self.arch {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        };
        let mut v = json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if self.arch == Arch::Llama {
            v["attention_bias"] = json!(self.qkv_bias);
        }
        v
    }

    /// Parameter count of the base model (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let per_layer: usize = Target::ALL
            .iter()
            .map(|&t| {
                let (i, o) = self.module_shape(t);
                i * o
            })
            .sum::<usize>()
            + 2 * self.hidden_size
            + if self.qkv_bias {
                (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
            } else {
                0
            };
        let embed = self.vocab_size * self.hidden_size;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * per_layer + self.hidden_size
    }
}
