//! LoRA fine-tuning of the frozen base model, and the checkpoint collections DnD's generator learns
//! from (docs/method.md step 1).
//!
//! - [`finetune`]: one adapter for one task, or for the union of several (`dnd finetune`).
//! - [`collect`]: per task, a first phase of training, then a checkpoint at every step, all tasks from
//!   the same seeded LoRA initialisation (`dnd collect`). Killed at any point, a rerun continues from
//!   the last finished step and ends with the same bytes as an uninterrupted run.
//!
//! Training sequences are the evaluator's own tokenisation of (context, gold answer), with the loss on
//! the answer tokens only. Collections live outside the repository, under
//! `$DND_CACHE/collections/<name>` by default ([`default_collection_dir`]):
//!
//! ```text
//! <collection>/collection.json              tasks, settings, wall times
//! <collection>/<task>/manifest.json         base model sha256, LoRA and training settings, data, loss per step
//! <collection>/<task>/loss.png
//! <collection>/<task>/checkpoints/step-NNNN/ PEFT adapters (adapter_config.json, adapter_model.safetensors)
//! <collection>/<task>/spread.json          mean element-wise spread of A and B across the checkpoints
//! <collection>/<task>/heldout.json           held-out answer-token loss, base model vs last checkpoint
//! <collection>/<task>/run-state.safetensors  only while unfinished: what a rerun resumes from
//! <collection>/units/<task>.json             a unit's index entry, when collected as a job unit
//! ```
//!
//! [`collect_unit`] collects one task of a plan as an independent job (a Slurm array element) and
//! [`merge_units`] builds `collection.json` once every unit is done.

mod collection;
mod data;
mod defaults;
mod error;
mod hash;
mod heldout;
mod plot;
mod run;
mod stats;
mod trainer;

pub use collection::{
    collect, collect_unit, finetune, merge_units, prepare_task, prepare_tasks, task_checkpoints,
    union_name, CollectPlan, CollectionIndex, Event, TaskEntry, TaskSequences, INDEX_FILE,
    UNITS_DIR,
};
pub use data::{batch_indices, encode, lm_micro_batches, micro_batches, EncodeStats, Sequence};
pub use defaults::{default_collection_dir, CollectDefaults, DEFAULT_SEED};
pub use error::{CollectError, Result};
pub use hash::model_sha256;
pub use heldout::{Heldout, HELDOUT_FILE, HELDOUT_ITEMS};
pub use plot::loss_png;
pub use run::{
    run, BaseModel, DataInfo, Manifest, RunOptions, RunOutcome, RunSpec, Saves, Session, Storage,
    CHECKPOINTS_DIR, RUN_LOSS_PNG, RUN_MANIFEST_FILE, STATE_FILE,
};
pub use stats::{checkpoint_std, mean_spread, task_spread, Spread, SPREAD_FILE, STD_FILE};
pub use trainer::{LoraTrainConfig, StepRecord, Trainer};
