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
    assert!(store.load("base", &settings("boolq")).unwrap().is_none());
    let r = run("base", "boolq", 0.5);
    let path = store.save(&r).unwrap();
    assert_eq!(path, dir.path().join("runs/base/boolq.json"));
    assert_eq!(
        store.load("base", &settings("boolq")).unwrap(),
        Some(r.clone())
    );
    assert!(store.load("other", &settings("boolq")).unwrap().is_none());
    let mut changed = settings("boolq");
    changed.limit = Some(3);
    assert!(
        store.load("base", &changed).unwrap().is_none(),
        "another limit is another run"
    );
    let mut changed = settings("boolq");
    changed.adapter_sha256 = Some("ff".into());
    assert!(
        store.load("base", &changed).unwrap().is_none(),
        "a rewritten adapter is re-scored"
    );
    let mut changed = settings("boolq");
    changed.protocol = Protocol::Generative;
    assert!(store.load("base", &changed).unwrap().is_none());
    // A truncated file (a killed writer of an older version) is not trusted.
    std::fs::write(&path, "{\"label\":").unwrap();
    assert!(store.load("base", &settings("boolq")).unwrap().is_none());
    assert_eq!(r.s_per_100, 200.0);
    assert_eq!(r.tokens_per_s, 3.5);
}

/// Settings of `adapter` at `path` with weights hashing to `sha`.
fn with_adapter(path: &str, sha: Option<&str>) -> Settings {
    Settings {
        adapter: Some(path.into()),
        adapter_sha256: sha.map(String::from),
        ..settings("boolq")
    }
}

#[test]
fn runs_are_adopted_by_adapter_hash_from_reused_stores() {
    let first = tempfile::tempdir().unwrap();
    let old = Store::new(first.path());
    let mut r = run("avg", "boolq", 0.5);
    r.settings = with_adapter("/a/avg", Some("aa"));
    old.save(&r).unwrap();

    let second = tempfile::tempdir().unwrap();
    let store = Store::reusing(second.path(), &[first.path().to_path_buf()]);
    let moved = with_adapter("/b/avg", Some("aa"));
    let got = store
        .load("avg", &moved)
        .unwrap()
        .expect("same weights elsewhere");
    assert_eq!(
        got.settings, moved,
        "the run names this store's adapter path"
    );
    assert_eq!(got.metrics, r.metrics);
    let note = format!("scores reused from {}", first.path().display());
    assert_eq!(got.notes, [note]);
    assert_eq!(
        Store::new(second.path()).load("avg", &moved).unwrap(),
        Some(got),
        "the adopted run is saved in this store"
    );
    // Other weights, no hash to match on, or another label: scored again.
    for (label, s) in [
        ("avg", with_adapter("/b/avg", Some("bb"))),
        ("avg", with_adapter("/b/avg", None)),
        ("other", moved.clone()),
    ] {
        let fresh = tempfile::tempdir().unwrap();
        let store = Store::reusing(fresh.path(), &[first.path().to_path_buf()]);
        assert!(store.load(label, &s).unwrap().is_none(), "{label} {s:?}");
    }
    // Without a hash, only the very same path matches.
    assert!(with_adapter("/a/x", None).same_run(&with_adapter("/a/x", None)));
    assert!(!with_adapter("/a/x", None).same_run(&with_adapter("/b/x", None)));
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

/// A run stored with one machine's absolute cache paths (before settings named them portably) is the
/// run asked for under portable names: the cache is reused, not scored again.
#[test]
fn runs_stored_with_absolute_cache_paths_match_their_portable_names() {
    let root = dnd_assets::cache_root();
    let asset = dnd_assets::asset("smollm2").unwrap();
    let adapter = root.join("experiments/x/adapters/boolq/dnd-0");
    let stored = Settings {
        model: root.join(asset.file).display().to_string(),
        ..with_adapter(&adapter.display().to_string(), None)
    };
    let wanted = Settings {
        model: dnd_assets::portable_name(&root.join(asset.file)),
        ..with_adapter("$DND_CACHE/experiments/x/adapters/boolq/dnd-0", None)
    };
    assert!(wanted.model.starts_with("smollm2 (sha256 b179c952"));
    assert!(stored.same_run(&wanted));
    let other = Settings {
        model: root.join("models/other.gguf").display().to_string(),
        ..stored.clone()
    };
    assert!(!other.same_run(&wanted));
}
