//! `dnd generate`: prompts in, LoRA adapter(s) out, with one decoder forward per adapter.

use anyhow::{bail, Context, Result};
use dnd_encode::{Encoder, EncoderConfig};
use dnd_generate::{draw_batches, DragAndDrop, Generator};
use dnd_llm::ModelConfig;
use dnd_tasks::Part;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Generator directory written by `dnd train`.
    #[arg(long)]
    generator: PathBuf,
    /// Unlabeled prompts: JSONL (strings or objects with prompt/text/question/instruction) or plain
    /// text, one prompt per line.
    #[arg(long, conflicts_with_all = ["task", "description"])]
    prompts: Option<PathBuf>,
    /// Draw the prompts from a task's split instead: built in or from --task-file.
    #[arg(long, conflicts_with = "description")]
    task: Option<String>,
    /// A task file (TOML or JSON, README "Task files") defining --task; repeatable.
    #[arg(long, requires = "task")]
    task_file: Vec<PathBuf>,
    #[arg(long, default_value = "prompts", requires = "task")]
    split: String,
    /// A single task description used as the whole prompt set.
    #[arg(long)]
    description: Option<String>,
    /// Output: an adapter directory; with --count K > 1, DIR/adapter-0 .. adapter-(K-1).
    #[arg(long)]
    out: PathBuf,
    /// What each adapter directory holds: PEFT files, `adapter.gguf` for llama.cpp, or both.
    #[arg(long, value_enum, default_value = "peft")]
    format: AdapterFormat,
    /// Adapters to generate, each from a different prompt batch.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Seed of the prompt draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Base model (path or asset name) the adapters are for; default: the one the generator records.
    #[arg(long)]
    model: Option<String>,
    /// Refuse a generator that does not emit adapters of this rank.
    #[arg(long)]
    rank: Option<usize>,
    /// Multiply the generator's predicted departure from the mean training checkpoint by this (1: as
    /// trained; 0: the mean checkpoint; above 1 extrapolates away from it).
    #[arg(long, default_value_t = 1.0)]
    offset_scale: f64,
    /// Data root (for --task).
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    data: PathBuf,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let prompts = read_prompts(&a)?;
    let t0 = Instant::now();
    let info = dnd_generate::read_info(&a.generator)?;
    let model_path = crate::common::ModelArg {
        model: a.model.clone().unwrap_or(info.base_model.clone()),
    }
    .path()?;
    let model = ModelConfig::from_path(&model_path)?;
    let gen = Generator::load(&a.generator, &model, a.rank)?.with_offset_scale(a.offset_scale);
    let enc = Encoder::minilm(EncoderConfig {
        max_len: gen.info().encoder_max_len,
        ..EncoderConfig::default()
    })?;
    let dnd = DragAndDrop::new(gen, enc, &model_path.display().to_string(), &a.generator)?;
    let loaded = t0.elapsed().as_secs_f64();
    let n = dnd.generator().prompts_per_batch();
    let batches = draw_batches(prompts.len(), n, a.count, a.seed)?;
    let mut latencies = Vec::new();
    for (k, batch) in batches.iter().enumerate() {
        let texts: Vec<&str> = batch.iter().map(|&i| prompts[i].as_str()).collect();
        let dir = if a.count == 1 {
            a.out.clone()
        } else {
            std::fs::create_dir_all(&a.out)
                .with_context(|| format!("creating {}", a.out.display()))?;
            a.out.join(format!("adapter-{k}"))
        };
        latencies.push(match a.format {
            AdapterFormat::Peft => dnd.write(&texts, &dir)?,
            format => write_gguf(&dnd, &texts, &dir, &model, format)?,
        });
    }
    let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
    let report = serde_json::json!({
        "generator": a.generator.display().to_string(),
        "base_model": model_path.display().to_string(),
        "prompts_available": prompts.len(),
        "prompts_per_adapter": n,
        "count": a.count,
        "seed": a.seed,
        "load_s": loaded,
        "per_adapter_s": latencies,
        "first_adapter_with_load_s": loaded + latencies[0],
    });
    dnd_io::write_atomic(
        &a.out.join("generation.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "{} adapter(s) in {}: {mean:.2} s each (encode + decode + write), {loaded:.2} s to load",
        a.count,
        a.out.display()
    );
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq)]
enum AdapterFormat {
    Peft,
    Gguf,
    Both,
}

/// Generate one adapter into `dir` as `adapter.gguf` (and the PEFT files with `Both`); the seconds
/// it took.
fn write_gguf<E: dnd_encode::PromptEncoder>(
    dnd: &DragAndDrop<E>,
    texts: &[&str],
    dir: &Path,
    model: &ModelConfig,
    format: AdapterFormat,
) -> Result<f64> {
    let t = Instant::now();
    let lora = dnd.generate(texts)?;
    if format == AdapterFormat::Both {
        dnd_generate::save_adapter(&lora, dnd.base_model(), dir, &[])?;
    }
    let gguf = dir.join("adapter.gguf");
    crate::export::lora_gguf(&lora, model, crate::export::PrecisionArg::F32, &gguf)?;
    Ok(t.elapsed().as_secs_f64())
}

/// The prompt set from whichever source was given; an empty set is an error.
fn read_prompts(a: &GenerateArgs) -> Result<Vec<String>> {
    let prompts = if let Some(p) = &a.prompts {
        read_prompt_file(p)?
    } else if let Some(t) = &a.task {
        let part = Part::ALL
            .into_iter()
            .find(|p| p.name() == a.split)
            .with_context(|| format!("unknown split `{}`", a.split))?;
        dnd_tasks::Catalog::new(&a.task_file)?
            .get(t)?
            .prompts(&a.data, part)?
    } else if let Some(d) = &a.description {
        vec![d.clone()]
    } else {
        bail!("give the prompts: --prompts FILE, --task NAME or --description TEXT");
    };
    let source = a
        .prompts
        .as_ref()
        .map(|p| p.display().to_string())
        .or(a.task.clone())
        .unwrap_or("--description".into());
    if prompts.iter().all(|p| p.trim().is_empty()) {
        bail!("no prompts in {source}: nothing to condition the generator on");
    }
    Ok(prompts)
}

/// JSONL by extension (`.jsonl`, `.json`), otherwise one prompt per non-blank line.
fn read_prompt_file(path: &Path) -> Result<Vec<String>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "jsonl" | "json") {
        return Ok(dnd_tasks::load_prompts(path)?);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}
