//! The task universe: every usable task of `../shared/data` (its MANIFEST.md), built by scanning the
//! data once. `dnd tasks --scan-universe` writes what [`scan_universe`] finds as the suite file
//! shipped with dnd (`suites/universe.toml`), so the universe is reviewed, versioned and the same on
//! every machine; a test checks that the file still is what the scan gives.
//!
//! Choices, each from a measured property of the data:
//! - T0 (`t0/`): one task per prompt template, tagged with its source dataset (templates of one
//!   dataset share inputs, so they are held out together). A template whose answers take at most
//!   [`T0_MAX_LABELS`] distinct values is multiple choice over them, the others generation. Left out:
//!   the quarel templates (their labels are wrong, MANIFEST.md) and files under [`MIN_ITEMS`] items
//!   distinct problems (the six 8-row wiki_qa templates, paws' 91-row paraphrase task, and templates
//!   asking for the title of one of a dozen film plots).
//! - Every task added is split 40% adapter-train, 20% prompts, 10% validation, 30% test.
//! - BIG-Bench Hard (`bbh/`): one task per file, multiple choice when its targets take at most
//!   [`BBH_MAX_LABELS`] values (the `(A)`-`(R)` option letters, True/False, ...), else generation.
//! - Gauntlet (`gauntlet/`): every file of at least [`MIN_ITEMS`] items that is not already a built-in
//!   task or another rendering of one (the HumanEval variants, GSM8K, the small copies, the MATH
//!   subsets); BIG-bench files share a dataset tag with the BIG-Bench Hard tasks drawn from them.
//! - LLM-Adapters arithmetic (AddSub, MultiArith, SingleEq, MAWPS; all MAWPS problems, so one dataset),
//!   Code Alpaca (its larger file), and the built-in tasks whose files are present.

use std::path::Path;

use crate::error::Result;
use crate::example::Body;
use crate::layouts::Layout;
use crate::registry::{builtin_tasks, Metric, Source, Task};
use crate::split::{Role, Shares};
use crate::templates::Template;

/// Fewer items than this cannot give both an adapter-train part and a scored part worth having.
pub const MIN_ITEMS: usize = 100;
/// T0 templates with at most this many distinct answers are classification (2-5 in practice; the
/// next smallest, 11-15, are titles and stories of the same few films).
pub const T0_MAX_LABELS: usize = 10;
/// BIG-Bench Hard targets: up to 18 option letters.
pub const BBH_MAX_LABELS: usize = 20;

/// The 32 source datasets of `t0/`, as the file names begin.
const T0_DATASETS: [&str; 32] = [
    "adversarial_qa_dbert",
    "adversarial_qa_dbidaf",
    "adversarial_qa_droberta",
    "ag_news",
    "amazon_polarity",
    "app_reviews",
    "cnn_dailymail_3_0_0",
    "common_gen",
    "cosmos_qa",
    "dream",
    "duorc_ParaphraseRC",
    "duorc_SelfRC",
    "gigaword",
    "glue_mrpc",
    "glue_qqp",
    "kilt_tasks_hotpotqa",
    "multi_news",
    "paws_labeled_final",
    "qasc",
    "quarel",
    "quartz",
    "quoref",
    "ropes",
    "samsum",
    "sciq",
    "social_i_qa",
    "wiki_bio",
    "wiki_hop_original",
    "wiki_qa",
    "wiqa",
    "xsum",
    "yelp_review_full",
];

