//! The task registry: which files each task reads, in what role, how it is rendered and scored,
//! and why those sources were chosen.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::example::Example;
use crate::layouts::{import, Layout};
use crate::split::{split, Part, Role, Shares, SplitConfig, Splits};
use crate::templates::Template;

/// Where the shared data lives relative to the working directory by default; callers (the CLI's
/// `--data DIR` / `DND_DATA`) pass another root.
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// How a task is scored (task files name it as [`Metric::name`] says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Log-likelihood multiple choice reporting lm-eval's `acc` and `acc_norm`.
    #[serde(rename = "acc_norm")]
    AccAndAccNorm,
    /// Log-likelihood multiple choice reporting `acc` only (as lm-eval's task does).
    #[serde(rename = "acc")]
    Acc,
    /// Greedy generation, answer extraction, exact match (GSM8K).
    #[serde(rename = "exact_match")]
    ExactMatch,
    /// Generated code run against the tests.
    #[serde(rename = "pass@1")]
    PassAt1,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::AccAndAccNorm => "acc_norm",
            Metric::Acc => "acc",
            Metric::ExactMatch => "exact_match",
            Metric::PassAt1 => "pass@1",
        }
    }

    /// Whether this metric can score the examples `template` makes from `layout`: accuracy for
    /// multiple choice, exact match for generation, pass@1 for code.
    pub fn fits(self, template: Template, layout: Layout) -> bool {
        let family = |m: Metric| match m {
            Metric::AccAndAccNorm | Metric::Acc => 0,
            Metric::ExactMatch => 1,
            Metric::PassAt1 => 2,
        };
        family(self) == family(Metric::default_for(template, layout))
    }

    /// What a task is scored by when its definition does not say: code runs its tests, generation
    /// is matched exactly, multiple choice reports accuracy.
    pub fn default_for(template: Template, layout: Layout) -> Metric {
        match (template, layout) {
            (Template::LabelSet | Template::PubmedQa, _) => Metric::Acc,
            (Template::HumanEval, _) | (_, Layout::HumanEval) => Metric::PassAt1,
            (Template::Gsm8k, _)
            | (Template::Gauntlet, Layout::Adapters)
            | (
                _,
                Layout::GauntletGen | Layout::GauntletLm | Layout::PromptCompletion | Layout::Bbh,
            ) => Metric::ExactMatch,
            _ => Metric::Acc,
        }
    }
}

/// One file of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Relative to the data root (or absolute).
    pub path: PathBuf,
    pub layout: Layout,
    pub role: Role,
}

/// A task's full definition: what a task file entry becomes and what a collection records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    /// The source dataset. Tasks of one dataset share inputs (two prompt templates of one
    /// dataset), so held-out experiments hold out whole datasets.
    pub dataset: String,
    pub template: Template,
    pub metric: Metric,
    pub sources: Vec<Source>,
    /// Pool shares of this task's split, instead of the split configuration's (`split` in files).
    #[serde(default, rename = "split", skip_serializing_if = "Option::is_none")]
    pub shares: Option<Shares>,
    /// Why these sources and this rendering.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

impl Task {
    /// A task from a file a user brings (a Hugging Face style JSONL for one of the templates, or
    /// any Gauntlet/LLM-Adapters file with [`Template::Gauntlet`]), split as a pool.
    pub fn custom(name: &str, template: Template, layout: Layout, path: &Path) -> Task {
        Task {
            name: name.to_string(),
            dataset: name.to_string(),
            template,
            metric: Metric::default_for(template, layout),
            sources: vec![Source {
                path: path.to_path_buf(),
                layout,
                role: Role::Pool,
            }],
            shares: None,
            notes: format!("user file {}", path.display()),
        }
    }

    /// Whether `other` reads the same data the same way (sources, rendering, split): what decides a
    /// collection's runs; its name, notes, metric and dataset tag may differ.
    pub fn same_data(&self, other: &Task) -> bool {
        self.sources == other.sources
            && self.template == other.template
            && self.shares == other.shares
    }

    /// The same task, tagged with another source dataset.
    pub fn with_dataset(self, dataset: &str) -> Task {
        Task {
            dataset: dataset.to_string(),
            ..self
        }
    }

    /// Whether every source file exists under `root`.
    pub fn available(&self, root: &Path) -> bool {
        self.sources.iter().all(|s| root.join(&s.path).is_file())
    }

    /// Every example of every source, tagged with its source's role. All-or-nothing.
    pub fn load(&self, root: &Path) -> Result<Vec<(Role, Example)>> {
        let mut out = Vec::new();
        for s in &self.sources {
            let name = s.path.to_string_lossy();
            let examples = import(self.template, s.layout, &root.join(&s.path), &name)?;
            out.extend(examples.into_iter().map(|e| (s.role, e)));
        }
        Ok(out)
    }

