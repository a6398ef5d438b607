//! GGUF files for llama.cpp: a LoRA adapter file, and a base model with an adapter merged in.

use crate::error::{ExportError, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use dnd_llm::gguf::{permute, rope_heads, GgufFile};
use dnd_llm::{Lora, ModelConfig, Target};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Float type of the tensors dnd writes (quantised tensors of a base that an adapter does not touch
/// are copied block for block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
}

impl Precision {
    fn ggml(self) -> GgmlDType {
        match self {
            Precision::F32 => GgmlDType::F32,
            Precision::F16 => GgmlDType::F16,
        }
    }
}

/// What [`lora_gguf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoraGguf {
    pub architecture: &'static str,
    /// LoRA tensors (an A and a B per adapted module).
    pub tensors: usize,
    /// `adapter.lora.alpha`: llama.cpp scales B A by alpha / r.
    pub alpha: f32,
    /// rsLoRA's scale alpha / sqrt(r) was written as the alpha that gives it under alpha / r.
    pub rslora_folded_into_alpha: bool,
    /// B of Q and K was permuted into llama.cpp's row order (Llama only).
    pub permuted_qk: bool,
    pub precision: Precision,
    pub bytes: u64,
}

/// What [`merge_gguf`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergedGguf {
    pub architecture: &'static str,
    /// Projections with the adapter folded in (stored in `precision`).
    pub merged: usize,
    /// Other quantised tensors dequantised to `precision` (with `dequantize_all`).
    pub dequantized: usize,
    /// Tensors copied as stored.
    pub copied: usize,
    pub precision: Precision,
    pub bytes: u64,
}

/// Write `lora`, an adapter for a base of config `model`, as a llama.cpp LoRA GGUF at `out` (atomically).
/// llama.cpp has one alpha per adapter and scales by alpha / r, so an rsLoRA adapter is written with the
/// alpha that gives its scale; per-module alphas do not exist in a dnd [`Lora`].
pub fn lora_gguf(
    lora: &Lora,
    model: &ModelConfig,
    precision: Precision,
    out: &Path,
) -> Result<LoraGguf> {
    check_fits(lora, model)?;
    let c = lora.config();
    let alpha = (c.scale() * c.rank as f64) as f32;
    // llama.cpp reads alpha 0 as "no scaling" (scale 1), so a zero scale cannot be written as one.
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(ExportError::Inexpressible(format!(
            "scale {} (lora_alpha {}, r {}): llama.cpp needs a finite positive alpha",
            c.scale(),
            c.alpha,
            c.rank
        )));
    }
    let mut tensors = Vec::new();
    for (layer, target, a, b) in lora.modules() {
        let name = module_name(layer, target);
        let b = match rope_heads(model, &name) {
            Some(heads) => permute(b, heads)?,
            None => b.clone(),
        };
        tensors.push((format!("{name}.lora_a"), stored(a, precision)?));
        tensors.push((format!("{name}.lora_b"), stored(&b, precision)?));
    }
    let architecture = model.arch.gguf_name();
    let metadata = [
        ("general.type", Value::String("adapter".into())),
        ("general.architecture", Value::String(architecture.into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(alpha)),
    ];
    let bytes = write(
        out,
        metadata.iter().map(|(k, v)| (*k, v)).collect(),
        &tensors,
    )?;
    Ok(LoraGguf {
        architecture,
        tensors: tensors.len(),
        alpha,
        rslora_folded_into_alpha: c.use_rslora,
        permuted_qk: rope_heads(model, "blk.0.attn_q.weight").is_some(),
        precision,
        bytes,
    })
}

