//! Defaults sized for the project's machines (2 shared cores, no GPU) and why.
//!
//! The paper's schedule (batch 32, ~75 steps, then 50 saved steps, lr 1e-4) is ~4000 sequences per task:
//! far more than the eight common-sense tasks can train on within an hour on a busy 2-core machine (the
//! throughput and token counts behind that budget: results/collect/README.md, "How the defaults were
//! sized"). So a collection keeps the paper's shape at 2/5 of its length and 1/8 of its batch: 30 steps,
//! then 20 saved steps (the paper's 3:2 ratio), batch 4. With 8x fewer sequences per step and 2.5x fewer
//! steps, the paper's lr 1e-4 would leave the adapters near their shared initialisation, so the peak is
//! 1e-3 (5 warm-up steps, then a cosine to 10% so the saved steps still move).

use crate::trainer::LoraTrainConfig;
use std::path::PathBuf;

/// The seed of every collection's LoRA initialisation and data order: one value for all tasks, so
/// their checkpoints share one starting point.
pub const DEFAULT_SEED: u64 = 42;

/// `$DND_CACHE/collections/<name>` (`~/.cache/dnd/...` by default): collections are large and never
/// belong in the repository.
pub fn default_collection_dir(name: &str) -> PathBuf {
    dnd_assets::cache_root().join("collections").join(name)
}

/// Schedules for `dnd collect` and `dnd finetune`.
pub struct CollectDefaults;

impl CollectDefaults {
    /// Updates before the first saved checkpoint.
    pub const FIRST_PHASE: usize = 30;
    /// Saved updates after it.
    pub const CHECKPOINTS: usize = 20;

    /// A collection task (see the module documentation for the numbers).
    pub fn collection() -> LoraTrainConfig {
        LoraTrainConfig {
            rank: 8,
            alpha: 16.0,
            targets: dnd_llm::Target::ALL
                .iter()
                .map(|t| t.module().to_string())
                .collect(),
            seed: DEFAULT_SEED,
            lr: 1e-3,
            warmup_steps: 5,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            batch: 4,
            micro_batch_tokens: 512,
            max_len: 128,
            steps: Self::FIRST_PHASE + Self::CHECKPOINTS,
        }
    }
}
