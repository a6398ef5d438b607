//! The decoder forward pass, written with differentiable candle primitives only.
//!
//! candle-transformers' fused rms-norm, softmax and rope kernels have no backward pass, so training through
//! them silently drops gradients (docs/stack.md). Here every op is one autograd knows, which is what lets LoRA
//! training work; finite-difference tests guard it.
//!
//! The layout follows candle-transformers' `llama.rs` (one struct per part of a block), except that the
//! LoRA adapter is an argument of every `forward` rather than part of the model: a server applies a
//! different adapter per request to one shared set of base weights.

use crate::attention::{causal_attention, Mask};
use crate::config::{ModelConfig, Target};
use crate::error::{LlmError, Result};
use crate::linear::Frozen;
use crate::lora::Lora;
use crate::ops::{rms_norm, rope, swiglu};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Weights under Hugging Face names, taken one at a time so each is checked against the config's shape.
struct Weights<'a> {
    map: HashMap<String, Tensor>,
    dtype: DType,
    /// Only labels errors.
    source: &'a Path,
}

impl Weights<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| LlmError::Tensor {
            path: self.source.into(),
            name: name.into(),
            reason: "missing".into(),
        })?;
        if t.dims() != shape {
            return Err(LlmError::Tensor {
                path: self.source.into(),
                name: name.into(),
                reason: format!("shape {:?}, expected {shape:?} from the config", t.dims()),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }
}

/// A projection: frozen weight `[out, in]` and optional bias. It knows its own place in the model so
/// that it can find its pair in whichever adapter a call brings.
#[derive(Clone)]
struct Linear {
    weight: Frozen,
    bias: Option<Tensor>,
    layer: usize,
    target: Target,
}

impl Linear {
    fn load(w: &mut Weights<'_>, cfg: &ModelConfig, layer: usize, target: Target) -> Result<Self> {
        let (i, o) = cfg.module_shape(target);
        let name = format!("model.layers.{layer}.{}", target.path());
        let weight = Frozen::new(w.take(&format!("{name}.weight"), &[o, i])?)?;
        let has_bias = cfg.qkv_bias && matches!(target, Target::Q | Target::K | Target::V);
        let bias = if has_bias {
            Some(w.take(&format!("{name}.bias"), &[o])?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            layer,
            target,
        })
    }

    /// `x W^T (+ b)`, through the fused LoRA product when `lora` adapts this projection.
    fn forward(&self, x: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let y = match lora.and_then(|lo| lo.get(self.layer, self.target)) {
            Some((a, b, s)) => self.weight.forward_lora(x, a, b, s)?,
            None => self.weight.forward(x)?,
        };
        match &self.bias {
            Some(bias) => Ok(y.broadcast_add(bias)?),
            None => Ok(y),
        }
    }

    /// Folds this projection's pair from `lora`, if any, into the weight (`W + s B A`).
    fn merge(&mut self, lora: &Lora, dtype: DType) -> Result<()> {
        if let Some((a, b, s)) = lora.get(self.layer, self.target) {
            let delta = (b.matmul(a)? * s)?.to_dtype(dtype)?;
            self.weight = Frozen::new((self.weight.weight() + delta)?)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &mut Weights<'_>, name: &str, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self {
            weight: w.take(name, &[cfg.hidden_size])?,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(rms_norm(x, &self.weight, self.eps)?)
    }
}

/// What every layer's attention shares in one call: the batch shape, where the new tokens start, and
/// the rotary rows of their positions (sliced once, not per layer).
struct Positions {
    batch: usize,
    len: usize,
    offset: usize,
    /// Rotary rows `[T, hd/2]`, or `[B*T, hd/2]` for a left-padded batch.
    cos: Tensor,
    sin: Tensor,
    /// For a left-padded batch, the first real position of each element (its padding length); empty
    /// when no element is padded.
    starts: Vec<usize>,
}

impl Positions {
    fn rope(&self, x: &Tensor) -> Result<Tensor> {
        Ok(rope(x, &self.cos, &self.sin, self.len)?)
    }
}

/// Room reserved ahead of need per slot (one layer's keys and values), whatever
/// [`KvCache::reserve`] asks: a server's `max_tokens` of thousands for a batch of 64 would otherwise
/// claim gigabytes that sequences ending early never use. Past it a slot doubles as it fills. 16 MiB
/// holds SmolLM2's 16 sequences x 680 positions.
const RESERVE_MAX_BYTES: usize = 16 << 20;

/// Zeros shaped like slot tensor `t` (`[B, nkv, S, hd]`) with batch `b` and room for `capacity`
/// positions.
fn room(t: &Tensor, b: usize, capacity: usize) -> Result<Tensor> {
    let mut dims = t.dims().to_vec();
    dims[0] = b;
    dims[2] = capacity;
    Ok(Tensor::zeros(dims, t.dtype(), t.device())?)
}

/// One layer's cached keys and values `[B, nkv, capacity, hd]`, of which the first `len` positions are
/// filled (`None` until the layer first runs with a cache). Decoding writes each new position in
/// place ([`Tensor::slice_set`]) instead of concatenating the whole cache again every token: that
/// copy grew with the context and was 9% of a batch-16 decoding profile (memmove).
struct KvSlot {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvSlot {
    /// Append `k`, `v` `[b, nkv, T, hd]` to the slot (creating it) and return all `len + T` positions
    /// as views of the slot. A batch-1 slot continued by a batch of `b` (a shared context) is broadcast
    /// into a new slot with room for exactly the new positions (scoring continues it no further); a
    /// slot of the same batch that is full grows to twice what it needs. A slot made or grown has room
    /// for at least `reserve` positions.
    fn extend(
        slot: &mut Option<KvSlot>,
        k: Tensor,
        v: Tensor,
        reserve: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (b, t) = (k.dim(0)?, k.dim(2)?);
        let reserve = reserve.min(Self::reservable(&k)?);
        let s = match slot.take() {
            Some(s) => s,
            None if reserve <= t => {
                *slot = Some(KvSlot {
                    k: k.clone(),
                    v: v.clone(),
                    len: t,
                });
                return Ok((k, v));
            }
            // An empty slot with the room reserved: the positions are written below.
            None => KvSlot {
                k: room(&k, b, reserve)?,
                v: room(&v, b, reserve)?,
                len: 0,
            },
        };
        let need = s.len + t;
        let s = if s.k.dim(0)? != b {
            s.grow(b, need.max(reserve))?
        } else if s.k.dim(2)? < need {
            s.grow(b, (2 * need).max(reserve))?
        } else {
            s
        };
        s.k.slice_set(&k, 2, s.len)?;
        s.v.slice_set(&v, 2, s.len)?;
        let out = (s.k.narrow(2, 0, need)?, s.v.narrow(2, 0, need)?);
        *slot = Some(KvSlot { len: need, ..s });
        Ok(out)
    }

    /// Positions a slot for `k`'s batch and heads may be made with room for ahead of need: at most
    /// [`RESERVE_MAX_BYTES`] of keys and values.
    fn reservable(k: &Tensor) -> Result<usize> {
        let (b, nkv, _, hd) = k.dims4()?;
        let per_position = 2 * b * nkv * hd * k.dtype().size_in_bytes();
        Ok(RESERVE_MAX_BYTES / per_position.max(1))
    }

    /// A new slot of batch `b` and room for `capacity` positions holding this one's (broadcast from
    /// batch 1 if need be).
    fn grow(self, b: usize, capacity: usize) -> Result<KvSlot> {
        let copy = |t: &Tensor| -> Result<Tensor> {
            let new = room(t, b, capacity)?;
            let filled = broadcast_batch(&t.narrow(2, 0, self.len)?, b)?.contiguous()?;
            new.slice_set(&filled, 2, 0)?;
            Ok(new)
        };
        Ok(KvSlot {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            len: self.len,
        })
    }
}

#[derive(Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &mut Weights<'_>, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        Ok(Self {
            q: Linear::load(w, cfg, layer, Target::Q)?,
            k: Linear::load(w, cfg, layer, Target::K)?,
            v: Linear::load(w, cfg, layer, Target::V)?,
            o: Linear::load(w, cfg, layer, Target::O)?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `x [B*T, H] -> [B*T, H]`; with a cache slot, attends over the cached positions too and extends it.
    fn forward(
        &self,
        x: &Tensor,
        lora: Option<&Lora>,
        pos: &Positions,
        kv: Option<(&mut Option<KvSlot>, usize)>,
    ) -> Result<Tensor> {
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        let q = pos.rope(&self.heads(self.q.forward(x, lora)?, nh, pos)?)?;
        let k = pos.rope(&self.heads(self.k.forward(x, lora)?, nkv, pos)?)?;
        let v = self.heads(self.v.forward(x, lora)?, nkv, pos)?;
        let (k, v) = match kv {
            Some((slot, reserve)) => KvSlot::extend(slot, k, v, reserve)?,
            None => (k.contiguous()?, v.contiguous()?),
        };
        let y = self.attend(&q, &k, &v, pos)?;
        self.o.forward(&y, lora)
    }

    /// `[B*T, n*hd] -> [B, n, T, hd]`.
    fn heads(&self, y: Tensor, n: usize, pos: &Positions) -> Result<Tensor> {
        let y = y.reshape((pos.batch, pos.len, n, self.head_dim))?;
        Ok(y.transpose(1, 2)?)
    }

    /// Causal scaled dot-product attention of `q [B, nh, T, hd]` over `k`, `v` `[B, nkv, S, hd]`,
    /// returned as rows `[B*T, nh*hd]`. `k` and `v` must have contiguous `[S, hd]` matrices (a
    /// cache slot's views do: only their batch strides skip the spare capacity).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, pos: &Positions) -> Result<Tensor> {
        let (b, t, hd) = (pos.batch, pos.len, self.head_dim);
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        // Grouped-query attention without copying K/V: the `nh / nkv` query heads that share a KV head
        // are stacked along the sequence axis.
        let q = q.contiguous()?.reshape((b, nkv, nh / nkv * t, hd))?;
        let mask = Mask {
            t,
            offset: pos.offset,
            starts: pos.starts.clone(),
        };
        Ok(causal_attention(&q, k, v, 1.0 / (hd as f64).sqrt(), mask)?)
    }
}

/// The SwiGLU feed-forward network.
#[derive(Clone)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(w: &mut Weights<'_>, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(w, cfg, layer, Target::Gate)?,
            up: Linear::load(w, cfg, layer, Target::Up)?,
            down: Linear::load(w, cfg, layer, Target::Down)?,
        })
    }

    fn forward(&self, x: &Tensor, lora: Option<&Lora>) -> Result<Tensor> {
        let gated = swiglu(&self.gate.forward(x, lora)?, &self.up.forward(x, lora)?)?;
        self.down.forward(&gated, lora)
    }
}

