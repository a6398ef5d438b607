//! The experiment's report: the accuracy table (DnD as mean ± std over its generated adapters), the
//! win/loss summary against every baseline, the efficiency table and the figures, as `report.md`,
//! `report.json`, `accuracy.png`, `curves.png` and `pca.png` in the results directory.

use crate::label::RunLabel;
use crate::position::Position;
use crate::{plot, ExperimentError, Result};
use dnd_evaluate::report::RunResult;
use dnd_train::{GeneratorTrainConfig, TrainManifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// One scored adapter on one target, in fractions (the table shows percent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub label: String,
    pub metric: String,
    pub value: f64,
    pub stderr: f64,
    pub n: usize,
    pub wall_s: f64,
    /// The metric per test item, in split order: DnD is compared with each baseline item by item.
    /// Not written to `report.json` (the store's run files hold every record).
    #[serde(skip)]
    pub items: Vec<f64>,
}

impl Score {
    pub fn from_run(r: &RunResult) -> Score {
        let m = &r.metrics[&r.primary];
        Score {
            label: r.label.clone(),
            metric: r.primary.clone(),
            value: m.value,
            stderr: m.stderr,
            n: m.n,
            wall_s: r.wall_s,
            items: r
                .records
                .iter()
                .map(|rec| rec.scores.get(&r.primary).copied().unwrap_or(0.0))
                .collect(),
        }
    }
}

/// The multi-task baseline's name in tables.
pub const MULTITASK: &str = "multi-task LoRA";

/// A held-out target's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetResult {
    pub target: String,
    pub metric: String,
    pub n: usize,
    pub base: Score,
    /// The other tasks' LoRAs (last checkpoint of each).
    pub training_loras: Vec<Score>,
    /// Mean of their values; stderr: the mean of their stderrs (the items are shared).
    pub mean_lora: Score,
    pub best_lora: Score,
    pub uniform_average: Score,
    /// One LoRA on the union of the training tasks, when the experiment trains it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multitask: Option<Score>,
    pub nearest: Score,
    pub nearest_task: String,
    pub nearest_cosine: f64,
    pub oracle: Score,
    pub dnd: Vec<Score>,
    pub dnd_mean: f64,
    /// Standard deviation over the generated adapters (population).
    pub dnd_std: f64,
    /// Mean of the generated adapters' stderrs.
    pub dnd_stderr: f64,
    /// Per test item, the mean over the generated adapters: kept in `report.json` so two reports
    /// can be compared item by item ([`DndDiff`]).
    pub dnd_items: Vec<f64>,
    /// Seconds to generate each adapter (encode + decode + write), measured.
    pub generation_s: Vec<f64>,
    /// The oracle's fine-tuning wall time (its whole collection run).
    pub oracle_finetune_s: f64,
    /// Generator training compute (sum of the logged update times).
    pub generator_train_s: f64,
    /// Generator training wall time: data preparation, updates, validation, saves.
    pub generator_wall_s: f64,
    pub generator_val_loss: Option<f64>,
    pub generator_val_loss_mean_checkpoint: Option<f64>,
    /// (step, value) of the oracle's scored checkpoints, when asked for.
    pub oracle_trajectory: Vec<(usize, f64)>,
    /// Updates of the oracle's whole run.
    pub oracle_steps: usize,
    /// Where the generated adapters lie in weight space.
    pub dnd_position: Option<Position>,
}

/// A target's scores, the input of [`TargetResult::new`].
pub struct TargetScores {
    pub target: String,
    pub base: Score,
    /// Every other task's training LoRA on the target.
    pub training_loras: Vec<Score>,
    pub uniform_average: Score,
    /// The multi-task LoRA, when trained.
    pub multitask: Option<Score>,
    /// The LoRA of the task with the nearest prompts, that task and its prompt cosine.
    pub nearest: Score,
    pub nearest_task: String,
    pub nearest_cosine: f64,
    /// The target's own LoRA.
    pub oracle: Score,
    /// Each generated adapter.
    pub dnd: Vec<Score>,
}

/// What a target's generation, generator and oracle cost, the input of [`TargetResult::new`].
pub struct TargetCosts {
    /// Seconds to generate each adapter.
    pub generation_s: Vec<f64>,
    pub oracle_finetune_s: f64,
    pub generator_train_s: f64,
    pub generator_wall_s: f64,
    pub generator_val_loss: Option<f64>,
    pub generator_val_loss_mean_checkpoint: Option<f64>,
}

