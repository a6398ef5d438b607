//! Result files: resuming reuses a run only under identical settings; summaries and tables.

use std::collections::BTreeMap;

use dnd_evaluate::report::{markdown, RunResult, Settings, Store};
use dnd_evaluate::{Evaluation, MetricValue, Protocol, Record};

fn settings(task: &str) -> Settings {
    Settings {
        model: "m.gguf".into(),
        adapter: None,
        adapter_sha256: None,
        task: task.into(),
        split: "test".into(),
        style: "plain".into(),
        protocol: Protocol::Loglikelihood,
        limit: Some(2),
        n: 2,
        max_new_tokens: 256,
        code_timeout_s: 10.0,
        data: "data".into(),
        split_seed: 1,
    }
}

fn run(label: &str, task: &str, acc: f64) -> RunResult {
    let record = |id: &str, v: f64| Record {
        id: id.into(),
        scores: [("acc".to_string(), v)].into(),
        logprobs: vec![-1.0, -2.0],
        output: None,
        note: None,
        tokens: 7,
    };
    let metric = MetricValue {
        value: acc,
        stderr: 0.25,
        stderr_analytic: 0.3,
        n: 2,
    };
    let eval = Evaluation {
        records: vec![record("a", 1.0), record("b", 0.0)],
        metrics: BTreeMap::from([("acc".to_string(), metric)]),
        wall_s: 4.0,
        tokens: 14,
        notes: vec![],
    };
    RunResult::new(
        label,
        settings(task),
        "acc",
        eval,
        Some("abc".into()),
        vec!["dnd".into()],
    )
}

#[test]
fn stored_runs_are_reused_only_with_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    assert!(store.load("base", &settings("boolq")).is_none());
    let r = run("base", "boolq", 0.5);
    let path = store.save(&r).unwrap();
    assert_eq!(path, dir.path().join("runs/base/boolq.json"));
    assert_eq!(store.load("base", &settings("boolq")), Some(r.clone()));
    assert!(store.load("other", &settings("boolq")).is_none());
    let mut changed = settings("boolq");
    changed.limit = Some(3);
    assert!(
        store.load("base", &changed).is_none(),
        "another limit is another run"
    );
    let mut changed = settings("boolq");
    changed.adapter_sha256 = Some("ff".into());
    assert!(
        store.load("base", &changed).is_none(),
        "a rewritten adapter is re-scored"
    );
    let mut changed = settings("boolq");
    changed.protocol = Protocol::Generative;
    assert!(store.load("base", &changed).is_none());
    // A truncated file (a killed writer of an older version) is not trusted.
    std::fs::write(&path, "{\"label\":").unwrap();
    assert!(store.load("base", &settings("boolq")).is_none());
    assert_eq!(r.s_per_100, 200.0);
    assert_eq!(r.tokens_per_s, 3.5);
}

#[test]
fn summary_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let runs = vec![
        run("base", "boolq", 0.5),
        run("base", "piqa", 0.75),
        run("ad1", "boolq", 1.0),
    ];
    store
        .write_summary(&runs, &["dnd".into(), "eval".into()])
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 3);
    assert!(
        json["runs"][0].get("records").is_none(),
        "records stay in the run files"
    );
    assert_eq!(json["runs"][2]["records_file"], "runs/ad1/boolq.json");
    assert_eq!(json["command"][1], "eval");
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert_eq!(md, markdown(&runs));
    assert!(
        md.contains("| adapter | boolq (acc, n=2) | piqa (acc, n=2) |"),
        "{md}"
    );
    assert!(md.contains("| base | 50.0 ± 25.0 | 75.0 ± 25.0 |"), "{md}");
    assert!(md.contains("| ad1 | 100.0 ± 25.0 | - |"), "{md}");
    assert!(md.contains("| base | 200.0 | 200.0 |"), "{md}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