/// Gauntlet files of the universe (relative to `gauntlet/`): those of at least [`MIN_ITEMS`] items
/// that no built-in task reads and that are not another copy of one (see the module notes).
const GAUNTLET: [&str; 25] = [
    "commonsense_reasoning/bigbench_strange_stories.jsonl",
    "language_understanding/bigbench_conceptual_combinations.jsonl",
    "language_understanding/bigbench_conlang_translation.jsonl",
    "language_understanding/bigbench_language_identification.jsonl",
    "language_understanding/lambada_openai.jsonl",
    "language_understanding/winograd_wsc.jsonl",
    "reading_comprehension/agi_eval_lsat_lr.jsonl",
    "reading_comprehension/agi_eval_lsat_rc.jsonl",
    "reading_comprehension/agi_eval_sat_en.jsonl",
    "reading_comprehension/bigbench_understanding_fables.jsonl",
    "symbolic_problem_solving/agi_eval_lsat_ar.jsonl",
    "symbolic_problem_solving/agi_eval_sat_math.jsonl",
    "symbolic_problem_solving/aqua.jsonl",
    "symbolic_problem_solving/bigbench_cs_algorithms.jsonl",
    "symbolic_problem_solving/bigbench_dyck_languages.jsonl",
    "symbolic_problem_solving/bigbench_operators.jsonl",
    "symbolic_problem_solving/math.jsonl",
    "symbolic_problem_solving/simple_arithmetic_nospaces.jsonl",
    "symbolic_problem_solving/simple_arithmetic_withspaces.jsonl",
    "symbolic_problem_solving/svamp.jsonl",
    "world_knowledge/bigbench_misconceptions.jsonl",
    "world_knowledge/bigbench_movie_recommendation.jsonl",
    "world_knowledge/bigbench_qa_wikidata.jsonl",
    "world_knowledge/jeopardy_all.jsonl",
    "world_knowledge/triviaqa_sm_sub.jsonl",
];

/// LLM-Adapters arithmetic files (name, path): all MAWPS problems, so one dataset.
const MAWPS: [(&str, &str); 4] = [
    ("addsub", "llm-adapters/AddSub/test.json"),
    ("multiarith", "llm-adapters/MultiArith/test.json"),
    ("singleeq", "llm-adapters/SingleEq/test.json"),
    ("mawps", "llm-adapters/mawps/test.json"),
];

/// The split of every task the universe adds: most of its files hold 200-250 items, so the default
/// 10% for prompts would leave ~20, fewer than one batch of the generator's 32. 40% trains adapters,
/// 20% is drawn as prompts, 30% is scored (BIG-Bench Hard's 250: 100, 50, 75).
const UNIVERSE_SHARES: Shares = Shares {
    test: 0.3,
    adapter_train: 0.4,
    prompts: 0.2,
    validation: 0.1,
};

/// Every task of the universe under `root`, in a fixed order: built-ins, T0, BIG-Bench Hard, Gauntlet,
/// arithmetic, code.
pub fn scan_universe(root: &Path) -> Result<Vec<Task>> {
    // Each candidate with the label count under which it becomes multiple choice (none: as defined).
    let mut tasks: Vec<(Task, Option<usize>)> =
        builtin_tasks().into_iter().map(|t| (t, None)).collect();
    for path in listing(root, "t0", "jsonl")? {
        let stem = stem(&path);
        let dataset = T0_DATASETS
            .iter()
            .filter(|d| stem.starts_with(*d))
            .max_by_key(|d| d.len())
            .copied()
            .unwrap_or(stem);
        if dataset == "quarel" {
            continue;
        }
        let task = one_file(
            &format!("t0.{stem}"),
            dataset,
            &path,
            Layout::PromptCompletion,
        );
        tasks.push((task, Some(T0_MAX_LABELS)));
    }
    for path in listing(root, "bbh", "json")? {
        let stem = stem(&path);
        let dataset = format!("bigbench_{}", bbh_family(stem));
        let task = one_file(&format!("bbh.{stem}"), &dataset, &path, Layout::Bbh);
        tasks.push((task, Some(BBH_MAX_LABELS)));
    }
    for file in GAUNTLET {
        let path = format!("gauntlet/{file}");
        if !root.join(&path).is_file() {
            continue;
        }
        let stem = stem(&path);
        let dataset = stem
            .trim_end_matches("_withspaces")
            .trim_end_matches("_nospaces");
        let layout = gauntlet_layout(root, &path)?;
        let task = one_file(&format!("gauntlet.{stem}"), dataset, &path, layout);
        tasks.push((task, None));
    }
    for (name, path) in MAWPS {
        let task = one_file(&format!("math.{name}"), "mawps", path, Layout::Adapters);
        tasks.push((task, None));
    }
    let code = "code-alpaca/new_codealpaca.json";
    let task = one_file("code_alpaca", "code_alpaca", code, Layout::Adapters);
    tasks.push((task, None));
    tasks
        .into_iter()
        .filter(|(t, _)| t.available(root))
        .map(|(t, max_labels)| inspect(t, root, max_labels))
        .filter_map(Result::transpose)
        .collect()
}

