//! `dnd bench llm`.

use super::ReferenceArgs;
use crate::common::ModelArg;
use anyhow::Result;
use dnd_bench::llm::LlmBenchConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed steps per measurement (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Result file (JSON); a Markdown table goes to stdout.
    #[arg(long, default_value = "results/bench/llm.json")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let record = dnd_bench::llm::run(&LlmBenchConfig {
        model: a.model.path()?,
        batch: a.batch,
        seq: a.seq,
        steps: a.steps,
        reference: a.reference.reference(),
    })?;
    super::write_and_print(&a.out, &record, &record.table())
}
