//! The task layer of `dnd`: import every benchmark layout in `../shared/data` into one typed model
//! ([`Example`]), render it with lm-evaluation-harness's prompt templates, cut each task into
//! disjoint seeded parts (adapter-train, prompts, validation, test), and compute lm-eval's metrics
//! with bootstrap standard errors. Model scoring lives elsewhere; it consumes
//! [`Example::requests`] and feeds log-likelihoods back to [`metrics::score_loglikelihoods`].
//!
//! ```no_run
//! use dnd_tasks::{find_task, SplitConfig, DEFAULT_DATA_DIR};
//! let task = find_task("arc_easy")?;
//! let splits = task.splits(DEFAULT_DATA_DIR.as_ref(), &SplitConfig::default())?;
//! println!("{} test items, {} prompts", splits.test.len(), splits.prompts.len());
//! # Ok::<(), dnd_tasks::Error>(())
//! ```

mod adapters;
mod error;
mod example;
mod layouts;
pub mod metrics;
mod read;
mod records;
mod registry;
mod split;
mod taskfile;
mod templates;
mod universe;

pub use error::{Error, Loc, Result};
pub use example::{
    normalise, Body, ChatMessage, Context, Example, PromptStyle, Request, TARGET_DELIMITER,
};
pub use layouts::{import, Layout};
pub use read::load_prompts;
pub use registry::{
    builtin_tasks, find_task, task_prompts, Metric, Source, Task, DEFAULT_DATA_DIR,
};
pub use split::{split, split_hash, Part, Role, Shares, SplitConfig, Splits, DEFAULT_SEED};
pub use taskfile::{read_task_file, suite, to_toml, Catalog, SUITES, UNIVERSE_FILE};
pub use templates::{hellaswag_preprocess, Template};
pub use universe::{scan_universe, BBH_MAX_LABELS, MIN_ITEMS, T0_MAX_LABELS};
