//! Task files: what a user writes, what it resolves to, and every way a bad one is refused with the
//! file and the entry named.

use std::path::Path;

use dnd_tasks::{
    builtin_tasks, read_task_file, Body, Catalog, Error, Layout, Metric, Part, Role, SplitConfig,
    Task, Template,
};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// 40 two-choice items `{query, choices, gold}`, as a user would export them.
fn mc_items(dir: &Path) {
    let lines: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"query": "Is {i} even?", "choices": ["yes", "no"], "gold": {}}}"#,
                i % 2
            )
        })
        .collect();
    write(dir, "items.jsonl", &(lines.join("\n") + "\n"));
}

const TOML_FILE: &str = r#"
[[task]]
name = "parity"
dataset = "numbers"
file = "items.jsonl"
layout = "multiple-choice"
split = { test = 0.5, adapter_train = 0.25, prompts = 0.125, validation = 0.125 }

[[task]]
name = "parity_gen"
sources = [{ path = "gen.jsonl", layout = "prompt-completion", role = "pool" }]
"#;

#[test]
fn a_toml_task_file_defines_tasks_with_defaults_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    mc_items(dir.path());
    write(
        dir.path(),
        "gen.jsonl",
        "{\"prompt\": \"Say hi\\n\", \"completion\": \"hi<|endoftext|>\"}\n",
    );
    let file = write(dir.path(), "tasks.toml", TOML_FILE);
    let tasks = read_task_file(&file).unwrap();
    let [parity, generative] = &tasks[..] else {
        panic!("two tasks expected")
    };
    let root = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(parity.dataset, "numbers");
    assert_eq!(parity.template, Template::Gauntlet);
    assert_eq!(parity.metric, Metric::Acc);
    assert_eq!(parity.sources[0].path, root.join("items.jsonl"));
    assert_eq!(parity.sources[0].role, Role::Pool);
    assert_eq!(generative.dataset, "parity_gen");
    assert_eq!(generative.metric, Metric::ExactMatch);

    // Paths are absolute, so any data root reads them; the task's own shares cut its 40 items.
    let splits = parity
        .splits(Path::new("/nonexistent"), &SplitConfig::default())
        .unwrap();
    assert_eq!(
        splits.test.len() + splits.adapter_train.len(),
        30,
        "{splits:?}"
    );
    assert!(!splits.prompts.is_empty());
    let all = generative.load(Path::new("/")).unwrap();
    let Body::Generative {
        context, answer, ..
    } = &all[0].1.body
    else {
        panic!("generative body expected")
    };
    assert_eq!((context.as_str(), answer.as_str()), ("Say hi", "hi"));
}

#[test]
fn json_task_files_read_like_toml_ones_and_definitions_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    mc_items(dir.path());
    let entry = r#"{"name": "parity", "file": "items.jsonl", "layout": "gauntlet-mc", "metric": "acc_norm"}"#;
    let json = format!("{{\"task\": [{entry}]}}");
    let from_json = read_task_file(&write(dir.path(), "t.json", &json)).unwrap();
    let bare = format!("[{entry}]");
    let from_bare = read_task_file(&write(dir.path(), "bare.json", &bare)).unwrap();
    assert_eq!(from_json, from_bare);
    assert_eq!(from_json[0].metric, Metric::AccAndAccNorm);
    // What a collection records reads back as the same task, built-ins included.
    for task in builtin_tasks().into_iter().chain(from_json) {
        let text = serde_json::to_string(&task).unwrap();
        let back: Task = serde_json::from_str(&text).unwrap();
        assert_eq!(back, task);
    }
}

#[test]
fn file_names_match_the_names_listings_show() {
    let quoted = |v: String| v.trim_matches('"').to_string();
    for l in [
        Layout::GauntletMc,
        Layout::Hf,
        Layout::PromptCompletion,
        Layout::HumanEval,
    ] {
        assert_eq!(quoted(serde_json::to_string(&l).unwrap()), l.name());
    }
    for t in [
        Template::OpenBookQa,
        Template::HumanEval,
        Template::Gauntlet,
    ] {
        assert_eq!(quoted(serde_json::to_string(&t).unwrap()), t.name());
    }
    for m in [Metric::AccAndAccNorm, Metric::PassAt1] {
        assert_eq!(quoted(serde_json::to_string(&m).unwrap()), m.name());
    }
}

/// The error of reading `text` as a task file (`name` picks TOML or JSON).
fn refused(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    mc_items(dir.path());
    let err = read_task_file(&write(dir.path(), name, text)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(name), "the file is named: {msg}");
    msg
}

