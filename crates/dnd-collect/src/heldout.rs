//! Whether a task's LoRA learned: the answer-token loss of held-out items (the task's validation part)
//! under the base model and under the run's last checkpoint, item by item.

use crate::data::{encode, Sequence};
use crate::error::{io_err, Result};
use candle_core::Device;
use dnd_llm::train::LmBatch;
use dnd_llm::{Lora, Tokenizer, Transformer};
use dnd_tasks::{SplitConfig, Task};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `heldout.json` in a task's directory: computed once, when the run is first found finished.
pub const HELDOUT_FILE: &str = "heldout.json";

/// Held-out items per task: enough for a paired stderr of a few percent of the loss, and a
/// fraction of a collection run's time.
pub const HELDOUT_ITEMS: usize = 64;

/// The held-out answer-token loss of a task's base model and LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heldout {
    /// Validation items scored (at most [`HELDOUT_ITEMS`], in split order).
    pub items: usize,
    /// Mean per-item answer-token loss without and with the LoRA.
    pub base_loss: f64,
    pub lora_loss: f64,
    /// Standard error of the mean per-item difference (LoRA - base).
    pub paired_stderr: f64,
}

impl Heldout {
    /// Learned: the LoRA's loss is lower than the base model's by more than two paired stderrs.
    pub fn learned(&self) -> bool {
        self.base_loss - self.lora_loss > 2.0 * self.paired_stderr
    }
}

/// The held-out losses of `task` (cached in `dir`), the LoRA being the checkpoint `checkpoint`
/// (loaded only when they are computed: a resumed collection reads the cache).
pub fn heldout(
    model: &Transformer,
    tok: &Tokenizer,
    task: &Task,
    checkpoint: &Path,
    (root, split, max_len): (&Path, &SplitConfig, usize),
    dir: &Path,
) -> Result<Option<Heldout>> {
    let path = dir.join(HELDOUT_FILE);
    if let Ok(h) = dnd_io::read_json::<Heldout, crate::CollectError>(&path) {
        return Ok(Some(h));
    }
    let pairs: Vec<(String, String)> = task
        .splits(root, split)?
        .validation
        .iter()
        .take(HELDOUT_ITEMS)
        .map(|e| e.training_pair())
        .collect();
    if pairs.is_empty() {
        return Ok(None);
    }
    let (mut seqs, _) = encode(tok, &task.name, &pairs, max_len)?;
    // An item whose answer starts the sequence has no predicted answer token to score.
    seqs.retain(|s| s.target_flags().iter().skip(1).any(|&f| f));
    if seqs.is_empty() {
        return Ok(None);
    }
    let lora = dnd_llm::peft::load(checkpoint, model.config(), model.dtype())?;
    let base = item_losses(model, None, &seqs)?;
    let tuned = item_losses(model, Some(&lora), &seqs)?;
    let n = seqs.len() as f64;
    let diffs: Vec<f64> = tuned.iter().zip(&base).map(|(t, b)| t - b).collect();
    let mean_diff = diffs.iter().sum::<f64>() / n;
    let var = diffs.iter().map(|d| (d - mean_diff).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let h = Heldout {
        items: seqs.len(),
        base_loss: base.iter().sum::<f64>() / n,
        lora_loss: tuned.iter().sum::<f64>() / n,
        paired_stderr: (var / n).sqrt(),
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    dnd_io::write_json::<_, crate::CollectError>(&path, &h)?;
    // What a later invocation reads (JSON keeps f64 to within its last digit): indexes agree.
    Ok(Some(dnd_io::read_json::<_, crate::CollectError>(&path)?))
}

/// Sequences per forward pass of [`item_losses`].
const ITEMS_PER_PASS: usize = 8;

/// Each sequence's mean answer-token loss, [`ITEMS_PER_PASS`] sequences per forward pass.
fn item_losses(model: &Transformer, lora: Option<&Lora>, seqs: &[Sequence]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(ITEMS_PER_PASS) {
        let rows: Vec<(Vec<u32>, Vec<bool>)> = chunk
            .iter()
            .map(|s| (s.ids.clone(), s.target_flags()))
            .collect();
        let lm = LmBatch::new(&rows, 0, &Device::Cpu)?;
        let hidden = model.hidden(&lm.ids, lora, None)?;
        let logits = model.logits(&hidden.index_select(&lm.positions, 0)?)?;
        let picked = logits.gather(&lm.targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        let nll: Vec<f32> = (logits.log_sum_exp(1)? - picked)?.to_vec1()?;
        // Positions come sequence by sequence, each sequence's targets in order.
        let mut at = 0;
        for (_, flags) in &rows {
            let n = flags.iter().skip(1).filter(|&&f| f).count();
            out.push(nll[at..at + n].iter().map(|&x| x as f64).sum::<f64>() / n as f64);
            at += n;
        }
    }
    Ok(out)
}