impl TargetResult {
    #[allow(clippy::too_many_arguments)]
    /// The row from a target's scores and costs; the mean and best training LoRA and DnD's mean,
    /// spread and per-item means are derived here.
    pub fn new(scores: TargetScores, costs: TargetCosts) -> Self {
        let TargetScores {
            target,
            base,
            training_loras,
            uniform_average,
            multitask,
            nearest,
            nearest_task,
            nearest_cosine,
            oracle,
            dnd,
        } = scores;
        let TargetCosts {
            generation_s,
            oracle_finetune_s,
            generator_train_s,
            generator_wall_s,
            generator_val_loss,
            generator_val_loss_mean_checkpoint,
        } = costs;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let values: Vec<f64> = training_loras.iter().map(|s| s.value).collect();
        let errs: Vec<f64> = training_loras.iter().map(|s| s.stderr).collect();
        let mean_lora = Score {
            label: "mean of training LoRAs".into(),
            value: mean(&values),
            stderr: mean(&errs),
            items: item_means(&training_loras),
            ..base.clone()
        };
        let best_lora = training_loras
            .iter()
            .max_by(|a, b| a.value.total_cmp(&b.value))
            .cloned()
            .unwrap_or_else(|| base.clone());
        let dv: Vec<f64> = dnd.iter().map(|s| s.value).collect();
        let dnd_mean = mean(&dv);
        let dnd_std = (dv.iter().map(|v| (v - dnd_mean).powi(2)).sum::<f64>()
            / dv.len().max(1) as f64)
            .sqrt();
        let dnd_stderr = mean(&dnd.iter().map(|s| s.stderr).collect::<Vec<_>>());
        let dnd_items = item_means(&dnd);
        TargetResult {
            target,
            metric: base.metric.clone(),
            n: base.n,
            base,
            training_loras,
            mean_lora,
            best_lora,
            uniform_average,
            multitask,
            nearest,
            nearest_task,
            nearest_cosine,
            oracle,
            dnd,
            dnd_mean,
            dnd_std,
            dnd_stderr,
            dnd_items,
            generation_s,
            oracle_finetune_s,
            generator_train_s,
            generator_wall_s,
            generator_val_loss,
            generator_val_loss_mean_checkpoint,
            oracle_trajectory: Vec::new(),
            oracle_steps: 0,
            dnd_position: None,
        }
    }

    /// The first scored oracle step at or above DnD's mean, and the fine-tuning seconds to get there
    /// (the run's wall time pro rata of its steps); `None` when no scored step reaches it.
    pub fn oracle_reaches_dnd(&self) -> Option<(usize, f64)> {
        let (step, _) = self
            .oracle_trajectory
            .iter()
            .find(|(_, v)| *v >= self.dnd_mean)?;
        let share = *step as f64 / self.oracle_steps.max(1) as f64;
        Some((*step, share * self.oracle_finetune_s))
    }

    /// The baselines DnD is compared with, in table order (the multi-task LoRA where trained).
    pub fn baselines(&self) -> Vec<(&'static str, &Score)> {
        let mut out = vec![
            ("base model", &self.base),
            ("mean of training LoRAs", &self.mean_lora),
            ("best training LoRA", &self.best_lora),
            ("uniform average of checkpoints", &self.uniform_average),
        ];
        out.extend(self.multitask.iter().map(|m| (MULTITASK, m)));
        out.push(("nearest-prompt LoRA", &self.nearest));
        out.push(("oracle LoRA", &self.oracle));
        out
    }
}

/// One point of the PCA figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PcaPoint {
    pub task: String,
    /// `checkpoint` (a collection checkpoint of `task`) or `generated` (for held-out `task`).
    pub kind: String,
    pub index: usize,
    pub x: f64,
    pub y: f64,
}

impl PcaPoint {
    pub fn new(task: String, kind: String, index: usize, p: &[f64]) -> Self {
        PcaPoint {
            task,
            kind,
            index,
            x: p.first().copied().unwrap_or(0.0),
            y: p.get(1).copied().unwrap_or(0.0),
        }
    }
}

/// Per item, the mean over `scores` (all scored on the same items).
fn item_means(scores: &[Score]) -> Vec<f64> {
    let n = scores.iter().map(|s| s.items.len()).min().unwrap_or(0);
    (0..n)
        .map(|i| scores.iter().map(|s| s.items[i]).sum::<f64>() / scores.len() as f64)
        .collect()
}

/// DnD against one baseline over the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub baseline: String,
    pub wins: usize,
    /// Wins by more than twice the paired stderr.
    pub clear_wins: usize,
    pub losses: usize,
    pub clear_losses: usize,
    pub ties: usize,
    /// Mean of DnD minus baseline over the targets, in fractions.
    pub mean_diff: f64,
    /// Per target: (target, DnD − baseline, paired stderr of that difference).
    pub per_target: Vec<(String, f64, f64)>,
}

/// DnD and one baseline on one target: per-item metric values on the same test items.
pub struct Paired<'a> {
    pub target: &'a str,
    pub dnd: &'a [f64],
    pub baseline: &'a [f64],
}

