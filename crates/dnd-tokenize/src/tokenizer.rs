//! The token canvas and its scale border.
//!
//! A chunk `x` of `r` rows and `w <= cw` columns becomes a canvas `T` of `(r+2) x (cw+2)`:
//! - `T[i][j] = (x[i][j] - mean) / std` for `i < r, j < w`; `T[i][j] = 0` (masked) for `i < r, w <= j < cw`;
//! - the two bottom rows `i = r, r+1`: `T[i][j] = m'` for even `j`, `s'` for odd `j`, over all `cw+2` columns;
//! - the two right columns above them, `i < r`: `T[i][cw] = m'`, `T[i][cw+1] = s'`;
//!
//! with `m' = 8 mean`, `s' = ln(0.9 std + 0.1) + 1.6` (`std` with Bessel's correction, as torch's default).
//! For even `cw` this is the official code's layout. Decoding takes `m'` and `s'` as the mean of the cells
//! holding them, inverts `mean = m'/8`, `std = max(0, (exp(s' - 1.6) - 0.1) / 0.9)` and rescales.
//!
//! Losslessness: the border is stored in f32, and for a small `std` the inverse `exp(s' - 1.6) - 0.1`
//! cancels badly (std 1e-4 would come back with ~1e-4 relative error). So the encoder standardises with
//! the scale *as decoded from the f32 border*, not the exact one: the decoder recovers that scale exactly
//! and the only loss left is the f32 rounding of the standardised values (~6e-8 relative).

use crate::layout::{default_chunk_width, plan, Factor, TokenInfo};
use crate::{Result, TokenizeError};
use candle_core::{DType, Device, Tensor};
use dnd_llm::{Lora, LoraConfig, ModelConfig};
use std::path::Path;

const MEAN_SCALE: f64 = 8.0;
const STD_BIAS: f64 = 1.6;

/// Turns adapters of one (base model, rank, targets) into token tensors and back.
#[derive(Debug, Clone)]
pub struct LoraTokenizer {
    model: ModelConfig,
    lora: LoraConfig,
    cw: usize,
    tokens: Vec<TokenInfo>,
}

impl LoraTokenizer {
    /// A tokenizer cutting factors into chunks of `chunk_width` columns.
    pub fn new(model: &ModelConfig, lora: &LoraConfig, chunk_width: usize) -> Result<Self> {
        if chunk_width == 0 || lora.rank == 0 || lora.targets.is_empty() {
            return Err(TokenizeError::Config(format!(
                "chunk width {chunk_width}, rank {} and {} targets must all be positive",
                lora.rank,
                lora.targets.len()
            )));
        }
        Ok(Self {
            model: model.clone(),
            lora: lora.clone(),
            cw: chunk_width,
            tokens: plan(model, lora, chunk_width),
        })
    }

