//! Benchmark evaluation for `dnd`: score a base model (with or without a merged LoRA adapter) on a
//! task's examples the way lm-evaluation-harness does, and keep per-example records so that two
//! models can later be compared item by item.
//!
//! - multiple choice and schema items: log-likelihood of every option ([`evaluate`] with
//!   [`Protocol::Loglikelihood`]), lm-eval's `acc` / `acc_norm`;
//! - the paper's protocol as an extra: generate an answer letter and parse it
//!   ([`Protocol::Generative`], metric `gen_acc`, see [`choice`]);
//! - GSM8K: greedy generation with the template's stop strings, strict and flexible exact match;
//! - HumanEval: greedy completion run against its tests in a subprocess ([`code`]), pass@1.
//!
//! The model sits behind [`LanguageModel`], so the evaluation logic is tested with scripted
//! log-likelihoods; [`LlmBackend`] is the real one over `dnd_llm`.
//!
//! ```no_run
//! use dnd_evaluate::{evaluate, EvalConfig, LlmBackend};
//! let llm = dnd_llm::Llm::load("model.gguf".as_ref(), candle_core::DType::F32)?;
//! let task = dnd_tasks::find_task("arc_easy")?;
//! let splits = task.splits("../shared/data".as_ref(), &Default::default())?;
//! let lm = LlmBackend::new(&llm.model, &llm.tokenizer);
//! let eval = evaluate(&lm, &task, &splits.test[..100], &EvalConfig::default(), &mut |_| {})?;
//! println!("acc_norm {:?}", eval.metrics["acc_norm"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backend;
pub mod choice;
pub mod code;
mod evaluate;
pub mod report;
mod scoring;

pub use backend::{truncate_at_stop, GenRequest, Generation, LanguageModel, LlmBackend, Scored};
pub use evaluate::{
    evaluate, primary_metric, select_examples, EvalConfig, Evaluation, MetricValue, Protocol,
    Record,
};
pub use scoring::{adapter_sha256, git_revision, score, stored_run, ScoreEvent, ScoreSpec};

/// Why an evaluation could not run. A wrong answer or a failing program is a score, not an error.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Tasks(#[from] dnd_tasks::Error),
    #[error(transparent)]
    Tokenizer(#[from] dnd_llm::tokenizer::TokenizerError),
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;

/// Shorthand for an I/O error on a path.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    dnd_io::io_err(path)
}
