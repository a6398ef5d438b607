//! `dnd bench ...`: throughput measured side by side with the reference implementation in the same run,
//! reported as ratios (absolute times on these shared machines are noisy and not comparable across
//! runs). The measuring is dnd-bench's; this module turns arguments into its configs, writes the
//! records and prints their tables.

mod finetune;
mod generate;
mod llm;

use anyhow::Result;
use dnd_bench::Reference;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Base-LLM forward and LoRA-training tokens/s against PyTorch (+PEFT) on the same model.
    Llm(llm::Args),
    /// LoRA fine-tuning throughput of dnd's trainer against PyTorch+PEFT on the same batch.
    Finetune(finetune::Args),
    /// Generation latency (prompts -> adapter on disk) against the official PyTorch decoder, and
    /// decoder training steps/s.
    Generate(generate::Args),
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Llm(a) => llm::run(a),
        Bench::Finetune(a) => finetune::run(a),
        Bench::Generate(a) => generate::run(a),
    }
}

/// `--scripts`: where the Python reference scripts are. Looked up at run time, relative to the
/// current directory (the repository root, where the README runs every command), so that the binary
/// does not depend on the path of the checkout it was built in.
#[derive(clap::Args)]
pub struct ReferenceArgs {
    /// Python of the reference virtualenv (torch, transformers, peft, sentence-transformers: see
    /// scripts/reference/README.md); without it only dnd is measured.
    #[arg(long, env = "DND_REF_PYTHON")]
    python: Option<PathBuf>,
    /// Directory of the reference scripts (`scripts/reference` of a checkout).
    #[arg(
        long,
        env = "DND_REFERENCE_SCRIPTS",
        default_value = "scripts/reference"
    )]
    scripts: PathBuf,
}

impl ReferenceArgs {
    /// The reference side, if a Python was given.
    fn reference(&self) -> Option<Reference> {
        self.python.as_ref().map(|python| Reference {
            python: python.clone(),
            scripts: self.scripts.clone(),
        })
    }
}

/// Write `record` to `out` (keys sorted, as the committed results are), then print its table.
fn write_and_print(out: &Path, record: &impl Serialize, table: &str) -> Result<()> {
    dnd_io::write_json::<_, dnd_io::PathIoError>(out, &dnd_bench::sorted_json(record))?;
    print!("{table}");
    println!("results written to {}", out.display());
    Ok(())
}