    /// A tokenizer with [`default_chunk_width`].
    pub fn with_default_width(model: &ModelConfig, lora: &LoraConfig) -> Result<Self> {
        Self::new(model, lora, default_chunk_width(model, &lora.targets))
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// `(r + 2, cw + 2)`: the shape of one token.
    pub fn token_shape(&self) -> (usize, usize) {
        (self.lora.rank + 2, self.cw + 2)
    }

    pub fn chunk_width(&self) -> usize {
        self.cw
    }

    pub fn lora_config(&self) -> &LoraConfig {
        &self.lora
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model
    }

    /// What each token holds, in token order (e.g. to weight A and B tokens differently in the loss).
    pub fn tokens(&self) -> &[TokenInfo] {
        &self.tokens
    }

    /// Fraction of data cells (`r x cw` per token) that are padding.
    pub fn padding_fraction(&self) -> f64 {
        let used: usize = self.tokens.iter().map(|t| t.width).sum();
        1.0 - used as f64 / (self.tokens.len() * self.cw) as f64
    }

    /// Tokens `[N_w, r+2, cw+2]` (f32) and the loss mask of the same shape (1 = real or border, 0 = gap).
    pub fn encode(&self, lora: &Lora) -> Result<(Tensor, Tensor)> {
        let cfg = lora.config();
        if cfg.rank != self.lora.rank || cfg.targets != self.lora.targets {
            return Err(TokenizeError::Mismatch(format!(
                "adapter has rank {} on {:?}, tokenizer expects rank {} on {:?}",
                cfg.rank, cfg.targets, self.lora.rank, self.lora.targets
            )));
        }
        let (h, w) = self.token_shape();
        let r = self.lora.rank;
        let mut data = vec![0f32; self.tokens.len() * h * w];
        let mut mask = vec![1f32; self.tokens.len() * h * w];
        let mut module: Option<(usize, dnd_llm::Target, Vec<f64>, Vec<f64>)> = None;
        for (n, t) in self.tokens.iter().enumerate() {
            if module
                .as_ref()
                .is_none_or(|m| (m.0, m.1) != (t.layer, t.target))
            {
                let (a, bt) = self.factors(lora, t.layer, t.target)?;
                module = Some((t.layer, t.target, a, bt));
            }
            let (_, _, a, bt) = module.as_ref().expect("set above");
            let (full, len) = match t.factor {
                Factor::A => (a, a.len() / r),
                Factor::B => (bt, bt.len() / r),
            };
            let chunk: Vec<f64> = (0..r)
                .flat_map(|i| (0..t.width).map(move |j| full[i * len + t.start + j]))
                .collect();
            let canvas = &mut data[n * h * w..(n + 1) * h * w];
            encode_chunk(&chunk, r, t.width, self.cw, canvas);
            for i in 0..r {
                mask[n * h * w + i * w + t.width..n * h * w + i * w + self.cw].fill(0.0);
            }
        }
        let shape = (self.tokens.len(), h, w);
        Ok((
            Tensor::from_vec(data, shape, &Device::Cpu)?,
            Tensor::from_vec(mask, shape, &Device::Cpu)?,
        ))
    }

    /// A `[r, in]` and B transposed `[r, out]` of one module, row-major in f64.
    fn factors(
        &self,
        lora: &Lora,
        layer: usize,
        target: dnd_llm::Target,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let (a, b, _) = lora.get(layer, target).ok_or_else(|| {
            TokenizeError::Mismatch(format!("layer {layer} {} is missing", target.module()))
        })?;
        let (inp, out) = self.model.module_shape(target);
        let r = self.lora.rank;
        if a.dims() != [r, inp] || b.dims() != [out, r] {
            return Err(TokenizeError::Mismatch(format!(
                "layer {layer} {}: A {:?} / B {:?}, the base config implies [{r}, {inp}] / [{out}, {r}]",
                target.module(),
                a.dims(),
                b.dims()
            )));
        }
        let flat = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
        };
        Ok((flat(a)?, flat(&b.t()?.contiguous()?)?))
    }

    /// The adapter (f32) that `tokens` `[N_w, r+2, cw+2]` describe, with this tokenizer's LoRA config.
    pub fn decode(&self, tokens: &Tensor) -> Result<Lora> {
        self.check_tokens(tokens)?;
        let (h, w) = self.token_shape();
        // Read as f32, as the decoder emits them (the adapter is f32 and the border is stored in f32),
        // not widened to an f64 copy: that copy doubled the memory `dnd generate` touched here.
        let data: Vec<f32> = tokens.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let r = self.lora.rank;
        // Per (layer, target): A [r, in] and B^T [r, out], filled chunk by chunk.
        let mut parts = Vec::new();
        let mut cur: Option<(usize, dnd_llm::Target, Vec<f64>, Vec<f64>)> = None;
        for (n, t) in self.tokens.iter().enumerate() {
            if cur
                .as_ref()
                .is_none_or(|m| (m.0, m.1) != (t.layer, t.target))
            {
                if let Some(done) = cur.take() {
                    parts.push(self.assemble(done)?);
                }
                let (inp, out) = self.model.module_shape(t.target);
                cur = Some((t.layer, t.target, vec![0.0; r * inp], vec![0.0; r * out]));
            }
            let m = cur.as_mut().expect("set above");
            let full = match t.factor {
                Factor::A => &mut m.2,
                Factor::B => &mut m.3,
            };
            let len = full.len() / r;
            let chunk = decode_chunk(&data[n * h * w..(n + 1) * h * w], r, t.width, self.cw);
            for i in 0..r {
                full[i * len + t.start..i * len + t.start + t.width]
                    .copy_from_slice(&chunk[i * t.width..(i + 1) * t.width]);
            }
        }
        if let Some(done) = cur {
            parts.push(self.assemble(done)?);
        }
        self.adapter(parts)
    }