/// One pre-norm decoder layer.
#[derive(Clone)]
struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// Projections before norms: the order tensors are checked in, which decides the one an error
    /// names when a checkpoint lacks several.
    fn load(w: &mut Weights<'_>, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        let attn = Attention::load(w, cfg, layer)?;
        let mlp = Mlp::load(w, cfg, layer)?;
        let p = format!("model.layers.{layer}");
        Ok(Self {
            input_norm: RmsNorm::load(w, &format!("{p}.input_layernorm.weight"), cfg)?,
            attn,
            post_norm: RmsNorm::load(w, &format!("{p}.post_attention_layernorm.weight"), cfg)?,
            mlp,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        lora: Option<&Lora>,
        pos: &Positions,
        kv: Option<(&mut Option<KvSlot>, usize)>,
    ) -> Result<Tensor> {
        let h = self.input_norm.forward(x)?;
        let x = (x + self.attn.forward(&h, lora, pos, kv)?)?;
        let h = self.post_norm.forward(&x)?;
        Ok((x + self.mlp.forward(&h, lora)?)?)
    }

    fn linear(&self, target: Target) -> &Linear {
        match target {
            Target::Q => &self.attn.q,
            Target::K => &self.attn.k,
            Target::V => &self.attn.v,
            Target::O => &self.attn.o,
            Target::Gate => &self.mlp.gate,
            Target::Up => &self.mlp.up,
            Target::Down => &self.mlp.down,
        }
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.attn, &mut self.mlp);
        [
            &mut a.q,
            &mut a.k,
            &mut a.v,
            &mut a.o,
            &mut m.gate,
            &mut m.up,
            &mut m.down,
        ]
    }
}