/// Count wins and losses of DnD against `baseline`. Both are scored on the same items, so the
/// difference is judged by its paired standard error, `sd(d_i) / sqrt(n)` over the per-item
/// differences `d_i` (DnD averaged over its adapters per item); it is clear beyond twice that.
pub fn compare(baseline: &str, rows: &[Paired<'_>]) -> Comparison {
    let mut c = Comparison {
        baseline: baseline.into(),
        wins: 0,
        clear_wins: 0,
        losses: 0,
        clear_losses: 0,
        ties: 0,
        mean_diff: 0.0,
        per_target: Vec::new(),
    };
    for r in rows {
        let d: Vec<f64> = r.dnd.iter().zip(r.baseline).map(|(a, b)| a - b).collect();
        let n = d.len() as f64;
        let diff = d.iter().sum::<f64>() / n.max(1.0);
        let se = if d.len() > 1 {
            (d.iter().map(|x| (x - diff).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
        } else {
            0.0
        };
        let clear = diff.abs() > 2.0 * se;
        if diff > 1e-12 {
            c.wins += 1;
            c.clear_wins += clear as usize;
        } else if diff < -1e-12 {
            c.losses += 1;
            c.clear_losses += clear as usize;
        } else {
            c.ties += 1;
        }
        c.per_target.push((r.target.to_string(), diff, se));
    }
    c.mean_diff = c.per_target.iter().map(|p| p.1).sum::<f64>() / rows.len().max(1) as f64;
    c
}

impl Comparison {
    /// One plain sentence.
    pub fn sentence(&self) -> String {
        let n = self.per_target.len();
        let mut s = format!(
            "**vs {}**: DnD wins on {}/{n} targets ({} by more than 2 paired stderr), loses on {}/{n} ({} clearly)",
            self.baseline, self.wins, self.clear_wins, self.losses, self.clear_losses
        );
        if self.ties > 0 {
            let _ = write!(s, ", ties on {}", self.ties);
        }
        let _ = write!(
            s,
            "; mean difference {:+.1} points. Per target (DnD − baseline ± paired stderr): {}.",
            100.0 * self.mean_diff,
            self.per_target
                .iter()
                .map(|(t, d, se)| format!("{t} {:+.1} ± {:.1}", 100.0 * d, 100.0 * se))
                .collect::<Vec<_>>()
                .join(", ")
        );
        s
    }
}

/// The DnD rows of two experiments (say two decoder sizes) compared item by item, for `dnd compare`.
#[derive(Debug, Clone, PartialEq)]
pub struct DndDiff {
    /// The second run against the first, as [`compare`] counts DnD against a baseline.
    pub comparison: Comparison,
    /// Per compared target: the first and the second run's mean over the items.
    pub means: Vec<(f64, f64)>,
}

impl DndDiff {
    /// Compare `b`'s DnD items with `a`'s on every target both have, in `b`'s order, leaving out
    /// the first `skip` items of each (say, those a setting was chosen on). Each side is
    /// `(target, per-item values)`; a target present on both sides must have the same number of
    /// items (the same test items), and an empty list means the report predates per-item values.
    pub fn new(a: &[(&str, &[f64])], b: &[(&str, &[f64])], skip: usize) -> Result<Self> {
        let mut rows = Vec::new();
        let mut means = Vec::new();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        for &(target, bi) in b {
            let Some(&(_, ai)) = a.iter().find(|(t, _)| *t == target) else {
                continue;
            };
            if ai.is_empty() || bi.is_empty() || ai.len() != bi.len() {
                return Err(ExperimentError::Config(format!(
                    "{target}: per-item DnD values differ in count ({} against {}); compare reports \
                     scored on the same test items, regenerated by this version of `dnd experiment`",
                    ai.len(),
                    bi.len()
                )));
            }
            let (Some(ai), Some(bi)) = (ai.get(skip..), bi.get(skip..)) else {
                return Err(ExperimentError::Config(format!(
                    "{target}: {} items, fewer than the {skip} to leave out",
                    ai.len()
                )));
            };
            if ai.is_empty() {
                return Err(ExperimentError::Config(format!(
                    "{target}: no items left after leaving out {skip}"
                )));
            }
            rows.push(Paired {
                target,
                dnd: bi,
                baseline: ai,
            });
            means.push((mean(ai), mean(bi)));
        }
        if rows.is_empty() {
            return Err(ExperimentError::Config(
                "the two reports share no target".into(),
            ));
        }
        Ok(DndDiff {
            comparison: compare("first", &rows),
            means,
        })
    }

    /// A Markdown table (percent) and a one-line summary; `a` and `b` name the two runs.
    pub fn markdown(&self, a: &str, b: &str) -> String {
        let c = &self.comparison;
        let mut o =
            format!("| target | {a} | {b} | {b} − {a} (paired stderr) |\n|---|---|---|---|\n");
        for ((t, d, se), (ma, mb)) in c.per_target.iter().zip(&self.means) {
            let _ = writeln!(
                o,
                "| {t} | {:.1} | {:.1} | {:+.1} ± {:.1} |",
                100.0 * ma,
                100.0 * mb,
                100.0 * d,
                100.0 * se
            );
        }
        let _ = writeln!(
            o,
            "\nMean difference over {} targets: {:+.2} points; {b} higher on {} ({} by more than 2 \
             paired stderr), lower on {} ({} clearly), tied on {}.",
            c.per_target.len(),
            100.0 * c.mean_diff,
            c.wins,
            c.clear_wins,
            c.losses,
            c.clear_losses,
            c.ties
        );
        o
    }
}

/// The layout `report.json` is written in. 1: the files of sessions 1-6, which had no `schema` field
/// and lacked, depending on their age, `offset_scale` (all made at 1), `prompt_cosines`, and per
/// target `dnd_items`, `oracle_trajectory` (then empty) and `dnd_position`.
pub const REPORT_SCHEMA: u32 = 2;

/// Schema 1 -> 2: the fields added since, with the values the older files were made with.
fn upgrade_from_1(report: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    report.entry("offset_scale").or_insert(Value::from(1.0));
    report
        .entry("prompt_cosines")
        .or_insert(Value::Array(vec![]));
    if let Some(Value::Array(targets)) = report.get_mut("targets") {
        for t in targets.iter_mut().filter_map(Value::as_object_mut) {
            t.entry("dnd_items").or_insert(Value::Array(vec![]));
            t.entry("oracle_trajectory").or_insert(Value::Array(vec![]));
            t.entry("dnd_position").or_insert(Value::Null);
        }
    }
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The layout of this file ([`REPORT_SCHEMA`]); older files are upgraded on reading
    /// ([`Report::from_json`]).
    pub schema: u32,
    pub command: Vec<String>,
    pub git_rev: Option<String>,
    pub model: String,
    pub collection: String,
    pub work_dir: String,
    pub limit: Option<usize>,
    pub adapters: usize,
    /// The generators' offset scale at generation (1: as trained); see
    /// `dnd_generate::Generator::with_offset_scale`.
    pub offset_scale: f64,
    pub seed: u64,
    pub prompts: usize,
    pub prompt_len: usize,
    pub train: GeneratorTrainConfig,
    /// The decoder every generator was built with, and its parameter count (none without generators).
    pub decoder: Option<(dnd_decode::DecoderConfig, usize)>,
    pub protocol: String,
    pub collection_wall_s: f64,
    /// Compute spent scoring, summed over every stored run (whichever invocation produced it).
    pub scoring_compute_s: f64,
    /// Wall time of each phase in the invocation that wrote this report, in order (reused work
    /// costs ~0).
    pub phase_wall_s: Vec<(String, f64)>,
    pub targets: Vec<TargetResult>,
    /// (LoRA's task, target, primary metric value): every training LoRA scored on each target.
    pub lora_matrix: Vec<(String, String, f64)>,
    /// `Some(k)`: only the `k` training LoRAs with the prompts nearest each target's were scored on
    /// it (`--score-loras`), so the mean and best training LoRA are over those; `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_loras: Option<usize>,
    /// (training task, target, cosine of their mean pooled prompt embeddings).
    pub prompt_cosines: Vec<(String, String, f64)>,
    pub pca: Vec<PcaPoint>,
    pub pca_explained: Vec<f64>,
    /// DnD against each baseline over the targets (see [`compare`]).
    pub comparisons: Vec<Comparison>,
}

impl Report {
    /// A `report.json` of any schema up to [`REPORT_SCHEMA`], upgraded to the current one; a newer
    /// schema is refused (it needs a newer dnd).
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let map = v.as_object_mut().ok_or("not a JSON object")?;
        let schema = map.get("schema").map_or(Some(1), |s| s.as_u64());
        match schema {
            Some(1) => upgrade_from_1(map),
            Some(s) if s == u64::from(REPORT_SCHEMA) => {}
            _ => {
                return Err(format!(
                    "report schema {:?}; this dnd reads 1 to {REPORT_SCHEMA}",
                    map.get("schema")
                ))
            }
        }
        map.insert("schema".into(), REPORT_SCHEMA.into());
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// Each target with DnD's per-item values, for [`DndDiff::new`].
    pub fn dnd_rows(&self) -> Vec<(&str, &[f64])> {
        self.targets
            .iter()
            .map(|t| (t.target.as_str(), t.dnd_items.as_slice()))
            .collect()
    }

    /// DnD against each baseline over `targets`.
    pub fn compare_all(targets: &[TargetResult]) -> Vec<Comparison> {
        // The target with the most baselines names them all (the multi-task LoRA may be missing).
        let Some(first) = targets.iter().max_by_key(|t| t.baselines().len()) else {
            return Vec::new();
        };
        first
            .baselines()
            .iter()
            .map(|(name, _)| {
                let rows: Vec<Paired<'_>> = targets
                    .iter()
                    .filter_map(|t| {
                        let (_, b) = t.baselines().into_iter().find(|(n, _)| n == name)?;
                        Some(Paired {
                            target: &t.target,
                            dnd: &t.dnd_items,
                            baseline: &b.items,
                        })
                    })
                    .collect();
                compare(name, &rows)
            })
            .collect()
    }

    /// Write `report.md`, `report.json` and the figures into `dir`.
    pub fn write(&self, dir: &Path, manifests: &BTreeMap<String, TrainManifest>) -> Result<()> {
        dnd_io::write_json::<_, ExperimentError>(&dir.join("report.json"), self)?;
        plot::accuracy(&dir.join("accuracy.png"), self)?;
        plot::curves(&dir.join("curves.png"), manifests)?;
        plot::pca(&dir.join("pca.png"), self)?;
        Ok(dnd_io::write_atomic(
            &dir.join("report.md"),
            self.markdown(),
        )?)
    }

    pub fn markdown(&self) -> String {
        let mut o = String::from("# Drag-and-Drop LoRA generation: leave-one-out experiment\n\n");
        for section in [
            Self::md_header,
            Self::md_accuracy,
            Self::md_wins,
            Self::md_adapters,
            Self::md_matrices,
            Self::md_efficiency,
            Self::md_training,
            Self::md_pca,
            Self::md_wall,
        ] {
            section(self, &mut o);
        }
        o
    }

    /// Title, what was scored on which model, the command and the protocol.
    fn md_header(&self, o: &mut String) {
        let limit = self
            .limit
            .map_or("all".to_string(), |l| format!("the first {l}"));
        let _ = writeln!(
            o,
            "**Scored on {limit} test items of each target** (dnd's split order), {} protocol \
             (option log-likelihood, lm-eval conventions). Base model `{}`; collection `{}` \
             ({:.0} s to collect). Git revision `{}`.\n",
            self.protocol,
            self.model,
            self.collection,
            self.collection_wall_s,
            self.git_rev.as_deref().unwrap_or("unknown"),
        );
        let _ = writeln!(o, "Command:\n\n    {}\n", self.command.join(" "));
        let _ = writeln!(
            o,
            "Protocol. For each held-out target a generator is trained on the other tasks' checkpoints \
             and prompts only, for a fixed {} steps (batch {}, lr {:e}, N={} prompts of L={} word \
             pieces; decoder {}; it predicts {}); the **final generator is used: no checkpoint \
             selection, and no target data is touched before generation besides its unlabeled \
             `prompts` split**. {} adapters are \
             generated per target, each from its own batch of the target's `prompts` split (seed {}), \
             disjoint from the scored `test` split. Baselines are scored on the same test items:\n\
             - *training LoRAs*: the last checkpoint of each other task's collection run; their mean \
             and the best one (the best is picked on the test items, so it is an optimistic baseline);\n\
             - *uniform average*: the element-wise mean of the A and of the B factors of every \
             checkpoint of every other task (weight space, not of the B·A products);\n\
             - *nearest*: the training LoRA of the task whose mean pooled prompt embedding (MiniLM, mean \
             over its `prompts` split) has the highest cosine with the target's;\n\
             - *oracle*: the target's own LoRA, fine-tuned on its adapter-train split (its collection run).\n",
            self.train.steps, self.train.batch, self.train.lr, self.prompts, self.prompt_len,
            self.decoder.as_ref().map_or("unknown".into(), |(d, p)| format!(
                "stages {:?}, kernel {}, {p} parameters",
                d.stages, d.kernel
            )),
            if self.train.residual {
                "the offset of each checkpoint from the mean training checkpoint"
            } else {
                "whole checkpoints, as the paper"
            },
            self.adapters, self.seed
        );
        if let Some(k) = self.scored_loras {
            let _ = writeln!(
                o,
                "**Training LoRAs scored: {k} per target**, those of the tasks whose prompts are \
                 nearest the target's (`--score-loras {k}`): *mean* and *best training LoRA* are over \
                 these {k}, not over every training task.\n"
            );
        }
        if self.offset_scale != 1.0 {
            let _ = writeln!(
                o,
                "**Offset scale {}**: each generator's output (its predicted departure from the mean \
                 training checkpoint) was multiplied by {} before the mean was added back.\n",
                self.offset_scale, self.offset_scale
            );
        }
    }

    /// The accuracy table, every baseline and DnD per target.
    fn md_accuracy(&self, o: &mut String) {
        let pct = |s: &Score| format!("{:.1} ± {:.1}", 100.0 * s.value, 100.0 * s.stderr);
        o.push_str("## Accuracy (%)\n\n");
        o.push_str(
            "Cells: value ± bootstrap stderr; DnD: mean ± std over its generated adapters \
             (mean stderr in brackets). Metric per row as named (acc_norm, or acc where lm-eval has no \
             length normalisation).\n\n",
        );
        // The multi-task column only where the experiment trained that baseline.
        let multitask = self.targets.iter().any(|t| t.multitask.is_some());
        let (head, rule) = if multitask {
            (" multi-task LoRA |", "---|")
        } else {
            ("", "")
        };
        let _ = writeln!(
            o,
            "| target (metric, n) | base | mean LoRA | best LoRA | uniform avg |{head} nearest LoRA | oracle | DnD |\n|---|---|---|---|---|{rule}---|---|---|"
        );
        for t in &self.targets {
            let mt = match (&t.multitask, multitask) {
                (Some(m), _) => format!(" {} |", pct(m)),
                (None, true) => " - |".to_string(),
                (None, false) => String::new(),
            };
            let _ = writeln!(
                o,
                "| {} ({}, {}) | {} | {} | {} ({}) | {} |{mt} {} ({}) | {} | **{:.1} ± {:.1}** [{:.1}] |",
                t.target,
                t.metric,
                t.n,
                pct(&t.base),
                pct(&t.mean_lora),
                pct(&t.best_lora),
                t.best_lora.label,
                pct(&t.uniform_average),
                pct(&t.nearest),
                t.nearest_task,
                pct(&t.oracle),
                100.0 * t.dnd_mean,
                100.0 * t.dnd_std,
                100.0 * t.dnd_stderr,
            );
        }
    }

    /// DnD against each baseline: where it wins and loses, and how clearly.
    fn md_wins(&self, o: &mut String) {
        o.push_str("\n![accuracy](accuracy.png)\n\n## Where DnD wins and loses\n\n");
        o.push_str(
            "DnD (averaged over its adapters per item) against each baseline on the same test items. \
             A difference is *clear* when it exceeds twice its paired stderr (the stderr of the \
             per-item differences' mean); otherwise it is within noise at this number of items.\n\n",
        );
        for c in &self.comparisons {
            let _ = writeln!(o, "- {}", c.sentence());
        }
    }

    /// Each generated adapter's accuracy.
    fn md_adapters(&self, o: &mut String) {
        o.push_str("\n## Each generated adapter (%)\n\n| target | adapters |\n|---|---|\n");
        for t in &self.targets {
            let cells: Vec<String> = t
                .dnd
                .iter()
                .map(|s| format!("{:.1}", 100.0 * s.value))
                .collect();
            let _ = writeln!(o, "| {} | {} |", t.target, cells.join(", "));
        }
    }

    /// Every training LoRA on every target, and the prompt similarities.
    fn md_matrices(&self, o: &mut String) {
        let scored = self
            .scored_loras
            .map_or("Every training LoRA on every target".into(), |k| {
                format!(
                    "The training LoRAs scored on each target (the {k} with the nearest prompts)"
                )
            });
        let _ = write!(
            o,
            "\n## {scored} (%)\n\nRows: the LoRA's task; the diagonal is the oracle.\n\n"
        );
        o.push_str(
            &self.matrix_markdown("LoRA", &self.lora_matrix, |v| format!("{:.1}", 100.0 * v)),
        );
        if !self.prompt_cosines.is_empty() {
            o.push_str(
                "\n## Prompt similarity\n\nCosine of the mean pooled MiniLM prompt embeddings (each task's \
                 `prompts` split), which picks the nearest-prompt LoRA. Rows: training tasks.\n\n",
            );
            o.push_str(&self.matrix_markdown("task", &self.prompt_cosines, |v| format!("{v:.3}")));
        }
    }

    /// Generation against fine-tuning time, and when the oracle reaches DnD.
    fn md_efficiency(&self, o: &mut String) {
        o.push_str("\n## Efficiency\n\n");
        o.push_str(
            "Generation: encode the prompt batch (MiniLM, uncached) + one decoder forward + write the \
             PEFT files, measured here per adapter. Oracle: the wall time of the target's collection \
             run (all its fine-tuning steps, checkpoint writes included), from its manifest; its \
             intermediate checkpoints are scored only with `--oracle-trajectory` (below, when \
             given), otherwise the time to reach DnD's accuracy is at most this. One-off costs: the collection (all tasks) and the \
             generator's training (wall time of data preparation, updates, validation and saves; and the \
             updates alone).\n\n",
        );
        o.push_str("| target | generate one adapter (s) | fine-tune oracle (s) | speed-up | oracle − DnD (points) | generator training: wall (s) | of which updates (s) |\n|---|---|---|---|---|---|---|\n");
        for t in &self.targets {
            let g = t.generation_s.iter().sum::<f64>() / t.generation_s.len().max(1) as f64;
            let _ = writeln!(
                o,
                "| {} | {:.2} | {:.0} | {:.0}x | {:+.1} | {:.0} | {:.0} |",
                t.target,
                g,
                t.oracle_finetune_s,
                t.oracle_finetune_s / g.max(1e-9),
                100.0 * (t.oracle.value - t.dnd_mean),
                t.generator_wall_s,
                t.generator_train_s
            );
        }
        let reached: Vec<String> = self
            .targets
            .iter()
            .filter(|t| !t.oracle_trajectory.is_empty())
            .map(|t| {
                let curve: Vec<String> = t
                    .oracle_trajectory
                    .iter()
                    .map(|(s, v)| format!("step {s}: {:.1}", 100.0 * v))
                    .collect();
                let first = t.oracle_trajectory[0].0;
                let reach = match t.oracle_reaches_dnd() {
                    Some((s, secs)) if s == first => format!(
                        "already at or above DnD at its first saved step {s} (within {secs:.0} s; \
                         earlier steps were not saved)"
                    ),
                    Some((s, secs)) => format!("reaches DnD at step {s}, about {secs:.0} s"),
                    None => "never reaches DnD among the scored steps".into(),
                };
                format!("- {}: {reach} ({}).", t.target, curve.join(", "))
            })
            .collect();
        if !reached.is_empty() {
            let _ = writeln!(
                o,
                "\nWhen the oracle's fine-tuning reaches DnD's mean accuracy (its saved checkpoints \
                 scored on the same items; seconds pro rata of the run's {} steps):\n\n{}",
                self.targets.first().map_or(0, |t| t.oracle_steps),
                reached.join("\n")
            );
        }
        let gen_total: f64 = self.targets.iter().map(|t| t.generator_wall_s).sum();
        let _ = writeln!(
            o,
            "\nOne-off: collecting the checkpoints took {:.0} s (all tasks), training the {} generators \
             {:.0} s in all. Scoring every stored run took {:.0} s of compute.\n",
            self.collection_wall_s,
            self.targets.len(),
            gen_total,
            self.scoring_compute_s
        );
    }

    /// The generators' held-out losses.
    fn md_training(&self, o: &mut String) {
        o.push_str("## Generator training\n\n![curves](curves.png)\n\n| target | final held-out loss | held-out loss of the mean checkpoint |\n|---|---|---|\n");
        for t in &self.targets {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                t.target,
                f(t.generator_val_loss),
                f(t.generator_val_loss_mean_checkpoint)
            );
        }
    }

    /// The PCA of checkpoints and adapters, and the weight-space positions.
    fn md_pca(&self, o: &mut String) {
        let ex: Vec<String> = self
            .pca_explained
            .iter()
            .map(|e| format!("{:.1}%", 100.0 * e))
            .collect();
        let _ = writeln!(
            o,
            "\n## Checkpoints and generated adapters (PCA)\n\n![pca](pca.png)\n\nEach adapter flattened \
             (every module's A then B, an evenly strided subset of at most {} values), projected on the \
             top two principal components of all training checkpoints (explained variance {}). Dots: \
             collection checkpoints, coloured by task; crosses: adapters generated for that task while \
             it was held out.\n",
            crate::pca::MAX_COORDS,
            ex.join(", ")
        );
        self.positions_markdown(o);
    }

    /// The wall time of each phase of the invocation that wrote the report.
    fn md_wall(&self, o: &mut String) {
        o.push_str("## Wall time of this invocation (s)\n\n| phase | s |\n|---|---|\n");
        for (p, s) in &self.phase_wall_s {
            let _ = writeln!(o, "| {p} | {s:.1} |");
        }
    }
}

impl Report {
    /// A (row task, target, value) table with the targets as columns, rows in first-seen order.
    fn matrix_markdown(
        &self,
        corner: &str,
        cells: &[(String, String, f64)],
        fmt: impl Fn(f64) -> String,
    ) -> String {
        let targets: Vec<&str> = self.targets.iter().map(|t| t.target.as_str()).collect();
        let mut rows: Vec<&str> = Vec::new();
        for (r, _, _) in cells {
            if !rows.contains(&r.as_str()) {
                rows.push(r);
            }
        }
        let mut o = format!(
            "| {corner} \\ target | {} |\n|---|{}\n",
            targets.join(" | "),
            "---|".repeat(targets.len())
        );
        for r in rows {
            let line: Vec<String> = targets
                .iter()
                .map(|t| {
                    cells
                        .iter()
                        .find(|(a, b, _)| a == r && b == t)
                        .map_or("-".into(), |(_, _, v)| fmt(*v))
                })
                .collect();
            let _ = writeln!(o, "| {r} | {} |", line.join(" | "));
        }
        o
    }

    /// The weight-space positions of the generated adapters, when measured.
    fn positions_markdown(&self, o: &mut String) {
        if self.targets.iter().all(|t| t.dnd_position.is_none()) {
            return;
        }
        let _ = writeln!(
            o,
            "## Where the generated adapters lie (weight space)\n\nThe mean of a target's generated \
             adapters, g, against the uniform average u of the training checkpoints and each training \
             LoRA L (flattened as for the PCA). *From average*: |g − u| / mean |L − u| (0: at the \
             average; 1: as far from it as a training LoRA is). *Toward X*: the projection of g − u on \
             L_X − u, as a fraction of it (0: at the average; 1: at X's LoRA).\n\n| target | from \
             average | toward the nearest-prompt task | toward the best LoRA's task | strongest pull |\n\
             |---|---|---|---|---|"
        );
        for t in &self.targets {
            let Some(p) = &t.dnd_position else { continue };
            let toward = |task: &str| {
                p.toward(task)
                    .map_or("-".into(), |v| format!("{v:.3} ({task})"))
            };
            let best = match t.best_lora.label.parse() {
                Ok(RunLabel::Lora(task)) => task,
                _ => t.best_lora.label.clone(),
            };
            let strongest = p
                .strongest()
                .map_or("-".into(), |(task, v)| format!("{v:.3} ({task})"));
            let _ = writeln!(
                o,
                "| {} | {:.3} | {} | {} | {} |",
                t.target,
                p.from_average,
                toward(&t.nearest_task),
                toward(&best),
                strongest
            );
        }
        o.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wins_and_losses_are_counted_against_the_paired_stderr() {
        let row = |target, dnd, baseline| Paired {
            target,
            dnd,
            baseline,
        };
        let rows = [
            // Every item +1: a clear win (no spread, so a zero stderr).
            row("a", &[1.0, 1.0, 1.0, 1.0], &[0.0, 0.0, 0.0, 0.0]),
            // One item each way: a tie.
            row("b", &[1.0, 0.0, 1.0, 0.0], &[0.0, 1.0, 1.0, 0.0]),
            // d = (-1, 0, 0, 0): -0.25 with se sd/sqrt(n) = 0.5/2 = 0.25, a loss within 2 se.
            row("c", &[0.0, 0.0, 1.0, 1.0], &[1.0, 0.0, 1.0, 1.0]),
            // d = (0, 1, 0, 0): a win within 2 se.
            row("d", &[1.0, 1.0, 0.0, 0.0], &[1.0, 0.0, 0.0, 0.0]),
        ];
        let c = compare("x", &rows);
        assert_eq!(
            (c.wins, c.clear_wins, c.losses, c.clear_losses, c.ties),
            (2, 1, 1, 0, 1)
        );
        assert!((c.mean_diff - 0.25).abs() < 1e-12);
        assert!((c.per_target[2].1 + 0.25).abs() < 1e-12);
        assert!((c.per_target[2].2 - 0.25).abs() < 1e-12);
        let s = c.sentence();
        assert!(s.contains("wins on 2/4 targets (1 by more than 2"), "{s}");
        assert!(s.contains("loses on 1/4 (0 clearly), ties on 1"), "{s}");
    }

    #[test]
    fn two_runs_are_compared_on_their_shared_targets() {
        let a: [(&str, &[f64]); 2] = [("x", &[0.0, 1.0, 0.0, 1.0]), ("y", &[1.0, 1.0])];
        let b: [(&str, &[f64]); 2] = [("z", &[1.0]), ("x", &[1.0, 1.0, 0.0, 1.0])];
        let d = DndDiff::new(&a, &b, 0).unwrap();
        assert_eq!(d.comparison.per_target.len(), 1, "only x is in both");
        assert_eq!(d.means, [(0.5, 0.75)]);
        assert_eq!((d.comparison.wins, d.comparison.losses), (1, 0));
        assert!((d.comparison.mean_diff - 0.25).abs() < 1e-12);
        let md = d.markdown("small", "big");
        assert!(md.contains("| x | 50.0 | 75.0 | +25.0 ± 25.0 |"), "{md}");
        assert!(md.contains("big higher on 1 (0 by more"), "{md}");
        // Different item counts, an old report without items, or nothing shared: clear errors.
        let short: [(&str, &[f64]); 1] = [("x", &[1.0, 1.0])];
        assert!(DndDiff::new(&a, &short, 0)
            .unwrap_err()
            .to_string()
            .contains("x: per-item"));
        let old: [(&str, &[f64]); 1] = [("x", &[])];
        assert!(DndDiff::new(&old, &b, 0).is_err());
        assert!(DndDiff::new(&a[1..], &b, 0)
            .unwrap_err()
            .to_string()
            .contains("no target"));
        // Leaving out the first 2 items of x: 0, 1 against 0, 1, a tie.
        let d = DndDiff::new(&a, &b, 2).unwrap();
        assert_eq!(d.means, [(0.5, 0.5)]);
        assert_eq!(d.comparison.ties, 1);
        for skip in [4, 5] {
            let e = DndDiff::new(&a, &b, skip).unwrap_err().to_string();
            assert!(e.contains(": x: "), "{e}");
        }
    }

    #[test]
    fn item_means_average_across_scores() {
        let score = |items: Vec<f64>| Score {
            label: "x".into(),
            metric: "acc".into(),
            value: 0.0,
            stderr: 0.0,
            n: items.len(),
            wall_s: 0.0,
            items,
        };
        let m = item_means(&[score(vec![1.0, 0.0, 1.0]), score(vec![0.0, 0.0, 1.0])]);
        assert_eq!(m, [0.5, 0.0, 1.0]);
    }
}