    /// The task cut into its parts under `cfg`, with this task's own pool shares where it has them.
    pub fn splits(&self, root: &Path, cfg: &SplitConfig) -> Result<Splits> {
        let cfg = match self.shares {
            Some(pool) => &SplitConfig {
                pool,
                ..cfg.clone()
            },
            None => cfg,
        };
        Ok(split(&self.name, self.load(root)?, cfg))
    }

    /// The unlabeled prompts of split part `part` under the default split: what a generator is
    /// conditioned on.
    pub fn prompts(&self, root: &Path, part: Part) -> Result<Vec<String>> {
        let splits = self.splits(root, &SplitConfig::default())?;
        Ok(splits.part(part).iter().map(|e| e.prompt.clone()).collect())
    }

    /// Refuse sources that differ from the hashes `recorded` (by [`Task::source_hashes`]).
    pub fn check_sources(&self, root: &Path, recorded: &[String]) -> Result<()> {
        let now = self.source_hashes(root)?;
        if now.len() != recorded.len() {
            return Err(Error::SourceChanged {
                task: self.name.clone(),
                path: root.to_path_buf(),
                recorded: format!("{} source files", recorded.len()),
                now: format!("{} source files", now.len()),
            });
        }
        for ((s, now), recorded) in self.sources.iter().zip(now).zip(recorded) {
            if now != *recorded {
                return Err(Error::SourceChanged {
                    task: self.name.clone(),
                    path: root.join(&s.path),
                    recorded: recorded.clone(),
                    now,
                });
            }
        }
        Ok(())
    }

    /// The hex sha256 of each source file, in source order: what a collection pins.
    pub fn source_hashes(&self, root: &Path) -> Result<Vec<String>> {
        self.sources
            .iter()
            .map(|s| Ok(dnd_io::sha256_file(&root.join(&s.path))?))
            .collect()
    }
}

fn task(
    name: &str,
    template: Template,
    metric: Metric,
    sources: &[(&str, Layout, Role)],
    notes: &str,
) -> Task {
    Task {
        name: name.to_string(),
        dataset: name.to_string(),
        template,
        metric,
        sources: sources
            .iter()
            .map(|&(path, layout, role)| Source {
                path: PathBuf::from(path),
                layout,
                role,
            })
            .collect(),
        shares: None,
        notes: notes.to_string(),
    }
}

