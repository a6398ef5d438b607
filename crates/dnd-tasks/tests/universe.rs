//! The task universe on the real data: the committed suite is what a scan of the data gives, it meets
//! the size goals, holds the known defects out, and every task loads and splits.

mod common;

use std::collections::BTreeSet;

use common::data_root;
use dnd_tasks::{scan_universe, suite, Body, Part, SplitConfig, Template};

#[test]
fn the_committed_universe_is_what_the_scan_gives() {
    let Some(root) = data_root() else { return };
    assert_eq!(
        suite("universe").unwrap(),
        scan_universe(&root).unwrap(),
        "rewrite it: dnd tasks --scan-universe > crates/dnd-tasks/suites/universe.toml"
    );
}

#[test]
fn the_universe_is_large_tagged_and_free_of_known_defects() {
    let tasks = suite("universe").unwrap();
    let names: BTreeSet<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let datasets: BTreeSet<&str> = tasks.iter().map(|t| t.dataset.as_str()).collect();
    assert_eq!(names.len(), tasks.len(), "names are unique");
    assert!(tasks.len() >= 250, "{} tasks", tasks.len());
    assert!(datasets.len() >= 60, "{} datasets", datasets.len());
    assert!(
        !names.iter().any(|n| n.contains("quarel")),
        "quarel's labels are wrong"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("t0.wiki_qa_Topic")),
        "8-row files are out"
    );
    // Social-IQA templates are held out with the siqa task.
    for t in tasks
        .iter()
        .filter(|t| t.name.starts_with("t0.social_i_qa"))
    {
        assert_eq!(t.dataset, "social_i_qa");
    }
    assert_eq!(
        tasks.iter().find(|t| t.name == "siqa").unwrap().dataset,
        "social_i_qa"
    );
    // BIG-Bench Hard tasks share their BIG-bench task's tag with the Gauntlet's copy.
    let tag = |n: &str| &tasks.iter().find(|t| t.name == n).unwrap().dataset;
    assert_eq!(
        tag("bbh.dyck_languages"),
        tag("gauntlet.bigbench_dyck_languages")
    );
    assert_eq!(
        tag("bbh.logical_deduction_five_objects"),
        tag("logical_deduction")
    );
}

#[test]
fn every_universe_task_loads_and_splits_with_data_to_train_and_score() {
    let Some(root) = data_root() else { return };
    for task in suite("universe").unwrap() {
        let s = task.splits(&root, &SplitConfig::default()).unwrap();
        for part in [Part::AdapterTrain, Part::Prompts, Part::Test] {
            assert!(s.part(part).len() >= 10, "{}: {:?}", task.name, part);
        }
        if task.template == Template::LabelSet {
            let Body::MultipleChoice { choices, .. } = &s.test[0].body else {
                panic!("{}: a label set is multiple choice", task.name)
            };
            assert!(choices.len() >= 2, "{}", task.name);
        }
        if task.name.starts_with("t0.") {
            let (_, answer) = s.adapter_train[0].training_pair();
            assert!(!answer.contains("<|endoftext|>"), "{}: {answer}", task.name);
        }
    }
}
