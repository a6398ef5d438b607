//! A BERT encoder (inference only), written here rather than taken from candle-transformers: it is ~120
//! lines, avoids a dependency that adds minutes to every clean build, and lets us check the config keys
//! the forward pass relies on (absolute positions, erf GELU) instead of silently running a different model.

use crate::error::{io_err, EncodeError, Result};
use candle_core::{DType, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The hyper-parameters the forward pass needs, from a Hugging Face BERT `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| EncodeError::Model {
            path: path.into(),
            reason: format!("invalid JSON: {e}"),
        })?;
        let bad = |reason: String| EncodeError::Model {
            path: path.into(),
            reason,
        };
        let int = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("`{k}` missing or not an integer")))
        };
        let str_is = |k: &str, want: &str| match v.get(k).and_then(Value::as_str) {
            None => Ok(()),
            Some(s) if s == want => Ok(()),
            Some(s) => Err(bad(format!("`{k}` is `{s}`; only `{want}` is supported"))),
        };
        str_is("model_type", "bert")?;
        str_is("hidden_act", "gelu")?;
        str_is("position_embedding_type", "absolute")?;
        let cfg = Self {
            vocab_size: int("vocab_size")?,
            hidden_size: int("hidden_size")?,
            num_layers: int("num_hidden_layers")?,
            num_heads: int("num_attention_heads")?,
            intermediate_size: int("intermediate_size")?,
            max_position_embeddings: int("max_position_embeddings")?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-12),
        };
        if cfg.num_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            return Err(bad(format!(
                "hidden size {} is not a multiple of {} heads",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        Ok(cfg)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// BERT's encoder stack with its embedding layer (the pooler is unused: sentence-transformers mean-pools).
pub struct Bert {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type0: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    /// Load `model.safetensors` (HF `BertModel` names, with or without a `bert.` prefix) in f32,
    /// memory-mapped (see [`dnd_llm::hf::read_safetensors`]).
    pub fn load(config: BertConfig, weights: &Path) -> Result<Self> {
        let map = dnd_llm::hf::read_safetensors(weights, DType::F32)
            .map_err(|e| EncodeError::Model {
                path: weights.into(),
                reason: e.to_string(),
            })?
            .into_iter()
            .map(|(k, t)| (k.strip_prefix("bert.").unwrap_or(&k).to_string(), t))
            .collect();
        let mut w = Weights {
            map,
            path: weights,
            eps: config.layer_norm_eps,
        };
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let embed_norm = w.norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::new();
        for l in 0..config.num_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(Layer {
                query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up: w.linear(&format!("{p}.intermediate.dense"), h, f)?,
                down: w.linear(&format!("{p}.output.dense"), f, h)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let word = w.take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position = w.take(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        // Single-sentence input: every token has type 0, so only that row is kept.
        let token_type0 = w
            .take_rows("embeddings.token_type_embeddings.weight", h)?
            .get(0)?;
        Ok(Self {
            config,
            word,
            position,
            token_type0,
            embed_norm,
            layers,
        })
    }

    /// Last hidden state `[N, T, H]` for ids `[N, T]` (u32) and a 0/1 attention mask `[N, T]` (f32).
    /// Every sequence has token type 0 (single-sentence input).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (n, t) = ids.dims2()?;
        let h = self.config.hidden_size;
        let heads = self.config.num_heads;
        let hd = h / heads;
        let word = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, t, h))?;
        let pos = self.position.narrow(0, 0, t)?;
        let x = word.broadcast_add(&pos)?.broadcast_add(&self.token_type0)?;
        let mut x = self.embed_norm.forward(&x)?;
        // Additive key mask: 0 where attended, a large negative number on padding.
        let bias = ((mask.reshape((n, 1, 1, t))? - 1.0)? * 1e30)?;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &self.layers {
            let split = |y: Tensor| -> Result<Tensor> {
                Ok(y.reshape((n, t, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, t, h))?;
            x = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let ff = layer.down.forward(&layer.up.forward(&x)?.gelu_erf()?)?;
            x = layer.out_norm.forward(&(ff + &x)?)?;
        }
        Ok(x)
    }
}

/// The checkpoint's tensors, handed out by name with their shapes checked.
struct Weights<'a> {
    map: HashMap<String, Tensor>,
    path: &'a Path,
    eps: f64,
}

impl Weights<'_> {
    fn bad(&self, reason: String) -> EncodeError {
        EncodeError::Model {
            path: self.path.into(),
            reason,
        }
    }

    fn take_rows(&mut self, name: &str, cols: usize) -> Result<Tensor> {
        let t = self
            .map
            .remove(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` missing")))?;
        if t.rank() != 2 || t.dim(1)? != cols || t.dim(0)? == 0 {
            return Err(self.bad(format!(
                "tensor `{name}` is {:?}, expected [_, {cols}]",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .map
            .remove(name)
            .ok_or_else(|| self.bad(format!("tensor `{name}` missing")))?;
        if t.dims() != shape {
            return Err(self.bad(format!(
                "tensor `{name}` is {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    fn linear(&mut self, prefix: &str, inp: usize, out: usize) -> Result<Linear> {
        Ok(Linear::new(
            self.take(&format!("{prefix}.weight"), &[out, inp])?,
            Some(self.take(&format!("{prefix}.bias"), &[out])?),
        ))
    }

    fn norm(&mut self, prefix: &str, h: usize) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.take(&format!("{prefix}.weight"), &[h])?,
            self.take(&format!("{prefix}.bias"), &[h])?,
            self.eps,
        ))
    }
}

/// Mean over the valid tokens of `[N, T, H]` under a 0/1 mask `[N, T]`, then L2-normalised: the
/// sentence-transformers embedding of all-MiniLM-L6-v2.
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = sum.broadcast_div(&count)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(mean.broadcast_div(&norm)?)
}
