//! GGUF v2/v3 loading: header and metadata via candle's reader (which bounds-checks every length against
//! the file size), every tensor dequantised to f32 and renamed to the Hugging Face layout.
//!
//! llama.cpp's converter permutes the rows of Llama Q/K projections so that its rotary kernel can rotate
//! adjacent pairs. We undo that permutation on load, so that all models share the Hugging Face (half-split)
//! rotary convention and PEFT adapters, which are trained in Hugging Face coordinates, apply unchanged.

use crate::config::{Arch, ModelConfig, Target};
use crate::error::{io_err, LlmError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// An opened GGUF file: parsed header, ready to read tensors.
pub struct GgufFile {
    pub content: Content,
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // Buffered: the metadata is ~100k small reads (the tokenizer's vocabulary and merges), one
        // syscall each on a bare file, which made reading a model's config take ~0.1 s.
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let content = Content::read(&mut reader).map_err(|e| LlmError::Gguf {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            content,
            file: reader.into_inner(),
            path: path.into(),
        })
    }

    fn meta(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| LlmError::Config {
                path: self.path.clone(),
                key: key.into(),
                reason: "missing from GGUF metadata".into(),
            })
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .map(|x| x as usize)
            .map_err(|e| self.bad_key(key, e))
    }

    fn meta_f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.content.metadata.get(key) {
            None => Ok(default),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|e| self.bad_key(key, e)),
        }
    }

    fn bad_key(&self, key: &str, e: candle_core::Error) -> LlmError {
        LlmError::Config {
            path: self.path.clone(),
            key: key.into(),
            reason: e.to_string(),
        }
    }

    /// The model hyper-parameters from `general.architecture` and the `{arch}.*` keys.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch_name = self
            .meta("general.architecture")?
            .to_string()
            .map_err(|e| self.bad_key("general.architecture", e))?
            .clone();
        let arch = Arch::from_gguf_name(&arch_name).ok_or_else(|| LlmError::Unsupported {
            path: self.path.clone(),
            reason: format!("architecture `{arch_name}` (supported: llama, qwen2)"),
        })?;
        let a = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = self.meta_usize(&a("embedding_length"))?;
        let num_heads = self.meta_usize(&a("attention.head_count"))?;
        let num_kv_heads = self
            .meta_usize(&a("attention.head_count_kv"))
            .unwrap_or(num_heads);
        let head_dim = self
            .meta_usize(&a("rope.dimension_count"))
            .unwrap_or(hidden_size / num_heads.max(1));
        let embd = self.info("token_embd.weight")?;
        let cfg = ModelConfig {
            arch,
            vocab_size: embd.shape.dims()[0],
            hidden_size,
            intermediate_size: self.meta_usize(&a("feed_forward_length"))?,
            num_layers: self.meta_usize(&a("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: self.meta_f64(&a("rope.freq_base"), 10000.0)?,
            rms_norm_eps: self.meta_f64(&a("attention.layer_norm_rms_epsilon"), 1e-6)?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            qkv_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            max_position_embeddings: self.meta_usize(&a("context_length")).unwrap_or(4096),
        };
        cfg.validate(&self.path)?;
        Ok(cfg)
    }

    fn info(&self, name: &str) -> Result<&candle_core::quantized::gguf_file::TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| LlmError::Tensor {
                path: self.path.clone(),
                name: name.into(),
                reason: "missing from the GGUF file".into(),
            })
    }

    /// Read one tensor as stored (quantised blocks kept), in the GGUF's own layout.
    pub fn qtensor(&mut self, name: &str) -> Result<QTensor> {
        self.check_size(name)?;
        self.content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| self.bad_tensor(name, e))
    }

    /// Refuse a tensor whose shape claims more bytes than the whole file holds, before anything is
    /// allocated for it (its element count is computed without overflow: a wrapped product would pass
    /// candle's own size check and then ask for an impossible allocation when dequantised).
    fn check_size(&self, name: &str) -> Result<()> {
        let info = self.info(name)?;
        let dtype = info.ggml_dtype;
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let bytes = elems
            .filter(|e| e % dtype.block_size() as u64 == 0)
            .and_then(|e| (e / dtype.block_size() as u64).checked_mul(dtype.type_size() as u64));
        let file_len = self.file.metadata().map_err(io_err(&self.path))?.len();
        match bytes {
            Some(b) if b <= file_len => Ok(()),
            _ => Err(LlmError::Tensor {
                path: self.path.clone(),
                name: name.into(),
                reason: format!(
                    "shape {:?} of {dtype:?} needs more bytes than the file's {file_len}",
                    info.shape.dims()
                ),
            }),
        }
    }

    /// Read and dequantise one tensor to f32.
    fn tensor(&mut self, name: &str) -> Result<Tensor> {
        let q = self.qtensor(name)?;
        q.dequantize(&Device::Cpu)
            .map_err(|e| self.bad_tensor(name, e))
    }

    fn bad_tensor(&self, name: &str, e: candle_core::Error) -> LlmError {
        LlmError::Tensor {
            path: self.path.clone(),
            name: name.into(),
            reason: e.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All weights, dequantised, under their Hugging Face names.
    pub fn weights(&mut self, cfg: &ModelConfig) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        for name in names {
            let Some(hf) = hf_name(&name) else {
                tracing::debug!("{}: ignoring tensor {name}", self.path.display());
                continue;
            };
            let t = self.tensor(&name)?;
            let t = match rope_heads(cfg, &name) {
                Some(heads) => unpermute(&t, heads)?,
                None => t,
            };
            out.insert(hf, t);
        }
        Ok(out)
    }
}

