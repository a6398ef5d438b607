//! `dnd bench llm`.

use super::ScriptsArg;
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
    /// Python with torch/transformers/peft for the reference (see scripts/reference/README.md).
    /// Without it only dnd is measured.
    #[arg(long, env = "DND_REF_PYTHON")]
    python: Option<PathBuf>,
    #[command(flatten)]
    scripts: ScriptsArg,
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
        reference: a.scripts.reference(a.python.as_ref()),
    })?;
    super::write_and_print(&a.out, &record, &record.table())
}
