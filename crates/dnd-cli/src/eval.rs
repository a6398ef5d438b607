//! `dnd eval`: score the base model and any adapters on benchmark tasks (dnd_evaluate), resumable
//! per (adapter, task); or export the exact scoring requests for a cross-check with lm-eval.

use crate::common::{load_adapter, write_atomic, ModelArg};
use anyhow::{bail, Context, Result};
use dnd_evaluate::report::{style_name, RunResult, Settings, Store};
use dnd_evaluate::{evaluate, primary_metric, select_examples, EvalConfig, LlmBackend, Protocol};
use dnd_llm::score::encode_pair;
use dnd_llm::Llm;
use dnd_tasks::{find_task, Body, Example, Part, PromptStyle, SplitConfig, Task};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated built-in task names (arc_easy, arc_challenge, boolq, hellaswag, openbookqa,
    /// piqa, winogrande, siqa, copa, commonsense_qa, gsm8k, humaneval).
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// The split part to score: test, validation, prompts or adapter-train.
    #[arg(long, default_value = "test")]
    split: String,
    /// PEFT adapter directory to score (repeatable); rows are labelled by directory name.
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// Do not score the base model.
    #[arg(long)]
    no_base: bool,
    /// Score only the first N examples of the split, in split order.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value = "plain")]
    style: Style,
    /// How multiple choice is scored: lm-eval log-likelihood, or the paper's generate-and-parse
    /// (reported separately).
    #[arg(long, value_enum, default_value = "loglikelihood")]
    protocol: ProtocolArg,
    /// Generation budget for GSM8K and HumanEval.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Seconds one HumanEval program may run.
    #[arg(long, default_value_t = 10.0)]
    code_timeout: f64,
    /// Python interpreter for HumanEval programs.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Data root.
    #[arg(long, env = "DND_DATA", default_value = dnd_tasks::DEFAULT_DATA_DIR)]
    data: PathBuf,
    /// Output directory: runs/<adapter>/<task>.json, results.json, results.md.
    #[arg(long, required_unless_present = "export_requests")]
    out: Option<PathBuf>,
    /// Instead of scoring, write every log-likelihood request (rendered context, continuation)
    /// of the selected examples to this JSONL file, for scripts/reference/lm_eval_parity.py.
    #[arg(long)]
    export_requests: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum Style {
    /// lm-eval's default text prompts.
    Plain,
    /// One user message through the model's chat template (lm-eval --apply_chat_template).
    Chat,
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum ProtocolArg {
    Loglikelihood,
    Generative,
}

pub fn run(a: Args) -> Result<()> {
    let part = Part::ALL
        .into_iter()
        .find(|p| p.name() == a.split)
        .with_context(|| format!("unknown split `{}`", a.split))?;
    let split_cfg = SplitConfig::default();
    let mut sets: Vec<(Task, Vec<Example>)> = Vec::new();
    for name in &a.tasks {
        let task = find_task(name)?;
        let examples = select_examples(&task, &a.data, part, a.limit, &split_cfg)
            .with_context(|| format!("loading {name} from {}", a.data.display()))?;
        if examples.is_empty() {
            bail!("{name}: the {} split is empty", a.split);
        }
        sets.push((task, examples));
    }
    let style = match a.style {
        Style::Plain => PromptStyle::Plain,
        Style::Chat => PromptStyle::Chat,
    };
    let model_path = a.model.path()?;
    let llm = a.model.load()?;
    if let Some(file) = &a.export_requests {
        return export(&llm, &sets, style, file);
    }
    let out = a.out.clone().expect("clap requires --out");
    let cfg = EvalConfig {
        style,
        protocol: match a.protocol {
            ProtocolArg::Loglikelihood => Protocol::Loglikelihood,
            ProtocolArg::Generative => Protocol::Generative,
        },
        max_new_tokens: a.max_new_tokens,
        python: a.python.clone(),
        code_timeout: Duration::from_secs_f64(a.code_timeout),
    };
    let store = Store::new(&out);
    let command: Vec<String> = std::env::args().collect();
    let git_rev = git_revision();
    let mut combos: Vec<(String, Option<&Path>)> = Vec::new();
    if !a.no_base {
        combos.push(("base".into(), None));
    }
    for (label, dir) in adapter_labels(&a.adapter).into_iter().zip(&a.adapter) {
        combos.push((label, Some(dir.as_path())));
    }
    let mut runs = Vec::new();
    for (label, adapter) in combos {
        let sha = adapter.map(adapter_sha256).transpose()?.flatten();
        let mut merged = None;
        for (task, examples) in &sets {
            let settings = Settings {
                model: model_path.display().to_string(),
                adapter: adapter.map(|d| d.display().to_string()),
                adapter_sha256: sha.clone(),
                task: task.name.clone(),
                split: a.split.clone(),
                style: style_name(style).into(),
                protocol: cfg.protocol,
                limit: a.limit,
                n: examples.len(),
                max_new_tokens: a.max_new_tokens,
                code_timeout_s: a.code_timeout,
                data: a.data.display().to_string(),
                split_seed: split_cfg.seed,
            };
            if let Some(done) = store.load(&label, &settings) {
                tracing::info!("{label}/{}: already scored, kept", task.name);
                runs.push(done);
                continue;
            }
            let model = match adapter {
                None => &llm.model,
                Some(dir) => {
                    if merged.is_none() {
                        merged = Some(llm.model.merged(&load_adapter(&llm, dir)?)?);
                    }
                    merged.as_ref().expect("just merged")
                }
            };
            let lm = LlmBackend::new(model, &llm.tokenizer);
            let bar = indicatif::ProgressBar::new(examples.len() as u64)
                .with_message(format!("{label}/{}", task.name));
            bar.set_style(indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )?);
            let eval = evaluate(&lm, task, examples, &cfg, &mut |i| {
                bar.set_position(i as u64)
            })
            .with_context(|| format!("evaluating {label} on {}", task.name))?;
            bar.finish_and_clear();
            let primary = primary_metric(task, cfg.protocol);
            let run = RunResult::new(
                &label,
                settings,
                primary,
                eval,
                git_rev.clone(),
                command.clone(),
            );
            let m = &run.metrics[primary];
            tracing::info!(
                "{label}/{}: {primary} {:.2} ± {:.2} (n={}) in {:.0} s",
                task.name,
                100.0 * m.value,
                100.0 * m.stderr,
                m.n,
                run.wall_s
            );
            store.save(&run)?;
            runs.push(run);
            store.write_summary(&runs, &command)?;
        }
    }
    store.write_summary(&runs, &command)?;
    print!("{}", dnd_evaluate::report::markdown(&runs));
    println!("results written to {}", out.display());
    Ok(())
}

/// Row labels: each adapter's directory name, or its whole path when names collide.
fn adapter_labels(dirs: &[PathBuf]) -> Vec<String> {
    let name = |d: &PathBuf| {
        d.file_name()
            .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into())
    };
    let names: Vec<String> = dirs.iter().map(name).collect();
    let unique = names
        .iter()
        .enumerate()
        .all(|(i, n)| n != "base" && !names[..i].contains(n));
    if unique {
        return names;
    }
    dirs.iter()
        .map(|d| {
            d.display()
                .to_string()
                .trim_matches('/')
                .replace(['/', '\\'], "_")
        })
        .collect()
}

