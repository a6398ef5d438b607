//! A user's own tasks, written as JSONL files and a task file, through the whole loop on the tiny
//! model: collect -> train -> generate -> eval (the leave-one-out experiment runs all four). Then a
//! source file is edited and every later stage refuses the collection, which stays as it was.

use dnd_collect::{collect, CollectPlan, CollectionIndex};
use dnd_evaluate::ScoreEvent;
use dnd_experiment::{run, Event, ExperimentConfig};
use dnd_tasks::read_task_file;
use std::path::Path;

mod common;
use common::{context, paths, small_experiment};

/// `n` multiple-choice items `{query, choices, gold}`: the gold choice is named in the query.
fn mc_file(path: &Path, word: &str, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let gold = i % 2;
            let choices = if gold == 0 {
                ["red", "blue"]
            } else {
                ["blue", "red"]
            };
            serde_json::json!({
                "query": format!("{word} {i} is red. Which {word}?"),
                "choices": choices,
                "gold": gold,
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

const TASKS: &str = r#"
[[task]]
name = "fruit"
file = "fruit.jsonl"
layout = "multiple-choice"

[[task]]
name = "fruit_again"
dataset = "fruit"
file = "fruit.jsonl"
layout = "multiple-choice"
split = { test = 0.5, adapter_train = 0.3, prompts = 0.1, validation = 0.1 }

[[task]]
name = "cars"
dataset = "vehicles"
file = "cars.jsonl"
layout = "multiple-choice"
metric = "acc_norm"
"#;

#[test]
fn a_user_task_file_goes_through_collect_train_generate_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let llm = dnd_testkit::tiny_llm(&model_dir);
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    mc_file(&mine.join("fruit.jsonl"), "fruit", 60);
    mc_file(&mine.join("cars.jsonl"), "car", 60);
    std::fs::write(mine.join("tasks.toml"), TASKS).unwrap();
    let tasks = read_task_file(&mine.join("tasks.toml")).unwrap();

    // The data root is irrelevant to a task file's tasks: their paths are resolved against the file.
    let root = tmp.path().join("no-data-here");
    let coll = tmp.path().join("collection");
    let plan = CollectPlan {
        tasks: tasks.clone(),
        ..dnd_testkit::tiny_collect_plan(&coll, &root, &[])
    };
    let base = dnd_testkit::test_base_model(&model_dir.display().to_string());
    collect(&llm.model, &llm.tokenizer, &base, &plan, &mut |_| {}).unwrap();
    let index = CollectionIndex::read(&coll).unwrap();
    assert_eq!(
        index.resolve(&[], &root).unwrap(),
        tasks,
        "the definitions are recorded"
    );
    assert_eq!(
        index.tasks[2].definition.as_ref().unwrap().dataset,
        "vehicles"
    );
    assert_eq!(index.tasks[0].sources_sha256.len(), 1);

    let cfg = ExperimentConfig {
        adapters: 1,
        decoder_hidden: 16,
        head: dnd_decode::Head::Basis { k: 2 },
        multitask_steps: 2,
        ..small_experiment(&coll, &root, 2)
    };
    let paths = paths(tmp.path());
    let ctx = context(&llm, &model_dir);
    let mut scored = 0;
    let report = run(&cfg, &paths, &ctx, &mut |e| {
        if let Event::Score(ScoreEvent::Done(_)) = e {
            scored += 1
        }
    })
    .unwrap();
    let targets: Vec<&str> = report.targets.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["fruit", "fruit_again", "cars"]);
    for r in &report.targets {
        assert_eq!((r.n, r.dnd.len()), (4, 1));
        assert!((0.0..=1.0).contains(&r.dnd_mean));
    }
    // base and 3 LoRAs on 3 targets, then per target 1 generated adapter, the uniform average and
    // the multi-task LoRA.
    assert_eq!(scored, 3 + 3 * 3 + 3 * 3);
    // Tasks of one dataset are held out together: fruit's baselines never saw fruit_again.
    let fruit = report.targets.iter().find(|r| r.target == "fruit").unwrap();
    let trained: Vec<&str> = fruit
        .training_loras
        .iter()
        .map(|s| s.label.as_str())
        .collect();
    assert_eq!(trained, ["lora-cars"]);
    assert_eq!(fruit.nearest_task, "cars");
    for r in &report.targets {
        let m = r.multitask.as_ref().expect("a multi-task row");
        assert_eq!(m.label, format!("{}/multitask", r.target));
    }
    let md = std::fs::read_to_string(paths.results.join("report.md")).unwrap();
    assert!(md.contains("| multi-task LoRA |"), "{md}");
    assert!(md.contains("vs multi-task LoRA"), "{md}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(paths.work.join("adapters/fruit/multitask/manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["task"], "cars");
    let cars = report.targets.iter().find(|r| r.target == "cars").unwrap();
    assert_eq!(
        cars.base.metric, "acc_norm",
        "the task file's metric is scored"
    );

    // The user edits a source file: the collection is refused by name, and nothing is rewritten.
    let before = dnd_testkit::files(&coll);
    mc_file(&mine.join("cars.jsonl"), "car", 61);
    let err = run(&cfg, &paths, &ctx, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("task `cars`") && err.contains("cars.jsonl") && err.contains("changed"),
        "{err}"
    );
    let err = collect(&llm.model, &llm.tokenizer, &base, &plan, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("cars"), "{err}");
    assert_eq!(
        dnd_testkit::files(&coll),
        before,
        "the collection is untouched"
    );
}