    /// The adapter `tokens` `[N_w, r+2, cw+2]` describe, as [`decode`](Self::decode) reads it, but
    /// built from tensor operations on `tokens` in their dtype: a loss on the adapter backpropagates
    /// into whatever produced the tokens (the generator's SFT objective). Border means, the inverse
    /// scale transform, rescaling, and per-factor concatenation of the chunks along the long axis.
    pub fn decode_differentiable(&self, tokens: &Tensor) -> Result<Lora> {
        self.check_tokens(tokens)?;
        let n = self.tokens.len();
        let (r, cw) = (self.lora.rank, self.cw);
        // The scales in f64 whatever the tokens' dtype: for a small std, `exp(s' - 1.6) - 0.1`
        // cancels, and in f32 it would lose what `decode` keeps (see the module doc).
        let wide = tokens.to_dtype(DType::F64)?;
        let (m_cells, s_cells) = border_masks(r, cw)?;
        let border = |cells: &Tensor| -> Result<Tensor> {
            let count = cells.sum_all()?.to_scalar::<f64>()?;
            Ok((wide.broadcast_mul(cells)?.sum((1, 2))? / count)?)
        };
        let mean = (border(&m_cells)? / MEAN_SCALE)?.to_dtype(tokens.dtype())?;
        let grown = (border(&s_cells)? - STD_BIAS)?.exp()?;
        let std = ((grown - 0.1)? / 0.9)?.relu()?.to_dtype(tokens.dtype())?;
        let values = tokens
            .narrow(1, 0, r)?
            .narrow(2, 0, cw)?
            .broadcast_mul(&std.reshape((n, 1, 1))?)?
            .broadcast_add(&mean.reshape((n, 1, 1))?)?;
        let mut parts = Vec::new();
        let mut first = 0;
        while first < n {
            let t0 = &self.tokens[first];
            let same = |t: &TokenInfo| (t.layer, t.target) == (t0.layer, t0.target);
            let count_a = self.tokens[first..]
                .iter()
                .take_while(|t| same(t) && t.factor == Factor::A)
                .count();
            let count_b = self.tokens[first + count_a..]
                .iter()
                .take_while(|t| same(t) && t.factor == Factor::B)
                .count();
            let (inp, out) = self.model.module_shape(t0.target);
            // [count, r, cw] -> [r, count * cw] -> the factor's real columns.
            let factor = |start: usize, count: usize, len: usize| -> Result<Tensor> {
                Ok(values
                    .narrow(0, start, count)?
                    .transpose(0, 1)?
                    .reshape((r, count * cw))?
                    .narrow(1, 0, len)?)
            };
            let a = factor(first, count_a, inp)?;
            let b = factor(first + count_a, count_b, out)?.t()?;
            parts.push((t0.layer, t0.target, a, b));
            first += count_a + count_b;
        }
        self.adapter(parts)
    }

    /// `tokens` must be `[N_w, r+2, cw+2]` for this layout.
    fn check_tokens(&self, tokens: &Tensor) -> Result<()> {
        let (h, w) = self.token_shape();
        if tokens.dims() != [self.tokens.len(), h, w] {
            return Err(TokenizeError::Mismatch(format!(
                "tokens are {:?}, expected [{}, {h}, {w}]",
                tokens.dims(),
                self.tokens.len()
            )));
        }
        Ok(())
    }

    /// The adapter of this layout from its decoded `(layer, target, A, B)` parts.
    fn adapter(&self, parts: Vec<(usize, dnd_llm::Target, Tensor, Tensor)>) -> Result<Lora> {
        Ok(Lora::from_parts(
            self.lora.clone(),
            &self.model,
            parts,
            Path::new("<tokens>"),
        )?)
    }