impl GgufFile {
    /// The block-quantised weights of the projections and the vocabulary head as stored (f32 and f16
    /// tensors are left out: they gain nothing), under their Hugging Face names, with llama's Q/K rows
    /// put back in Hugging Face order (whole rows move; a row's blocks stay as they are).
    pub fn quantized_weights(&mut self, cfg: &ModelConfig) -> Result<HashMap<String, QTensor>> {
        let mut out = HashMap::new();
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        for name in names {
            let Some(hf) = hf_name(&name) else { continue };
            let projection = hf.starts_with("model.layers.") && !hf.contains("layernorm");
            let head = if cfg.tie_word_embeddings {
                hf == "model.embed_tokens.weight"
            } else {
                hf == "lm_head.weight"
            };
            let dtype = self.info(&name)?.ggml_dtype;
            if !(projection || head) || !hf.ends_with(".weight") || dtype.block_size() == 1 {
                continue;
            }
            let q = self.qtensor(&name)?;
            let q = match rope_heads(cfg, &name) {
                Some(heads) => unpermute_rows(&q, heads).map_err(|e| self.bad_tensor(&name, e))?,
                None => q,
            };
            out.insert(hf, q);
        }
        Ok(out)
    }
}

/// [`unpermute`] for a quantised `[rows, k]` tensor: the row order is computed on row indices and
/// each row's bytes are moved whole.
fn unpermute_rows(q: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let (rows, _) = q.shape().dims2()?;
    let index = Tensor::arange(0u32, rows as u32, &Device::Cpu)?.reshape((rows, 1))?;
    let order: Vec<u32> = unpermute(&index, heads)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .flatten_all()?
        .to_vec1()?;
    let data = q.data()?;
    let row_bytes = data.len() / rows;
    let mut moved = Vec::with_capacity(data.len());
    for &r in &order {
        let r = r as usize;
        moved.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
    }
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Owned(moved),
        &Device::Cpu,
        q.dtype(),
    )?;
    QTensor::new(storage, q.shape().clone())
}

/// Map a llama.cpp tensor name to its Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm".to_string(),
        "ffn_norm" => "post_attention_layernorm".to_string(),
        _ => Target::from_gguf(module)?.path(),
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// For a Llama Q or K tensor (weight, bias, or a LoRA's B) under its llama.cpp name, the head count
/// its rows are permuted over; `None` for every tensor llama.cpp stores unpermuted.
pub fn rope_heads(cfg: &ModelConfig, gguf_name: &str) -> Option<usize> {
    if cfg.arch != Arch::Llama {
        return None;
    }
    let module = gguf_name.strip_prefix("blk.")?.split('.').nth(1)?;
    match Target::from_gguf(module)? {
        Target::Q => Some(cfg.num_heads),
        Target::K => Some(cfg.num_kv_heads),
        _ => None,
    }
}

/// llama.cpp's converter permutation of Q/K rows: per head, rows (2, hd/2) are stored as (hd/2, 2), so
/// that its rotary kernel rotates adjacent pairs. Applied to a Hugging Face tensor it gives the GGUF
/// layout; [`unpermute`] inverts it.
pub fn permute(t: &Tensor, heads: usize) -> Result<Tensor> {
    swap_row_axes(t, heads, [2, 0])
}

/// Undo llama.cpp's Q/K row permutation: per head, rows stored as (hd/2, 2) go back to (2, hd/2).
pub fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    swap_row_axes(t, heads, [0, 2])
}

/// View each head's rows of `t` as a `[x, y]` grid, where 0 stands for half the head dimension (`[0, 2]`:
/// `(hd/2, 2)`), transpose the grid and flatten back.
fn swap_row_axes(t: &Tensor, heads: usize, grid: [usize; 2]) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let half = dims[0] / heads / 2;
    let mut shape = vec![heads];
    shape.extend(grid.map(|x| if x == 0 { half } else { x }));
    shape.extend(&dims[1..]);
    let back = t
        .reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(back)
}

#[cfg(test)]
mod tests {

    /// Moving whole rows of quantised blocks gives the blocks of the unpermuted f32 rows.
    #[test]
    fn unpermute_rows_moves_quantised_rows_like_unpermute() {
        use candle_core::quantized::GgmlDType;
        let (heads, hd, k) = (3, 8, 64);
        let t = Tensor::arange(0f32, (heads * hd * k) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, k))
            .unwrap()
            .sin()
            .unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let moved = unpermute_rows(&q, heads)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let want = unpermute(&q.dequantize(&Device::Cpu).unwrap(), heads).unwrap();
        let diff: f32 = (moved - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, hd/2, in).swapaxes(1, 2); check that we invert it.
        let (heads, hd, inp) = (2, 4, 3);
        let w = Tensor::arange(0f32, (heads * hd * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, inp))
            .unwrap();
        let permuted = w
            .reshape((heads, 2, hd / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((heads * hd, inp))
            .unwrap();
        let back = unpermute(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        let again = permute(&w, heads).unwrap();
        assert_eq!(
            again.to_vec2::<f32>().unwrap(),
            permuted.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.3.attn_k.bias").as_deref(),
            Some("model.layers.3.self_attn.k_proj.bias")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