/// The built-in tasks: the paper's common-sense seven, SIQA, COPA, CommonsenseQA, GSM8K, HumanEval.
pub fn builtin_tasks() -> Vec<Task> {
    use Layout as L;
    use Metric as M;
    use Role as R;
    use Template as T;
    let arc_note =
        "Official AI2 ARC JSONL re-rendered with lm-eval's template: Test is scored, Dev \
                    selects models. LLM-Adapters' train file (the official ARC train split) feeds \
                    adapter-train and prompts; its questions also in Test or Dev are dropped.";
    vec![
        task(
            "arc_easy",
            T::Arc,
            M::AccAndAccNorm,
            &[
                ("arc/ARC-Easy-Test.jsonl", L::Arc, R::Test),
                ("arc/ARC-Easy-Dev.jsonl", L::Arc, R::Validation),
                ("llm-adapters/ARC-Easy/train.json", L::Adapters, R::Train),
            ],
            arc_note,
        ),
        task(
            "arc_challenge",
            T::Arc,
            M::AccAndAccNorm,
            &[
                ("arc/ARC-Challenge-Test.jsonl", L::Arc, R::Test),
                ("arc/ARC-Challenge-Dev.jsonl", L::Arc, R::Validation),
                (
                    "llm-adapters/ARC-Challenge/train.json",
                    L::Adapters,
                    R::Train,
                ),
            ],
            arc_note,
        ),
        task(
            "boolq",
            T::Boolq,
            M::Acc,
            &[("boolq/val.jsonl", L::Hf, R::Pool)],
            "SuperGLUE validation is the only labelled BoolQ here with the passages lm-eval's \
             prompt needs (LLM-Adapters' BoolQ has questions only), so it is split.",
        ),
        task(
            "hellaswag",
            T::Hellaswag,
            M::AccAndAccNorm,
            &[(
                "hellaswag/hellaswag_val_full.txt.bz2",
                L::HellaswagText,
                R::Pool,
            )],
            "All 10042 validation items, split. lm-eval's preprocess is applied; the text file \
             lacks the ctx_a/ctx_b boundary, so ctx_b (capitalised by lm-eval) is taken to be the \
             trailing lower-case fragment after the last sentence.",
        ),
        task(
            "piqa",
            T::Piqa,
            M::AccAndAccNorm,
            &[(
                "gauntlet/commonsense_reasoning/piqa.jsonl",
                L::GauntletMc,
                R::Pool,
            )],
            "Gauntlet PIQA validation (goal recovered from `Question: {goal}\\n`), split.",
        ),
        task(
            "siqa",
            T::Siqa,
            M::Acc,
            &[("llm-adapters/social_i_qa/test.json", L::Adapters, R::Pool)],
            "LLM-Adapters Social-IQA (the validation set) keeps all three answers; the Gauntlet \
             file keeps only two, so it is not used. Its question is `context question` joined \
             by one space, which is exactly lm-eval's `{{context}} {{question}}`. Its dataset \
             is social_i_qa, as the T0 templates of Social-IQA name it.",
        )
        .with_dataset("social_i_qa"),
        task(
            "winogrande",
            T::Winogrande,
            M::Acc,
            &[("llm-adapters/winogrande/test.json", L::Adapters, R::Pool)],
            "LLM-Adapters WinoGrande (the dev set) keeps the raw sentence with its blank, which \
             is the conditioning prompt; its partial-scoring contexts equal the Gauntlet schema \
             file's. Split.",
        ),
        task(
            "openbookqa",
            T::OpenBookQa,
            M::AccAndAccNorm,
            &[
                (
                    "gauntlet/commonsense_reasoning/openbook_qa.jsonl",
                    L::GauntletMc,
                    R::Test,
                ),
                ("llm-adapters/openbookqa/train.json", L::Adapters, R::Train),
            ],
            "Gauntlet OpenBookQA is the official test (500) and is scored; LLM-Adapters' train \
             file (official train) gives adapter-train, prompts and validation.",
        ),
        task(
            "copa",
            T::Copa,
            M::Acc,
            &[(
                "gauntlet/commonsense_reasoning/copa.jsonl",
                L::GauntletMc,
                R::Pool,
            )],
            "Gauntlet COPA (100 items; premise and connector recovered from `{premise}, \
             because`), split. Not shipped in ../shared/data; reads it when present.",
        ),
        task(
            "commonsense_qa",
            T::CommonsenseQa,
            M::Acc,
            &[(
                "gauntlet/commonsense_reasoning/commonsense_qa.jsonl",
                L::GauntletMc,
                R::Pool,
            )],
            "Gauntlet CommonsenseQA, split. The Gauntlet keeps 4 of the 5 options, so the \
             rendering lists 4 (lm-eval lists 5). Not shipped in ../shared/data.",
        ),
        gauntlet_mc(
            "math_qa",
            "symbolic_problem_solving/math_qa.jsonl",
            "Gauntlet MathQA (2983 items, 4 options), split. An extra training task for the \
             generator (more tasks to interpolate between); scored as the Gauntlet file is written.",
        ),
        gauntlet_mc(
            "logical_deduction",
            "symbolic_problem_solving/bigbench_logical_deduction.jsonl",
            "Gauntlet BIG-bench logical deduction (1500 items), split. An extra training task for \
             the generator; scored as the Gauntlet file is written.",
        )
        .with_dataset("bigbench_logical_deduction"),
        gauntlet_mc(
            "pii_classification",
            "safety/enterprise_pii_classification.jsonl",
            "Gauntlet enterprise PII classification (3395 items, 2 options), split. An extra \
             training task for the generator; scored as the Gauntlet file is written.",
        ),
        task(
            "pubmedqa",
            T::PubmedQa,
            M::Acc,
            &[(
                "gauntlet/reading_comprehension/pubmed_qa_labeled.jsonl",
                L::GauntletLm,
                R::Pool,
            )],
            "Gauntlet PubMedQA (the 1000 labelled items), re-rendered with lm-eval's template \
             (the Gauntlet's abstract text, its section labels kept), split. A yes/no reading task: \
             an extra training task near BoolQ for the generator.",
        ),
        task(
            "gsm8k",
            T::Gsm8k,
            M::ExactMatch,
            &[
                ("gsm8k/test.jsonl", L::Hf, R::Test),
                ("gsm8k/train.jsonl", L::Hf, R::Train),
            ],
            "Official GSM8K: test scored; train gives adapter-train, prompts and validation.",
        ),
        task(
            "humaneval",
            T::HumanEval,
            M::PassAt1,
            &[(
                "gauntlet/programming/human_eval.jsonl",
                L::HumanEval,
                R::Pool,
            )],
            "The 164 HumanEval problems (the human-eval package's HumanEval.jsonl.gz reads with \
             the same layout), split.",
        ),
    ]
}

/// A Gauntlet multiple-choice file used as it is written (query, then each choice), split as a pool.
fn gauntlet_mc(name: &str, file: &str, notes: &str) -> Task {
    task(
        name,
        Template::Gauntlet,
        Metric::AccAndAccNorm,
        &[(&format!("gauntlet/{file}"), Layout::GauntletMc, Role::Pool)],
        notes,
    )
}

/// A built-in task by name.
pub fn find_task(name: &str) -> Result<Task> {
    builtin_tasks()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::UnknownTask(name.to_string()))
}

/// The prompts of a built-in task's split `part` under the default split, as text: what a generator is
/// conditioned on, with no labels.
pub fn task_prompts(task: &str, data: &Path, part: Part) -> Result<Vec<String>> {
    find_task(task)?.prompts(data, part)
}