#[test]
fn bad_task_files_name_the_file_and_the_entry() {
    let ok = "name = \"a\"\nfile = \"items.jsonl\"\nlayout = \"multiple-choice\"\n";
    let msg = refused(
        "t.toml",
        &format!("[[task]]\n{ok}\n[[task]]\nname = \"b\"\nfile = \"items.jsonl\"\n"),
    );
    assert!(
        msg.contains("task entry 2 (`b`)") && msg.contains("`layout`"),
        "{msg}"
    );
    let msg = refused(
        "t.toml",
        "[[task]]\nname = \"a\"\nfile = \"x\"\nlayout = \"tsv\"\n",
    );
    assert!(
        msg.contains("entry 1 (`a`)") && msg.contains("unknown variant `tsv`"),
        "{msg}"
    );
    let msg = refused("t.toml", "");
    assert!(msg.contains("defines no tasks"), "{msg}");
    let msg = refused("t.json", "[]");
    assert!(msg.contains("defines no tasks"), "{msg}");
    let msg = refused("t.toml", &format!("[[task]]\n{ok}\n[[task]]\n{ok}"));
    assert!(
        msg.contains("entry 2 (`a`)") && msg.contains("duplicate task name (entry 1"),
        "{msg}"
    );
    let msg = refused(
        "t.toml",
        "[[task]]\nname = \"../up\"\nfile = \"x\"\nlayout = \"schema\"\n",
    );
    assert!(msg.contains("`name` must be"), "{msg}");
    let msg = refused("t.toml", &format!("[[task]]\n{ok}colour = 1\n"));
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    let msg = refused("t.toml", &format!("[[task]]\n{ok}metric = \"pass@1\"\n"));
    assert!(
        msg.contains("metric `pass@1` cannot score") && msg.contains("takes `acc`"),
        "{msg}"
    );
    let msg = refused("t.json", "{\"task\": [}");
    assert!(msg.contains("invalid JSON"), "{msg}");
    let msg = refused("t.yaml", "task: []");
    assert!(msg.contains(".toml or .json"), "{msg}");
}

#[test]
fn a_task_file_may_not_redefine_a_built_in_task() {
    let dir = tempfile::tempdir().unwrap();
    mc_items(dir.path());
    let file = write(
        dir.path(),
        "t.toml",
        "[[task]]\nname = \"arc_easy\"\nfile = \"items.jsonl\"\nlayout = \"multiple-choice\"\n",
    );
    let err = Catalog::new(&[file]).unwrap_err();
    assert!(matches!(err, Error::DuplicateTask { .. }), "{err}");
    assert!(err.to_string().contains("t.toml"), "{err}");
}

#[test]
fn bad_records_and_changed_sources_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    mc_items(dir.path());
    write(
        dir.path(),
        "bad.jsonl",
        "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n",
    );
    let file = write(
        dir.path(),
        "t.toml",
        "[[task]]\nname = \"bad\"\nfile = \"bad.jsonl\"\nlayout = \"multiple-choice\"\n\
         [[task]]\nname = \"good\"\nfile = \"items.jsonl\"\nlayout = \"multiple-choice\"\n",
    );
    let catalog = Catalog::new(&[file]).unwrap();
    let err = catalog
        .get("bad")
        .unwrap()
        .load(Path::new("/"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("bad.jsonl: line 1: gold 2 out of range"),
        "{err}"
    );

    let good = catalog.get("good").unwrap();
    let pinned = good.source_hashes(Path::new("/")).unwrap();
    good.check_sources(Path::new("/"), &pinned).unwrap();
    write(
        dir.path(),
        "items.jsonl",
        "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n",
    );
    let err = good.check_sources(Path::new("/"), &pinned).unwrap_err();
    assert!(
        matches!(err, Error::SourceChanged { .. }) && err.to_string().contains("items.jsonl"),
        "{err}"
    );
    assert!(good.prompts(Path::new("/"), Part::Prompts).is_ok());
}

#[test]
fn label_sets_and_big_bench_hard_files_read_as_multiple_choice_or_generation() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = ["pos", "neg", "pos"]
        .iter()
        .enumerate()
        .map(|(i, a)| format!(r#"{{"prompt": "Review {i}\n", "completion": "{a}<|endoftext|>"}}"#))
        .collect();
    write(dir.path(), "t0.jsonl", &rows.join("\n"));
    let bbh = r#"{"examples": [{"input": "1 + 1 =", "target": "2"}, {"input": "2 + 2 =", "target": "4"}]}"#;
    write(dir.path(), "bbh.json", bbh);
    let file = write(
        dir.path(),
        "t.toml",
        "[[task]]\nname = \"reviews\"\nfile = \"t0.jsonl\"\nlayout = \"prompt-completion\"\ntemplate = \"label-set\"\n\
         [[task]]\nname = \"sums\"\nfile = \"bbh.json\"\nlayout = \"bbh-json\"\n",
    );
    let tasks = read_task_file(&file).unwrap();
    assert_eq!(
        (tasks[0].metric, tasks[1].metric),
        (Metric::Acc, Metric::ExactMatch)
    );
    let reviews = tasks[0].load(Path::new("/")).unwrap();
    let Body::MultipleChoice {
        context,
        choices,
        gold,
    } = &reviews[1].1.body
    else {
        panic!("a label set is multiple choice")
    };
    assert_eq!(
        (context.as_str(), choices.as_slice(), *gold),
        ("Review 1", &["neg".to_string(), "pos".to_string()][..], 0)
    );
    let sums = tasks[1].load(Path::new("/")).unwrap();
    let Body::Generative {
        context, answer, ..
    } = &sums[1].1.body
    else {
        panic!("a BIG-Bench Hard target is generated")
    };
    assert_eq!((context.as_str(), answer.as_str()), ("Q: 2 + 2 =\nA:", "4"));
    // Symbols are kept in the split key: these two must not count as one problem.
    assert_ne!(sums[0].1.key, sums[1].1.key);
}
