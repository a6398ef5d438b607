//! The decoder forward pass, written with differentiable candle primitives only.
//!
//! candle-transformers' fused rms-norm, softmax and rope kernels have no backward pass, so training through
//! them silently drops gradients (docs/stack.md). Here every op is one autograd knows, which is what lets LoRA
//! training work; finite-difference tests guard it.

use crate::config::{ModelConfig, Target};
use crate::error::{LlmError, Result};
use crate::linear::Frozen;
use crate::lora::Lora;
use crate::ops::{causal_softmax, rms_norm, rope};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A projection: frozen weight `[out, in]` and optional bias.
#[derive(Clone)]
struct Linear {
    weight: Frozen,
    bias: Option<Tensor>,
}

#[derive(Clone)]
struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    /// Indexed by [`Target::index`].
    proj: Vec<Linear>,
}

/// A Llama/Qwen2 decoder with frozen weights.
#[derive(Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    /// The output projection: its own weight, or the embeddings when tied.
    lm_head: Frozen,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Transformer {
    /// Build from weights under Hugging Face names; `source` only labels errors. Every expected tensor must
    /// be present with the shape the config implies.
    pub fn new(
        cfg: ModelConfig,
        mut weights: HashMap<String, Tensor>,
        dtype: DType,
        source: &Path,
    ) -> Result<Self> {
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = weights.remove(name).ok_or_else(|| LlmError::Tensor {
                path: source.into(),
                name: name.into(),
                reason: "missing".into(),
            })?;
            if t.dims() != shape {
                return Err(LlmError::Tensor {
                    path: source.into(),
                    name: name.into(),
                    reason: format!("shape {:?}, expected {shape:?} from the config", t.dims()),
                });
            }
            Ok(t.to_dtype(dtype)?)
        };
        let h = cfg.hidden_size;
        let embed = take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let mut proj = Vec::with_capacity(7);
            for t in Target::ALL {
                let (i, o) = cfg.module_shape(t);
                let name = format!("{p}.{}", t.path());
                let weight = Frozen::new(take(&format!("{name}.weight"), &[o, i])?)?;
                let has_bias = cfg.qkv_bias && matches!(t, Target::Q | Target::K | Target::V);
                let bias = if has_bias {
                    Some(take(&format!("{name}.bias"), &[o])?)
                } else {
                    None
                };
                proj.push(Linear { weight, bias });
            }
            blocks.push(Block {
                input_norm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_norm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                proj,
            });
        }
        let norm = take("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            Frozen::new(embed.clone())?
        } else {
            Frozen::new(take("lm_head.weight", &[cfg.vocab_size, h])?)?
        };
        let (cos, sin) = rope_tables(&cfg, dtype)?;
        Ok(Self {
            cfg,
            embed,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            dtype,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.cfg.num_layers],
            len: 0,
        }
    }

    /// Final-norm hidden states `[B*T, H]` (rows in batch-major order) for token ids `[B, T]`.
    ///
    /// With a cache, the ids continue the cached positions and the cache is extended. A cache built with
    /// batch 1 may be continued by a larger batch: the shared prefix is broadcast, which is how scoring
    /// reuses one context for all of its answer options. Sequences are right-padded, so padding never
    /// influences real positions under the causal mask.
    pub fn hidden(
        &self,
        ids: &Tensor,
        lora: Option<&Lora>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t == 0 {
            return Err(LlmError::Input("empty token sequence".into()));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if offset + t > self.cos.dim(0)? {
            return Err(LlmError::Input(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                offset + t,
                self.cos.dim(0)?
            )));
        }
        if let Ok(max) = ids.flatten_all()?.max(0)?.to_scalar::<u32>() {
            if max as usize >= self.cfg.vocab_size {
                return Err(LlmError::Input(format!(
                    "token id {max} outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
        }
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let rep = nh / nkv;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let proj = |target: Target, input: &Tensor| -> Result<Tensor> {
                let p = &block.proj[target.index()];
                let mut y = match lora.and_then(|lo| lo.get(l, target)) {
                    Some((a, bm, s)) => p.weight.forward_lora(input, a, bm, s)?,
                    None => p.weight.forward(input)?,
                };
                if let Some(bias) = &p.bias {
                    y = y.broadcast_add(bias)?;
                }
                Ok(y)
            };
            let h1 = rms_norm(&x, &block.input_norm, cfg.rms_norm_eps)?;
            let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2);
            let q = rope(&heads(proj(Target::Q, &h1)?, nh)?, &cos, &sin)?;
            let mut k = rope(&heads(proj(Target::K, &h1)?, nkv)?, &cos, &sin)?;
            let mut v = heads(proj(Target::V, &h1)?, nkv)?;
            if let Some(c) = cache.as_deref_mut() {
                if let Some((ck, cv)) = &c.layers[l] {
                    k = Tensor::cat(&[&broadcast_batch(ck, b)?, &k], 2)?;
                    v = Tensor::cat(&[&broadcast_batch(cv, b)?, &v], 2)?;
                }
                c.layers[l] = Some((k.clone(), v.clone()));
            }
            // Grouped-query attention without copying K/V: the `rep` query heads that share a KV head
            // are stacked along the sequence axis, so one batched matmul serves them all.
            let q = q.contiguous()?.reshape((b, nkv, rep * t, hd))?;
            let scores = q.matmul(&k.contiguous()?.t()?)?;
            let attn = causal_softmax(&scores, scale, t, offset)?.matmul(&v.contiguous()?)?;
            let attn = attn
                .reshape((b, nh, t, hd))?
                .transpose(1, 2)?
                .reshape((b * t, nh * hd))?;
            x = (x + proj(Target::O, &attn)?)?;
            let h2 = rms_norm(&x, &block.post_norm, cfg.rms_norm_eps)?;
            let gated = (proj(Target::Gate, &h2)?.silu()? * proj(Target::Up, &h2)?)?;
            x = (x + proj(Target::Down, &gated)?)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(rms_norm(&x, &self.norm, cfg.rms_norm_eps)?)
    }

    /// Vocabulary logits `[N, V]` for hidden-state rows `[N, H]`. Kept separate from [`Self::hidden`] so
    /// callers project only the rows they need: the vocabulary matmul is the largest in the model.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(hidden)?)
    }

    /// Logits `[B, T, V]` at every position.
    pub fn forward(&self, ids: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.hidden(ids, lora, None)?;
        Ok(self.logits(&h)?.reshape((b, t, self.cfg.vocab_size))?)
    }

    /// A copy of the model with `lora` merged into its weights (`W + s * B A`), for fast inference.
    /// The original is untouched, so "unmerging" is dropping the copy: exact, with no rounding drift.
    pub fn merged(&self, lora: &Lora) -> Result<Self> {
        let mut out = self.clone();
        for (l, block) in out.blocks.iter_mut().enumerate() {
            for t in Target::ALL {
                if let Some((a, b, s)) = lora.get(l, t) {
                    let p = &mut block.proj[t.index()];
                    let delta = (b.matmul(a)? * s)?.to_dtype(self.dtype)?;
                    p.weight = Frozen::new((p.weight.weight() + delta)?)?;
                }
            }
        }
        Ok(out)
    }

    /// The frozen weight `[out, in]` of one projection (used by tests and adapter tooling).
    pub fn projection(&self, layer: usize, target: Target) -> &Tensor {
        self.blocks[layer].proj[target.index()].weight.weight()
    }
}

fn broadcast_batch(t: &Tensor, b: usize) -> candle_core::Result<Tensor> {
    if t.dim(0)? == b {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    dims[0] = b;
    t.broadcast_as(dims)
}

/// Rotary tables `[max_pos, hd/2]`, computed in f64 and rounded once.
fn rope_tables(cfg: &ModelConfig, dtype: DType) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let n = cfg.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for i in 0..half {
            let inv = cfg.rope_theta.powf(-((2 * i) as f64) / cfg.head_dim as f64);
            let a = p as f64 * inv;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let dev = Device::Cpu;
    let cos = Tensor::from_vec(cos, (n, half), &dev)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, half), &dev)?.to_dtype(dtype)?;
    Ok((cos, sin))
}