/// Write the GGUF base at `base` to `out` with `lora` (if any) added to its projection weights,
/// `W + scale B A`, those projections stored in `precision`. With `dequantize_all`, every other
/// quantised tensor is stored in `precision` too (a float copy of the base, the weights dnd computes
/// with); otherwise they are copied block for block. Metadata (tokenizer, chat template) is kept.
pub fn merge_gguf(
    base: &Path,
    lora: Option<&Lora>,
    precision: Precision,
    dequantize_all: bool,
    out: &Path,
) -> Result<MergedGguf> {
    let mut file = GgufFile::open(base)?;
    let model = file.config()?;
    if let Some(lora) = lora {
        check_fits(lora, &model)?;
    }
    let mut infos: Vec<(String, u64)> = file
        .content
        .tensor_infos
        .iter()
        .map(|(name, info)| (name.clone(), info.offset))
        .collect();
    infos.sort_by_key(|&(_, offset)| offset);
    let (mut merged, mut dequantized) = (0, 0);
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, _) in infos {
        let q = file.qtensor(&name)?;
        let delta = lora.and_then(|l| lora_module(&name).and_then(|(i, t)| l.get(i, t)));
        let q = if let Some((a, b, scale)) = delta {
            merged += 1;
            merge_one(
                &q,
                a,
                b,
                scale,
                rope_heads(&model, &name),
                precision,
                &name,
                base,
            )?
        } else if dequantize_all && !is_float(q.dtype()) {
            dequantized += 1;
            QTensor::quantize(&q.dequantize(&Device::Cpu)?, precision.ggml())?
        } else {
            q
        };
        tensors.push((name, q));
    }
    let mut keys: Vec<&String> = file.content.metadata.keys().collect();
    keys.sort();
    // dnd writes with GGUF's default 32-byte alignment; a different recorded one would misplace tensors.
    let metadata = keys
        .into_iter()
        .filter(|k| k.as_str() != "general.alignment")
        .map(|k| (k.as_str(), &file.content.metadata[k]))
        .collect();
    let copied = tensors.len() - merged - dequantized;
    let bytes = write(out, metadata, &tensors)?;
    Ok(MergedGguf {
        architecture: model.arch.gguf_name(),
        merged,
        dequantized,
        copied,
        precision,
        bytes,
    })
}

/// `blk.N.<module>.weight` of a projection.
fn module_name(layer: usize, target: Target) -> String {
    format!("blk.{layer}.{}.weight", target.gguf())
}

/// The (layer, target) a base tensor name is the weight of, if it is a projection weight.
fn lora_module(name: &str) -> Option<(usize, Target)> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (layer, module) = rest.split_once('.')?;
    Some((layer.parse().ok()?, Target::from_gguf(module)?))
}

/// `W + scale B A` in the GGUF's row order, stored in `precision`.
#[allow(clippy::too_many_arguments)]
fn merge_one(
    q: &QTensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    heads: Option<usize>,
    precision: Precision,
    name: &str,
    base: &Path,
) -> Result<QTensor> {
    let w = q.dequantize(&Device::Cpu)?;
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let b = match heads {
        Some(h) => permute(&b, h)?,
        None => b,
    };
    let delta = (b.matmul(&a)? * scale)?;
    if delta.dims() != w.dims() {
        return Err(ExportError::Base {
            path: base.into(),
            reason: format!(
                "tensor `{name}` is {:?} but the adapter's update is {:?}",
                w.dims(),
                delta.dims()
            ),
        });
    }
    Ok(QTensor::quantize(&(w + delta)?, precision.ggml())?)
}

fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Every module of `lora` has the shapes `model` gives it (an adapter for another base is refused
/// before anything is written).
fn check_fits(lora: &Lora, model: &ModelConfig) -> Result<()> {
    let mismatch = |reason: String| {
        ExportError::Inexpressible(format!("the adapter does not fit the base model: {reason}"))
    };
    if lora.num_layers() != model.num_layers {
        return Err(mismatch(format!(
            "{} layers, the base has {}",
            lora.num_layers(),
            model.num_layers
        )));
    }
    let r = lora.config().rank;
    for (layer, target, a, b) in lora.modules() {
        let (i, o) = model.module_shape(target);
        if a.dims() != [r, i] || b.dims() != [o, r] {
            return Err(mismatch(format!(
                "layer {layer} {}: A {:?} / B {:?}, the base needs A [{r}, {i}] / B [{o}, {r}]",
                target.module(),
                a.dims(),
                b.dims()
            )));
        }
    }
    Ok(())
}

fn stored(t: &Tensor, precision: Precision) -> Result<QTensor> {
    Ok(QTensor::quantize(
        &t.to_dtype(DType::F32)?.contiguous()?,
        precision.ggml(),
    )?)
}

/// Write a GGUF atomically (temporary name, then rename) and return its size.
fn write(out: &Path, metadata: Vec<(&str, &Value)>, tensors: &[(String, QTensor)]) -> Result<u64> {
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    dnd_io::write_atomic_with(out, |tmp| {
        let failed = |reason: String| ExportError::Write {
            path: out.into(),
            reason,
        };
        let file = std::fs::File::create(tmp).map_err(dnd_io::io_err::<ExportError>(tmp))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        gguf_file::write(&mut w, &metadata, &tensors).map_err(|e| failed(e.to_string()))?;
        w.flush().map_err(|e| failed(e.to_string()))
    })?;
    Ok(std::fs::metadata(out)
        .map_err(dnd_io::io_err::<ExportError>(out))?
        .len())
}
