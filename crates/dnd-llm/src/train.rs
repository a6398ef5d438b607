//! The training path: a causal-LM loss whose gradients reach only the LoRA matrices. The vocabulary
//! projection, the largest matmul in a small model, is computed only at positions that carry a target
//! (e.g. answer tokens in supervised fine-tuning).

use crate::error::{LlmError, Result};
use crate::lora::Lora;
use crate::model::Transformer;
use candle_core::{Device, Tensor};

/// A right-padded batch with the flat positions whose next token is a training target.
pub struct LmBatch {
    /// Token ids `[B, T]`.
    pub ids: Tensor,
    /// Rows of the flattened `[B*T]` positions that predict a target.
    pub positions: Tensor,
    /// The target token at each of those positions.
    pub targets: Tensor,
    /// Number of target tokens (the loss is their mean).
    pub num_targets: usize,
}

impl LmBatch {
    /// From sequences and per-token flags saying which tokens are targets (predicted from the token
    /// before; the first token of a sequence cannot be one). Sequences are right-padded with `pad`.
    pub fn new(seqs: &[(Vec<u32>, Vec<bool>)], pad: u32, device: &Device) -> Result<Self> {
        let width = seqs.iter().map(|s| s.0.len()).max().unwrap_or(0);
        if width == 0 {
            return Err(LlmError::Input("empty training batch".into()));
        }
        let mut ids = Vec::with_capacity(seqs.len() * width);
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        for (i, (seq, is_target)) in seqs.iter().enumerate() {
            if seq.len() != is_target.len() {
                return Err(LlmError::Input(format!(
                    "sequence {i}: {} tokens but {} target flags",
                    seq.len(),
                    is_target.len()
                )));
            }
            for j in 1..seq.len() {
                if is_target[j] {
                    positions.push((i * width + j - 1) as u32);
                    targets.push(seq[j]);
                }
            }
            ids.extend(seq);
            ids.extend(std::iter::repeat_n(pad, width - seq.len()));
        }
        if targets.is_empty() {
            return Err(LlmError::Input("batch has no target tokens".into()));
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (seqs.len(), width), device)?,
            num_targets: targets.len(),
            positions: Tensor::new(positions.as_slice(), device)?,
            targets: Tensor::new(targets.as_slice(), device)?,
        })
    }
}

/// Mean cross-entropy of the batch's targets under `model` with `lora`.
pub fn lm_loss(model: &Transformer, lora: Option<&Lora>, batch: &LmBatch) -> Result<Tensor> {
    let hidden = model.hidden(&batch.ids, lora, None)?;
    let logits = model.logits(&hidden.index_select(&batch.positions, 0)?)?;
    Ok(candle_nn::loss::cross_entropy(&logits, &batch.targets)?)
}