/// A Llama/Qwen2 decoder with frozen weights.
#[derive(Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// The output projection: its own weight, or the embeddings when tied.
    lm_head: Frozen,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
}

/// Keys and values of the positions seen so far, per layer. Not `Clone`: its slots are written in
/// place, so two copies would write into each other.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<KvSlot>>,
    len: usize,
    /// Positions each layer's slot is created with room for ([`Self::reserve`]).
    reserve: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make room for `positions` in all (before the first forward pass), up to 16 MiB of keys and
    /// values per layer: decoding that knows its length then writes into one slot per
    /// layer instead of growing it (a zeroed copy at each doubling was a tenth of batched decoding's
    /// time, `perf`, session 16).
    pub fn reserve(&mut self, positions: usize) {
        self.reserve = positions;
    }

    /// Keep only the batch rows `rows` (in that order): a batch whose other sequences have finished.
    /// A cache of batch 1 (a shared prefix) is left as it is.
    pub fn retain_rows(&mut self, rows: &[usize]) -> Result<()> {
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        for s in self.layers.iter_mut().flatten() {
            if s.k.dim(0)? == 1 {
                continue;
            }
            let index = Tensor::new(index.as_slice(), s.k.device())?;
            s.k = s.k.index_select(&index, 0)?;
            s.v = s.v.index_select(&index, 0)?;
        }
        Ok(())
    }
}

