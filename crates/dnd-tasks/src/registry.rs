//! The task registry: which files each task reads, in what role, how it is rendered and scored,
//! and why those sources were chosen.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::example::Example;
use crate::layouts::{import, Layout};
use crate::split::{split, Role, SplitConfig, Splits};
use crate::templates::Template;

/// Where the shared data lives relative to the working directory by default; callers (the CLI's
/// `--data DIR` / `DND_DATA`) pass another root.
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Log-likelihood multiple choice reporting lm-eval's `acc` and `acc_norm`.
    AccAndAccNorm,
    /// Log-likelihood multiple choice reporting `acc` only (as lm-eval's task does).
    Acc,
    /// Greedy generation, answer extraction, exact match (GSM8K).
    ExactMatch,
    /// Generated code run against the tests.
    PassAt1,
}

/// One file of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Relative to the data root (or absolute).
    pub path: PathBuf,
    pub layout: Layout,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub template: Template,
    pub metric: Metric,
    pub sources: Vec<Source>,
    /// Why these sources and this rendering.
    pub notes: String,
}

impl Task {
    /// A task from a file a user brings (a Hugging Face style JSONL for one of the templates, or
    /// any Gauntlet/LLM-Adapters file with [`Template::Gauntlet`]), split as a pool.
    pub fn custom(name: &str, template: Template, layout: Layout, path: &Path) -> Task {
        Task {
            name: name.to_string(),
            template,
            metric: match template {
                Template::Gsm8k => Metric::ExactMatch,
                Template::HumanEval => Metric::PassAt1,
                _ => Metric::Acc,
            },
            sources: vec![Source {
                path: path.to_path_buf(),
                layout,
                role: Role::Pool,
            }],
            notes: format!("user file {}", path.display()),
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

    pub fn splits(&self, root: &Path, cfg: &SplitConfig) -> Result<Splits> {
        Ok(split(&self.name, self.load(root)?, cfg))
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
             by one space, which is exactly lm-eval's `{{context}} {{question}}`.",
        ),
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
        ),
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

/// A built-in task by name.
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

pub fn find_task(name: &str) -> Result<Task> {
    builtin_tasks()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::UnknownTask(name.to_string()))
}

/// The prompts of a built-in task's split `part` under the default split, as text: what a generator is
/// conditioned on, with no labels.
pub fn task_prompts(task: &str, data: &Path, part: crate::split::Part) -> Result<Vec<String>> {
    let splits = find_task(task)?.splits(data, &SplitConfig::default())?;
    Ok(splits.part(part).iter().map(|e| e.prompt.clone()).collect())
}