    /// `(layer, target, A, B)` in f32 from the row-major A and B^T buffers.
    fn assemble(
        &self,
        (layer, target, a, bt): (usize, dnd_llm::Target, Vec<f64>, Vec<f64>),
    ) -> Result<(usize, dnd_llm::Target, Tensor, Tensor)> {
        let r = self.lora.rank;
        let (inp, out) = self.model.module_shape(target);
        let a = Tensor::from_vec(a, (r, inp), &Device::Cpu)?.to_dtype(DType::F32)?;
        let b = Tensor::from_vec(bt, (r, out), &Device::Cpu)?
            .t()?
            .contiguous()?
            .to_dtype(DType::F32)?;
        Ok((layer, target, a, b))
    }
}

/// `mean/8`-scaled border value and std from the f32 border cells, as the decoder will read them.
fn scales(m_border: f32, s_border: f32) -> (f64, f64) {
    let mean = m_border as f64 / MEAN_SCALE;
    let std = ((((s_border as f64) - STD_BIAS).exp() - 0.1) / 0.9).max(0.0);
    (mean, std)
}

/// The `(r+2) x (cw+2)` masks of the cells holding `m'` and `s'` (see the module doc).
fn border_masks(r: usize, cw: usize) -> Result<(Tensor, Tensor)> {
    let w = cw + 2;
    let mut m = vec![0f64; (r + 2) * w];
    let mut s = vec![0f64; (r + 2) * w];
    for i in 0..r {
        m[i * w + cw] = 1.0;
        s[i * w + cw + 1] = 1.0;
    }
    for i in r..r + 2 {
        for j in 0..w {
            if j % 2 == 0 {
                m[i * w + j] = 1.0;
            } else {
                s[i * w + j] = 1.0;
            }
        }
    }
    let t = |v| Tensor::from_vec(v, (r + 2, w), &Device::Cpu);
    Ok((t(m)?, t(s)?))
}

/// Write one chunk (`r x width`, row-major) into its canvas (`(r+2) x (cw+2)`, zeroed gap).
fn encode_chunk(chunk: &[f64], r: usize, width: usize, cw: usize, canvas: &mut [f32]) {
    let n = chunk.len() as f64;
    let mean = chunk.iter().sum::<f64>() / n;
    let std = if chunk.len() > 1 {
        (chunk.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let m_border = (MEAN_SCALE * mean) as f32;
    let s_border = ((0.9 * std + 0.1).ln() + STD_BIAS) as f32;
    // Standardise with the scales the decoder will recover (see the module docs).
    let (mean_d, std_d) = scales(m_border, s_border);
    let w = cw + 2;
    for i in 0..r {
        for j in 0..width {
            canvas[i * w + j] = if std > 0.0 && std_d > 0.0 {
                ((chunk[i * width + j] - mean_d) / std_d) as f32
            } else {
                0.0
            };
        }
        canvas[i * w + cw] = m_border;
        canvas[i * w + cw + 1] = s_border;
    }
    for i in r..r + 2 {
        for j in 0..w {
            canvas[i * w + j] = if j % 2 == 0 { m_border } else { s_border };
        }
    }
}

/// Read one canvas back into a chunk (`r x width`, row-major).
fn decode_chunk(canvas: &[f32], r: usize, width: usize, cw: usize) -> Vec<f64> {
    let w = cw + 2;
    let at = |i: usize| canvas[i] as f64;
    let (mut m_sum, mut s_sum, mut m_n, mut s_n) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..r {
        m_sum += at(i * w + cw);
        s_sum += at(i * w + cw + 1);
    }
    for i in r..r + 2 {
        for j in 0..w {
            if j % 2 == 0 {
                m_sum += at(i * w + j);
                m_n += 1.0;
            } else {
                s_sum += at(i * w + j);
                s_n += 1.0;
            }
        }
    }
    let (m_n, s_n) = (m_n + r as f64, s_n + r as f64);
    let (mean, std) = scales((m_sum / m_n) as f32, (s_sum / s_n) as f32);
    (0..r)
        .flat_map(|i| (0..width).map(move |j| at(i * w + j) * std + mean))
        .collect()
}
