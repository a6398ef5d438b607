//! `dnd bench finetune`.

use super::ReferenceArgs;
use crate::common::ModelArg;
use anyhow::Result;
use dnd_bench::finetune::FinetuneBenchConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Tokens at the end of each row that carry the loss (0: every token, as in pre-training).
    #[arg(long, default_value_t = 8)]
    answer_tokens: usize,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Rounds of (dnd, then each PyTorch mode), each with --steps timed steps: the load on a shared
    /// machine drifts, so ratios are taken per round and the median is reported.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Result file (JSON); a Markdown table goes to stdout.
    #[arg(long, default_value = "results/finetune/throughput.json")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let record = dnd_bench::finetune::run(&FinetuneBenchConfig {
        model: a.model.path()?,
        batch: a.batch,
        seq: a.seq,
        answer_tokens: a.answer_tokens,
        rank: a.rank,
        alpha: a.alpha,
        steps: a.steps,
        rounds: a.rounds,
        reference: a.reference.reference(),
    })?;
    super::write_and_print(&a.out, &record, &record.table())
}