/// Hash of `adapter_model.safetensors` when present, so resuming notices a rewritten adapter.
fn adapter_sha256(dir: &Path) -> Result<Option<String>> {
    let file = dir.join("adapter_model.safetensors");
    if !file.is_file() {
        return Ok(None);
    }
    Ok(Some(dnd_assets::sha256_file(&file)?))
}

/// `git rev-parse HEAD`, with `-dirty` when tracked files differ from it; `None` outside a repo.
fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// One JSON line per log-likelihood request: the rendered context string and continuation exactly
/// as dnd scores them, dnd's token ids for them, and what is needed to recompute acc and acc_norm.
fn export(llm: &Llm, sets: &[(Task, Vec<Example>)], style: PromptStyle, file: &Path) -> Result<()> {
    let lm = LlmBackend::new(&llm.model, &llm.tokenizer);
    let mut lines = Vec::new();
    for (task, examples) in sets {
        for (i, ex) in examples.iter().enumerate() {
            let (gold, chars): (usize, Vec<Option<usize>>) = match &ex.body {
                Body::MultipleChoice { choices, gold, .. } => (
                    *gold,
                    choices.iter().map(|c| Some(c.chars().count())).collect(),
                ),
                Body::Schema { contexts, gold, .. } => (*gold, vec![None; contexts.len()]),
                _ => bail!("{}: {} is not scored by log-likelihood", task.name, ex.id),
            };
            for (option, (req, chars)) in ex.requests(style).iter().zip(chars).enumerate() {
                let context = lm.render(&req.context)?;
                let (ctx_ids, cont_ids) = encode_pair(&llm.tokenizer, &context, &req.continuation)?;
                lines.push(serde_json::json!({
                    "task": task.name, "id": ex.id, "example": i, "option": option, "gold": gold,
                    "context": context, "continuation": req.continuation, "choice_chars": chars,
                    "context_ids": ctx_ids, "continuation_ids": cont_ids,
                }).to_string());
            }
        }
    }
    write_atomic(file, &(lines.join("\n") + "\n"))?;
    println!("{} requests written to {}", lines.len(), file.display());
    Ok(())
}