impl Transformer {
    /// Build from weights under Hugging Face names; `source` only labels errors. Every expected tensor must
    /// be present with the shape the config implies.
    pub fn new(
        cfg: ModelConfig,
        weights: HashMap<String, Tensor>,
        dtype: DType,
        source: &Path,
    ) -> Result<Self> {
        let mut w = Weights {
            map: weights,
            dtype,
            source,
        };
        let h = cfg.hidden_size;
        let embed = w.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let blocks = (0..cfg.num_layers)
            .map(|l| Block::load(&mut w, &cfg, l))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&mut w, "model.norm.weight", &cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            Frozen::new(embed.clone())?
        } else {
            Frozen::new(w.take("lm_head.weight", &[cfg.vocab_size, h])?)?
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
            layers: (0..self.cfg.num_layers).map(|_| None).collect(),
            len: 0,
            reserve: 0,
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
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let pos = self.positions(ids, cache.as_ref().map_or(0, |c| c.len))?;
        self.run_blocks(ids, pos, lora, cache)
    }

    /// [`Self::hidden`] for a left-padded batch: row `b` of `ids` starts with `pads[b]` padding tokens,
    /// which no real position attends to, and its tokens are at positions counted from its first real
    /// one, so each row computes what it would alone. With a cache (all rows share its length), later
    /// calls continue every row; pass the same `pads`. Inference only (no backward pass).
    pub fn hidden_padded(
        &self,
        ids: &Tensor,
        pads: &[usize],
        lora: Option<&Lora>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let mut pos = self.positions(ids, offset)?;
        if pads.len() != pos.batch {
            return Err(LlmError::Input(format!(
                "{} padding lengths for a batch of {}",
                pads.len(),
                pos.batch
            )));
        }
        let rows: Vec<u32> = pads
            .iter()
            .flat_map(|&p| (offset..offset + pos.len).map(move |t| t.saturating_sub(p) as u32))
            .collect();
        let rows = Tensor::new(rows.as_slice(), self.cos.device())?;
        pos.cos = self.cos.index_select(&rows, 0)?;
        pos.sin = self.sin.index_select(&rows, 0)?;
        pos.starts = pads.to_vec();
        self.run_blocks(ids, pos, lora, cache)
    }

    fn run_blocks(
        &self,
        ids: &Tensor,
        pos: Positions,
        lora: Option<&Lora>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?;
        for (l, block) in self.blocks.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| (&mut c.layers[l], c.reserve));
            x = block.forward(&x, lora, &pos, kv)?;
        }
        if let Some(c) = cache {
            c.len += pos.len;
        }
        self.norm.forward(&x)
    }

    /// Checks ids `[B, T]` starting at position `offset` against the model's limits, and slices their
    /// rotary rows.
    fn positions(&self, ids: &Tensor, offset: usize) -> Result<Positions> {
        let (batch, len) = ids.dims2()?;
        if len == 0 {
            return Err(LlmError::Input("empty token sequence".into()));
        }
        let max_pos = self.cos.dim(0)?;
        if offset + len > max_pos {
            return Err(LlmError::Input(format!(
                "sequence of {} tokens exceeds the model's {max_pos} positions",
                offset + len
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
        Ok(Positions {
            batch,
            len,
            offset,
            cos: self.cos.narrow(0, offset, len)?,
            sin: self.sin.narrow(0, offset, len)?,
            starts: Vec::new(),
        })
    }

    /// Attach quantised copies of the projections and the head (by Hugging Face name, as
    /// [`crate::gguf::GgufFile::quantized_weights`] gives them) for untracked products: decoding
    /// reads 4-8x fewer bytes per token, and packed blocks run prompts faster than f32. Anything
    /// tracked (training) keeps f32; scoring and plain decoding use a model without them.
    /// Returns how many weights got one.
    pub fn set_quantized(
        &mut self,
        mut q: HashMap<String, candle_core::quantized::QTensor>,
    ) -> Result<usize> {
        let mut n = 0;
        for (layer, block) in self.blocks.iter_mut().enumerate() {
            for lin in block.linears_mut() {
                let name = format!("model.layers.{layer}.{}.weight", lin.target.path());
                if let Some(t) = q.remove(&name) {
                    lin.weight.set_quantized(t)?;
                    n += 1;
                }
            }
        }
        let head = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        if let Some(t) = q.remove(head) {
            self.lm_head.set_quantized(t)?;
            n += 1;
        }
        Ok(n)
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
        for block in &mut out.blocks {
            for linear in block.linears_mut() {
                linear.merge(lora, self.dtype)?;
            }
        }
        Ok(out)
    }

    /// The frozen weight `[out, in]` of one projection (used by tests and adapter tooling).
    pub fn projection(&self, layer: usize, target: Target) -> &Tensor {
        self.blocks[layer].linear(target).weight.weight()
    }
}

/// `t` with batch `b`: a batch-1 cache is broadcast as a view, so the shared prefix is never copied.
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
