//! `dnd eval`: score the base model and any adapters on benchmark tasks (dnd_evaluate), resumable
//! per (adapter, task); or export the exact scoring requests for a cross-check with lm-eval.

use crate::common::{ModelArg, TaskArgs};
use anyhow::{bail, Context, Result};
use dnd_evaluate::report::Store;
use dnd_evaluate::{
    git_revision, score, select_examples, EvalConfig, LlmBackend, Protocol, ScoreEvent, ScoreSpec,
};
use dnd_llm::score::encode_pair;
use dnd_llm::Llm;
use dnd_tasks::{Body, Example, Part, PromptStyle, SplitConfig, Task};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// The tasks to score: built-in ones (arc_easy, arc_challenge, boolq, hellaswag, openbookqa,
    /// piqa, winogrande, siqa, copa, commonsense_qa, gsm8k, humaneval, ...), a suite, or task files.
    #[command(flatten)]
    tasks: TaskArgs,
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
    /// Job units, one (model or adapter, task) run each, the base model's first, then each
    /// adapter's, tasks in order: --unit, --merge, --emit-slurm.
    #[command(flatten)]
    units: crate::slurm::UnitArgs,
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
    let u = &a.units;
    if a.export_requests.is_some()
        && (u.unit.is_some() || u.merge || u.emit_slurm.is_some() || u.jobs > 1)
    {
        bail!("--export-requests runs no units: drop --unit, --merge, --emit-slurm and --jobs");
    }
    let part = Part::ALL
        .into_iter()
        .find(|p| p.name() == a.split)
        .with_context(|| format!("unknown split `{}`", a.split))?;
    let split_cfg = SplitConfig::default();
    let mut sets: Vec<(Task, Vec<Example>)> = Vec::new();
    for task in a.tasks.resolve(None)? {
        let name = &task.name;
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
    let mut combos: Vec<(String, Option<&Path>)> = Vec::new();
    if !a.no_base {
        combos.push(("base".into(), None));
    }
    for (label, dir) in adapter_labels(&a.adapter).into_iter().zip(&a.adapter) {
        combos.push((label, Some(dir.as_path())));
    }
    // The plan's units: every (run, task) pair, run-major.
    let units: Vec<(usize, usize)> = (0..combos.len())
        .flat_map(|c| (0..sets.len()).map(move |t| (c, t)))
        .collect();
    if let Some(script) = &a.units.emit_slurm {
        return crate::slurm::emit(script, &a.units, "eval", units.len());
    }
    let model_path = a.model.path()?;
    let out = a.out.clone();
    if a.units.starts_workers() {
        crate::slurm::run_workers(a.units.jobs)?;
    }
    let llm = if a.units.merge || a.units.starts_workers() {
        None
    } else {
        Some(a.model.load()?)
    };
    if let (Some(file), Some(llm)) = (&a.export_requests, &llm) {
        return export(llm, &sets, style, file);
    }
    let out = out.expect("clap requires --out");
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
    let spec = ScoreSpec {
        model: model_path.display().to_string(),
        split: part,
        limit: a.limit,
        data: a.data.display().to_string(),
        split_seed: split_cfg.seed,
        eval: cfg,
        git_rev: git_revision(),
        command: std::env::args().collect(),
    };
    let store = Store::new(&out);
    let Some(llm) = llm else {
        return merge(&store, &spec, &combos, &sets, &units, &out);
    };
    if let Some(selected) = a.units.selected(units.len())? {
        for u in selected {
            let (c, t) = units[u];
            let (label, adapter) = &combos[c];
            tracing::info!("unit {u}: {label}/{}", sets[t].0.name);
            let mut progress = ScoreProgress::default();
            score(
                &llm,
                &store,
                &spec,
                label,
                *adapter,
                &sets[t..=t],
                &mut |e| progress.show(e),
            )
            .with_context(|| format!("scoring {label}"))?;
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for (label, adapter) in combos {
        let mut progress = ScoreProgress::default();
        let scored = score(&llm, &store, &spec, &label, adapter, &sets, &mut |e| {
            progress.show(e)
        })
        .with_context(|| format!("scoring {label}"))?;
        runs.extend(scored);
        store.write_summary(&runs, &spec.command)?;
    }
    print!("{}", dnd_evaluate::report::markdown(&runs));
    println!("results written to {}", out.display());
    Ok(())
}

/// `--merge`: the summary of a plan run as job units, once every unit's run is stored with this
/// command's settings; otherwise an error naming the units still missing.
fn merge(
    store: &Store,
    spec: &ScoreSpec,
    combos: &[(String, Option<&Path>)],
    sets: &[(Task, Vec<Example>)],
    units: &[(usize, usize)],
    out: &Path,
) -> Result<()> {
    let mut runs = Vec::new();
    let mut missing = Vec::new();
    for (u, &(c, t)) in units.iter().enumerate() {
        let (label, adapter) = &combos[c];
        let (task, examples) = &sets[t];
        match dnd_evaluate::stored_run(store, spec, label, *adapter, task, examples)? {
            Some(run) => runs.push(run),
            None => missing.push(format!("{u} ({label}/{})", task.name)),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} of {} units not done in {}: {}",
            missing.len(),
            units.len(),
            out.display(),
            missing.join(", ")
        );
    }
    store.write_summary(&runs, &spec.command)?;
    print!("{}", dnd_evaluate::report::markdown(&runs));
    println!("results written to {}", out.display());
    Ok(())
}

/// Shows [`score`]'s progress: a bar per run, a log line per kept or finished run.
#[derive(Default)]
pub struct ScoreProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl ScoreProgress {
    pub fn show(&mut self, event: ScoreEvent<'_>) {
        match event {
            ScoreEvent::Kept(r) => {
                tracing::info!("{}/{}: already scored, kept", r.label, r.settings.task)
            }
            ScoreEvent::Start { label, task, n } => {
                let bar =
                    indicatif::ProgressBar::new(n as u64).with_message(format!("{label}/{task}"));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
                    )
                    .expect("a valid template"),
                );
                self.bar = Some(bar);
            }
            ScoreEvent::Item(i) => {
                if let Some(b) = &self.bar {
                    b.set_position(i as u64)
                }
            }
            ScoreEvent::Done(run) => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear()
                }
                let m = &run.metrics[&run.primary];
                tracing::info!(
                    "{}/{}: {} {:.2} ± {:.2} (n={}) in {:.0} s",
                    run.label,
                    run.settings.task,
                    run.primary,
                    100.0 * m.value,
                    100.0 * m.stderr,
                    m.n,
                    run.wall_s
                );
            }
        }
    }
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
    dnd_io::write_atomic(file, &(lines.join("\n") + "\n"))?;
    println!("{} requests written to {}", lines.len(), file.display());
    Ok(())
}
