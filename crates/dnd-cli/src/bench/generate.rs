//! `dnd bench generate`.

use super::ReferenceArgs;
use crate::common::ModelArg;
use anyhow::{bail, Result};
use dnd_bench::generate::{GenerateBenchConfig, OfficialReference};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Generator directory (`dnd train`). Without it, an untrained CPU-default generator for --model is
    /// built in a temporary directory: latency does not depend on the weights.
    #[arg(long)]
    generator: Option<PathBuf>,
    /// Base model of the untrained generator (ignored with --generator).
    #[command(flatten)]
    model: ModelArg,
    /// Task whose `prompts` split supplies the N prompts (its first N).
    #[arg(long, default_value = "arc_easy")]
    task: String,
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Timed repetitions of each measurement (after one warm-up); medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Timed decoder training steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    #[command(flatten)]
    reference: ReferenceArgs,
    /// Checkout of github.com/jerryliang24/Drag-and-Drop-LLMs (outside this repository), whose
    /// `HyperConvDecoder` the reference imports. Needed with --python.
    #[arg(long, env = "DND_OFFICIAL_SRC")]
    official_src: Option<PathBuf>,
    /// Result file (JSON); a Markdown table goes to stdout.
    #[arg(long, default_value = "results/bench/generate.json")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let official = match (a.reference.reference(), &a.official_src) {
        (Some(reference), Some(src)) => Some(OfficialReference {
            reference,
            source: src.clone(),
        }),
        (Some(_), None) => bail!("--python needs --official-src (a checkout of the official code)"),
        _ => None,
    };
    // A trained generator's adapters are for the base model its info names (a path or asset name).
    let base_model = match &a.generator {
        Some(dir) => ModelArg {
            model: dnd_generate::read_info(dir)?.base_model,
        },
        None => a.model.clone(),
    };
    let record = dnd_bench::generate::run(&GenerateBenchConfig {
        generator: a.generator,
        base_model: base_model.path()?,
        task: a.task,
        data: a.data,
        repeats: a.repeats,
        train_steps: a.train_steps,
        official,
        dnd_exe: std::env::current_exe()?,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })?;
    super::write_and_print(&a.out, &record, &record.table())
}
