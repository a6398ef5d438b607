//! Result files: one JSON per (adapter, task, protocol) run with its per-example records, which
//! makes a long evaluation resumable, plus a `results.json` summary and a `results.md` table.
//!
//! Layout under the output directory:
//! `runs/<label>/<task>.json` (`<task>.generative.json` under the generation protocol),
//! `results.json`, `results.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dnd_tasks::PromptStyle;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::evaluate::{Evaluation, MetricValue, Protocol, Record};
use crate::{EvalError, Result};

/// Everything a result depends on. A stored run is reused only if all of it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The model file or directory, as [`dnd_assets::portable_name`] names it: the same on every
    /// machine (`smollm2 (sha256 ...)`), so stored runs and reports do not carry one machine's paths.
    pub model: String,
    /// The adapter directory, named alike (`$DND_CACHE/...`).
    pub adapter: Option<String>,
    /// SHA-256 of the adapter weights, so a regenerated adapter at the same path is re-scored.
    pub adapter_sha256: Option<String>,
    pub task: String,
    pub split: String,
    pub style: String,
    pub protocol: Protocol,
    pub limit: Option<usize>,
    /// Examples scored: the first `limit` of the split, in split order.
    pub n: usize,
    pub max_new_tokens: usize,
    pub code_timeout_s: f64,
    pub data: String,
    pub split_seed: u64,
}

impl Settings {
    /// Whether a run stored under `self` is the run `wanted` asks for: the same settings, or the same
    /// but for the adapter's directory when both name the adapter by the hash of its weights (a copy or
    /// a renamed cache holds the same adapter, and scoring is deterministic).
    /// Runs stored before paths were recorded portably are compared by their portable names.
    pub fn same_run(&self, wanted: &Settings) -> bool {
        let (stored, wanted) = (self.portable(), wanted.portable());
        let by_hash =
            stored.adapter_sha256.is_some() && stored.adapter_sha256 == wanted.adapter_sha256;
        stored == wanted
            || (by_hash
                && Settings {
                    adapter: wanted.adapter.clone(),
                    ..stored
                } == wanted)
    }

    /// These settings with the model and adapter under their portable names.
    fn portable(&self) -> Settings {
        let name = |p: &str| dnd_assets::portable_name(Path::new(p));
        Settings {
            model: name(&self.model),
            adapter: self.adapter.as_deref().map(name),
            ..self.clone()
        }
    }
}

pub fn style_name(style: PromptStyle) -> &'static str {
    match style {
        PromptStyle::Plain => "plain",
        PromptStyle::Chat => "chat",
    }
}

/// One scored (adapter, task, protocol) combination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `base`, or the adapter's label in tables.
    pub label: String,
    pub settings: Settings,
    /// The metric tables show (see [`crate::primary_metric`]).
    pub primary: String,
    pub metrics: BTreeMap<String, MetricValue>,
    pub wall_s: f64,
    pub s_per_100: f64,
    pub examples_per_s: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub notes: Vec<String>,
    pub git_rev: Option<String>,
    pub command: Vec<String>,
    pub records: Vec<Record>,
}

impl RunResult {
    pub fn new(
        label: &str,
        settings: Settings,
        primary: &str,
        eval: Evaluation,
        git_rev: Option<String>,
        command: Vec<String>,
    ) -> Self {
        let n = eval.records.len() as f64;
        let wall = eval.wall_s.max(1e-9);
        RunResult {
            label: label.to_string(),
            settings,
            primary: primary.to_string(),
            metrics: eval.metrics,
            wall_s: eval.wall_s,
            s_per_100: eval.wall_s / n.max(1.0) * 100.0,
            examples_per_s: n / wall,
            tokens: eval.tokens,
            tokens_per_s: eval.tokens as f64 / wall,
            notes: eval.notes,
            git_rev,
            command,
            records: eval.records,
        }
    }
}