/// The files `dir/*.ext` under `root`, relative to it, sorted.
fn listing(root: &Path, dir: &str, ext: &str) -> Result<Vec<String>> {
    let full = root.join(dir);
    let mut out: Vec<String> = std::fs::read_dir(&full)
        .map_err(dnd_io::io_err::<crate::Error>(&full))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&format!(".{ext}")))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    Ok(out)
}

fn stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.split('.').next().unwrap_or(name)
}

/// The BIG-bench task a BIG-Bench Hard file is drawn from (its three- to seven-object variants are
/// one task there).
fn bbh_family(stem: &str) -> &str {
    ["logical_deduction", "tracking_shuffled_objects"]
        .into_iter()
        .find(|f| stem.starts_with(f))
        .unwrap_or(stem)
}

/// A one-file pool task rendered as written, split by [`UNIVERSE_SHARES`].
fn one_file(name: &str, dataset: &str, path: &str, layout: Layout) -> Task {
    Task {
        name: name.to_string(),
        dataset: dataset.to_string(),
        template: Template::Gauntlet,
        metric: Metric::default_for(Template::Gauntlet, layout),
        sources: vec![Source {
            path: path.into(),
            layout,
            role: Role::Pool,
        }],
        shares: Some(UNIVERSE_SHARES),
        notes: String::new(),
    }
}

/// The task read once: left out (`None`) under [`MIN_ITEMS`] distinct problems (items with one key
/// are one problem: 200 T0 rows over 13 film plots are 13); multiple choice over its answers when
/// `max_labels` is given and they take at most that many values.
fn inspect(task: Task, root: &Path, max_labels: Option<usize>) -> Result<Option<Task>> {
    let examples = task.load(root)?;
    let keys: std::collections::HashSet<&str> =
        examples.iter().map(|(_, e)| e.key.as_str()).collect();
    if keys.len() < MIN_ITEMS {
        return Ok(None);
    }
    let mut answers: Vec<&str> = examples
        .iter()
        .filter_map(|(_, e)| match &e.body {
            Body::Generative { answer, .. } => Some(answer.as_str()),
            _ => None,
        })
        .collect();
    answers.sort();
    answers.dedup();
    if max_labels.is_some_and(|m| (2..=m).contains(&answers.len())) {
        let layout = task.sources[0].layout;
        return Ok(Some(Task {
            template: Template::LabelSet,
            metric: Metric::default_for(Template::LabelSet, layout),
            ..task
        }));
    }
    Ok(Some(task))
}

/// A Gauntlet file's layout, read from the fields of its first record.
fn gauntlet_layout(root: &Path, path: &str) -> Result<Layout> {
    use std::io::BufRead;
    let full = root.join(path);
    let file = std::fs::File::open(&full).map_err(dnd_io::io_err::<crate::Error>(&full))?;
    let first: serde_json::Value = std::io::BufReader::new(file)
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(&l.ok()?).ok())
        .ok_or_else(|| crate::Error::File {
            path: full.clone(),
            msg: "its first line is not a JSON record".into(),
        })?;
    let has = |k: &str| first.get(k).is_some();
    Ok(if has("context_options") {
        Layout::GauntletSchema
    } else if has("choices") {
        Layout::GauntletMc
    } else if has("answer") {
        Layout::GauntletGen
    } else {
        Layout::GauntletLm
    })
}