/// The result files of one output directory, and optionally other stores whose runs it may adopt.
pub struct Store {
    dir: PathBuf,
    /// Other output directories, only read: a run they hold under the same label is copied in
    /// instead of being scored again (e.g. the baselines of another experiment on the same collection).
    reuse: Vec<PathBuf>,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self::reusing(dir, &[])
    }

    /// A store that also adopts matching runs from the stores in `others`.
    pub fn reusing(dir: &Path, others: &[PathBuf]) -> Self {
        Store {
            dir: dir.into(),
            reuse: others.to_vec(),
        }
    }

    pub fn run_path(&self, label: &str, task: &str, protocol: Protocol) -> PathBuf {
        run_file(&self.dir, label, task, protocol)
    }

    /// The stored run for `label` that is the run `settings` asks for ([`Settings::same_run`]), here
    /// or else in a store this one reuses; `None` when absent, unreadable (e.g. from an older format)
    /// or made with other settings. A run found under another adapter path, or in another store, is
    /// saved here first with `settings` (and a note naming the store it came from).
    pub fn load(&self, label: &str, settings: &Settings) -> Result<Option<RunResult>> {
        for dir in std::iter::once(&self.dir).chain(&self.reuse) {
            let Some(mut run) = Self::stored(dir, label, settings) else {
                continue;
            };
            let adopted = *dir != self.dir;
            if adopted {
                run.notes
                    .push(format!("scores reused from {}", dir.display()));
            }
            if adopted || run.settings != *settings {
                run.settings = settings.clone();
                self.save(&run)?;
            }
            return Ok(Some(run));
        }
        Ok(None)
    }

    fn stored(dir: &Path, label: &str, settings: &Settings) -> Option<RunResult> {
        let path = run_file(dir, label, &settings.task, settings.protocol);
        let text = std::fs::read_to_string(path).ok()?;
        let run: RunResult = serde_json::from_str(&text).ok()?;
        run.settings.same_run(settings).then_some(run)
    }

    pub fn save(&self, run: &RunResult) -> Result<PathBuf> {
        let path = self.run_path(&run.label, &run.settings.task, run.settings.protocol);
        dnd_io::write_json::<_, EvalError>(&path, run)?;
        Ok(path)
    }

    /// `results.json` (every run without its records, which stay in the run files) and
    /// `results.md`, both written atomically.
    pub fn write_summary(&self, runs: &[RunResult], command: &[String]) -> Result<()> {
        let json_path = self.dir.join("results.json");
        let mut summaries = Vec::new();
        for r in runs {
            // A run is plain data: numbers, strings and maps keyed by strings.
            let mut v = serde_json::to_value(r).expect("a run serialises");
            if let Value::Object(m) = &mut v {
                m.remove("records");
                let file = self.run_path(&r.label, &r.settings.task, r.settings.protocol);
                let rel = file.strip_prefix(&self.dir).unwrap_or(&file);
                m.insert("records_file".into(), rel.display().to_string().into());
            }
            summaries.push(v);
        }
        let doc = serde_json::json!({
            "command": command,
            "git_rev": runs.last().and_then(|r| r.git_rev.clone()),
            "runs": summaries,
        });
        dnd_io::write_json::<_, EvalError>(&json_path, &doc)?;
        Ok(dnd_io::write_atomic(
            &self.dir.join("results.md"),
            markdown(runs),
        )?)
    }
}

/// `<dir>/runs/<label>/<task>.json` (`<task>.generative.json` under the generation protocol).
fn run_file(dir: &Path, label: &str, task: &str, protocol: Protocol) -> PathBuf {
    let file = match protocol {
        Protocol::Loglikelihood => format!("{task}.json"),
        Protocol::Generative => format!("{task}.generative.json"),
    };
    dir.join("runs").join(label).join(file)
}

/// Tables with adapters as rows and tasks as columns, cells `value ± stderr` in percent: the
/// main scores, then (if any) the generation protocol's, then seconds per 100 examples.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut out = String::from("# Evaluation results\n\n");
    if let Some(r) = runs.first() {
        let s = &r.settings;
        out.push_str(&format!(
            "Model `{}`, split `{}`, style `{}`, limit {}. Cells: {} in %, ± bootstrap stderr.\n",
            s.model,
            s.split,
            s.style,
            s.limit.map_or("none".into(), |l| l.to_string()),
            "acc_norm (acc for schema/BoolQ/SIQA, flexible exact match for GSM8K, pass@1 for HumanEval)",
        ));
    }
    for (protocol, title) in [
        (
            Protocol::Loglikelihood,
            "Scores (multiple choice by option log-likelihood as in lm-eval; GSM8K and HumanEval \
             by greedy generation)",
        ),
        (
            Protocol::Generative,
            "Multiple choice by the paper's generation protocol (answer letter parsed; \
             unparsable answers count as wrong)",
        ),
    ] {
        let subset: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.settings.protocol == protocol)
            .collect();
        if subset.is_empty() {
            continue;
        }
        out.push_str(&format!("\n## {title}\n\n"));
        out.push_str(&table(&subset, |r| {
            let m = r.metrics.get(&r.primary)?;
            Some(format!("{:.1} ± {:.1}", 100.0 * m.value, 100.0 * m.stderr))
        }));
    }
    let all: Vec<&RunResult> = runs.iter().collect();
    if !all.is_empty() {
        out.push_str("\n## Wall time (s per 100 examples)\n\n");
        out.push_str(&table(&all, |r| Some(format!("{:.1}", r.s_per_100))));
        let (n, wall, tokens) = runs.iter().fold((0, 0.0, 0), |(n, w, t), r| {
            (n + r.records.len(), w + r.wall_s, t + r.tokens)
        });
        out.push_str(&format!(
            "\nThroughput: {n} examples in {wall:.0} s ({:.2} examples/s), {tokens} tokens scored \
             ({:.0} tokens/s).\n",
            n as f64 / wall.max(1e-9),
            tokens as f64 / wall.max(1e-9)
        ));
    }
    out
}

/// Rows = labels, columns = `task (metric, n)` in order of first appearance.
fn table(runs: &[&RunResult], cell: impl Fn(&RunResult) -> Option<String>) -> String {
    let mut labels: Vec<&str> = Vec::new();
    let mut tasks: Vec<(&str, &RunResult)> = Vec::new();
    for r in runs {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
        if !tasks.iter().any(|(t, _)| *t == r.settings.task) {
            tasks.push((&r.settings.task, r));
        }
    }
    let mut out = String::from("| adapter |");
    for (t, r) in &tasks {
        out.push_str(&format!(" {t} ({}, n={}) |", r.primary, r.settings.n));
    }
    out.push_str(&format!("\n|---|{}\n", "---|".repeat(tasks.len())));
    for l in labels {
        out.push_str(&format!("| {l} |"));
        for (t, _) in &tasks {
            let c = runs
                .iter()
                .find(|r| r.label == l && r.settings.task == *t)
                .and_then(|r| cell(r));
            out.push_str(&format!(" {} |", c.as_deref().unwrap_or("-")));
        }
        out.push('\n');
    }
    out
}
