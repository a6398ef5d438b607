//! The whole experiment on a tiny synthetic setup: a pseudo-random Llama (dnd-collect's test model), a
//! two-task collection collected here (synthetic BoolQ and SIQA), a synthetic prompt encoder. Checks
//! the report's shape and files, and that a second run reuses everything (no scoring, no training).

use dnd_collect::collect;
use dnd_evaluate::ScoreEvent;
use dnd_experiment::{missing_units, run, run_unit, Event, ExperimentConfig, Paths};
use std::path::{Path, PathBuf};

mod common;
use common::{context, paths, small_experiment};

/// A synthetic Social-IQA in LLM-Adapters' layout: the answer is the option that names the colour.
fn siqa_root(root: &Path, n: usize) {
    let dir = root.join("llm-adapters/social_i_qa");
    std::fs::create_dir_all(&dir).unwrap();
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let gold = i % 3;
            let opts: Vec<String> = (0..3)
                .map(|k| if k == gold { "red".into() } else { format!("blue {k}") })
                .collect();
            serde_json::json!({
                "instruction": format!(
                    "Please choose the correct answer to the question: Item {i} is red. What colour is item {i}?\n\nAnswer1: {} Answer2: {} Answer3: {}\n\nAnswer format: answer1/answer2/answer3",
                    opts[0], opts[1], opts[2]
                ),
                "input": "",
                "output": format!("the correct answer is answer{}", gold + 1),
                "answer": format!("answer{}", gold + 1),
            })
        })
        .collect();
    std::fs::write(
        dir.join("test.json"),
        serde_json::to_string(&items).unwrap(),
    )
    .unwrap();
}

/// The tiny model and a two-task collection (synthetic BoolQ and SIQA) under `dir`: the model, its
/// directory, the data root and the collection.
fn tiny_collection(dir: &Path) -> (dnd_llm::Llm, PathBuf, PathBuf, PathBuf) {
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let llm = dnd_testkit::tiny_llm(&model_dir);
    let root = dir.join("data");
    dnd_testkit::boolq_root(&root, 80);
    siqa_root(&root, 80);
    let coll = dir.join("collection");
    let plan = dnd_testkit::tiny_collect_plan(&coll, &root, &["boolq", "siqa"]);
    let base = dnd_testkit::test_base_model(&model_dir.display().to_string());
    collect(&llm.model, &llm.tokenizer, &base, &plan, &mut |_| {}).unwrap();
    (llm, model_dir, root, coll)
}

/// The experiment as job units (one target each), then the report: every unit's work is reused by the
/// report, which equals the one of a single run; the merge check names the units not done.
#[test]
fn job_units_then_the_report_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (llm, model_dir, root, coll) = tiny_collection(tmp.path());
    let cfg = small_experiment(&coll, &root, 3);
    let ctx = context(&llm, &model_dir);
    let one = paths(&tmp.path().join("one"));
    let whole = run(&cfg, &one, &ctx, &mut |_| {}).unwrap();

    let units = paths(&tmp.path().join("units"));
    let missing = missing_units(&cfg, &units).unwrap();
    assert_eq!(missing, ["0 (boolq)", "1 (siqa)"]);
    run_unit(&cfg, &units, &ctx, 1, &mut |_| {}).unwrap();
    assert_eq!(missing_units(&cfg, &units).unwrap(), ["0 (boolq)"]);
    let other = ExperimentConfig {
        seed: 1,
        ..cfg.clone()
    };
    assert_eq!(
        missing_units(&other, &units).unwrap().len(),
        2,
        "other settings: not done"
    );
    run_unit(&cfg, &units, &ctx, 0, &mut |_| {}).unwrap();
    assert!(missing_units(&cfg, &units).unwrap().is_empty());
    let err = run_unit(&cfg, &units, &ctx, 2, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("unit 2: the plan has 2 units"),
        "{err}"
    );

    let (mut scored, mut steps) = (0, 0);
    let merged = run(&cfg, &units, &ctx, &mut |e| match e {
        Event::Score(ScoreEvent::Done(_)) => scored += 1,
        Event::TrainStep { .. } => steps += 1,
        _ => {}
    })
    .unwrap();
    assert_eq!((scored, steps), (0, 0), "the units did all the work");
    // Scores without their timing.
    let key = |s: &dnd_experiment::Score| (s.label.clone(), s.value, s.items.clone());
    for (a, b) in whole.targets.iter().zip(&merged.targets) {
        assert_eq!(a.target, b.target);
        let dnd =
            |r: &dnd_experiment::report::TargetResult| r.dnd.iter().map(key).collect::<Vec<_>>();
        assert_eq!(dnd(a), dnd(b));
        for (x, y) in [
            (&a.base, &b.base),
            (&a.oracle, &b.oracle),
            (&a.uniform_average, &b.uniform_average),
            (&a.best_lora, &b.best_lora),
        ] {
            assert_eq!(key(x), key(y), "{}", a.target);
        }
    }
}

#[test]
fn leave_one_out_end_to_end_and_resumed_from_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (llm, model_dir, root, coll) = tiny_collection(tmp.path());

    let cfg = ExperimentConfig {
        oracle_trajectory: 2,
        ..small_experiment(&coll, &root, 3)
    };
    let paths = paths(tmp.path());
    let ctx = context(&llm, &model_dir);
    let count = |cfg: &ExperimentConfig| {
        let (mut scored, mut steps) = (0, 0);
        let report = run(cfg, &paths, &ctx, &mut |e| match e {
            Event::Score(ScoreEvent::Done(_)) => scored += 1,
            Event::TrainStep { .. } => steps += 1,
            _ => {}
        })
        .unwrap();
        (report, scored, steps)
    };

    let (report, scored, steps) = count(&cfg);
    // base and 2 LoRAs on 2 targets, then per target 2 generated adapters, the first saved step of
    // the oracle's trajectory (its last is the oracle, already scored) and the uniform average.
    assert_eq!(scored, 2 + 2 * 2 + 2 * (2 + 1 + 1));
    assert_eq!(steps, 2 * 3);
    assert_eq!(report.targets.len(), 2);
    for (t, other) in [("boolq", "siqa"), ("siqa", "boolq")] {
        let r = report.targets.iter().find(|r| r.target == t).unwrap();
        assert_eq!(r.n, 4);
        assert_eq!(r.dnd.len(), 2);
        assert_eq!(r.generation_s.len(), 2);
        assert_eq!(r.oracle.label, format!("lora-{t}"));
        assert_eq!(r.training_loras.len(), 1);
        assert_eq!(r.best_lora.label, format!("lora-{other}"));
        assert_eq!(r.nearest_task, other);
        assert_eq!(r.uniform_average.label, format!("{t}/uniform-avg"));
        assert!((0.0..=1.0).contains(&r.dnd_mean));
        let steps: Vec<usize> = r.oracle_trajectory.iter().map(|p| p.0).collect();
        assert_eq!(steps, [4, 6]);
        assert_eq!(
            r.oracle_trajectory[1].1, r.oracle.value,
            "the last step is the oracle"
        );
        assert_eq!(r.oracle_steps, 6);
        let p = r.dnd_position.as_ref().expect("a weight-space position");
        assert!(p.from_average.is_finite() && p.from_average >= 0.0, "{p:?}");
        assert_eq!(p.toward.len(), 1);
        assert!(p.toward(other).is_some_and(f64::is_finite), "{p:?}");
        for i in 0..2 {
            let d = paths.work.join(format!("adapters/{t}/dnd-{i}"));
            assert!(d.join("adapter_model.safetensors").is_file());
        }
    }
    assert_eq!(report.lora_matrix.len(), 4);
    // Each target against its one training task, the cosine the nearest-prompt pick used.
    assert_eq!(report.prompt_cosines.len(), 2);
    for (task, target, c) in &report.prompt_cosines {
        let r = report.targets.iter().find(|r| &r.target == target).unwrap();
        assert_eq!((task, *c), (&r.nearest_task, r.nearest_cosine));
    }
    // 3 checkpoints per task and 2 generated adapters per target.
    assert_eq!(report.pca.len(), 2 * 3 + 2 * 2);
    assert_eq!(report.comparisons.len(), 6);
    for f in [
        "report.md",
        "report.json",
        "accuracy.png",
        "curves.png",
        "pca.png",
    ] {
        assert!(paths.results.join(f).is_file(), "{f}");
    }
    assert!(paths.work.join("scores/results.md").is_file());
    let md = std::fs::read_to_string(paths.results.join("report.md")).unwrap();
    assert!(md.contains("first 4 test items"), "{md}");
    assert!(md.contains("vs best training LoRA"));
    assert!(md.contains("## Where the generated adapters lie (weight space)"));
    assert!(md.contains("| task \\ target | boolq | siqa |"), "{md}");

    // A rerun reuses every score, generator and adapter, and reports the same numbers.
    let (again, scored, steps) = count(&cfg);
    assert_eq!((scored, steps), (0, 0));
    for (a, b) in report.targets.iter().zip(&again.targets) {
        assert_eq!(a.dnd, b.dnd);
        assert_eq!(a.dnd_position, b.dnd_position);
        assert_eq!(a.base, b.base);
        assert_eq!(a.uniform_average, b.uniform_average);
    }

    // Another offset scale generates and scores the adapters again (and only them), and says so.
    let scaled = ExperimentConfig {
        offset_scale: 0.0,
        ..cfg.clone()
    };
    let (zero, scored, steps) = count(&scaled);
    assert_eq!((scored, steps), (2 * 2, 0));
    assert_eq!(zero.offset_scale, 0.0);
    let md = std::fs::read_to_string(paths.results.join("report.md")).unwrap();
    assert!(md.contains("**Offset scale 0**"), "{md}");
    for t in ["boolq", "siqa"] {
        let rec = paths
            .work
            .join(format!("adapters/{t}/dnd-0/generation.json"));
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(rec).unwrap()).unwrap();
        assert_eq!(rec["offset_scale"], 0.0);
    }

    // Another experiment (other prompt batches) adopts the first one's stored scores where they are
    // the same run: base, training LoRAs, oracle trajectory and the byte-identical uniform averages.
    // It trains its own generators and scores only its generated adapters.
    let probe = Paths {
        work: tmp.path().join("probe-work"),
        results: tmp.path().join("probe-results"),
        reuse: vec![paths.work.clone()],
    };
    let other_batches = ExperimentConfig {
        seed: 1,
        ..cfg.clone()
    };
    let (mut scored, mut steps) = (0, 0);
    let adopted = run(&other_batches, &probe, &ctx, &mut |e| match e {
        Event::Score(ScoreEvent::Done(_)) => scored += 1,
        Event::TrainStep { .. } => steps += 1,
        _ => {}
    })
    .unwrap();
    assert_eq!((scored, steps), (2 * 2, 2 * 3));
    for (a, b) in report.targets.iter().zip(&adopted.targets) {
        assert_eq!((&a.base, &a.oracle), (&b.base, &b.oracle));
        assert_eq!(a.uniform_average.value, b.uniform_average.value);
    }
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(probe.work.join("scores/runs/base/boolq.json")).unwrap(),
    )
    .unwrap();
    let note = format!("scores reused from {}", paths.work.join("scores").display());
    assert!(
        base["notes"].as_array().unwrap().contains(&note.into()),
        "{base}"
    );
    let avg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(probe.work.join("scores/runs/boolq/uniform-avg/boolq.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        avg["settings"]["adapter"],
        probe
            .work
            .join("adapters/boolq/uniform-avg")
            .display()
            .to_string(),
        "an adopted run names this experiment's copy of the adapter"
    );
    let missing = Paths {
        reuse: vec![tmp.path().join("nothing-here")],
        ..probe.clone()
    };
    let err = run(&cfg, &missing, &ctx, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no stored scores to reuse in"), "{err}");

    // A bigger decoder in the same work directory is refused, not served the cached generators.
    let bigger = ExperimentConfig {
        decoder_hidden: 96,
        ..cfg.clone()
    };
    let err = run(&bigger, &paths, &ctx, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("maps before its last layer") && err.contains("--name"),
        "{err}"
    );
    // So is another last layer.
    let basis = ExperimentConfig {
        head: dnd_decode::Head::Basis { k: 2 },
        ..cfg.clone()
    };
    let err = run(&basis, &paths, &ctx, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("Basis") && err.contains("--name"), "{err}");
}

/// `--score-loras K` on a four-task collection: a target is scored with its own LoRA and the K
/// training LoRAs of the tasks with the nearest prompts only; the nearest-prompt baseline is among
/// them, and a full run over the same work directory scores just the LoRAs left out, with the same
/// values for the shared ones. K = 0 is refused (the nearest-prompt baseline needs one).
#[test]
fn score_loras_scores_only_the_nearest_prompt_loras() {
    let tmp = tempfile::tempdir().unwrap();
    let (model_dir, task_file) = dnd_testkit::tiny_cli_inputs(tmp.path());
    let llm = dnd_llm::Llm::load(&model_dir, candle_core::DType::F32).unwrap();
    let coll = tmp.path().join("collection");
    let plan = dnd_collect::CollectPlan {
        tasks: dnd_tasks::read_task_file(&task_file).unwrap(),
        ..dnd_testkit::tiny_collect_plan(&coll, tmp.path(), &[])
    };
    let base = dnd_testkit::test_base_model(&model_dir.display().to_string());
    collect(&llm.model, &llm.tokenizer, &base, &plan, &mut |_| {}).unwrap();

    let full = ExperimentConfig {
        targets: vec!["alpha".into()],
        adapters: 1,
        ..small_experiment(&coll, tmp.path(), 2)
    };
    let near = ExperimentConfig {
        score_loras: Some(1),
        ..full.clone()
    };
    let ctx = context(&llm, &model_dir);
    let paths = paths(tmp.path());
    let scored_by = |cfg: &ExperimentConfig| {
        let mut scored = Vec::new();
        let report = run(cfg, &paths, &ctx, &mut |e| {
            if let Event::Score(ScoreEvent::Done(r)) = e {
                scored.push(r.label.clone());
            }
        })
        .unwrap();
        (report, scored)
    };
    let (report, scored) = scored_by(&near);
    let row = &report.targets[0];
    let nearest = format!("lora-{}", row.nearest_task);
    // base, the oracle, the nearest training LoRA, one generated adapter, the uniform average.
    assert_eq!(
        scored,
        [
            "base",
            "lora-alpha",
            nearest.as_str(),
            "alpha/dnd-0",
            "alpha/uniform-avg"
        ]
    );
    let labels = |r: &dnd_experiment::report::TargetResult| {
        r.training_loras
            .iter()
            .map(|s| s.label.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(row), std::slice::from_ref(&nearest));
    assert_eq!(row.best_lora.label, nearest);
    assert_eq!(report.scored_loras, Some(1));
    assert_eq!(
        report.lora_matrix.len(),
        2,
        "the oracle and the one training LoRA"
    );
    let md = std::fs::read_to_string(paths.results.join("report.md")).unwrap();
    assert!(md.contains("`--score-loras 1`"), "{md}");

    let (all, scored) = scored_by(&full);
    assert_eq!(scored.len(), 2, "only the two LoRAs left out: {scored:?}");
    assert!(!scored.contains(&nearest));
    let row_all = &all.targets[0];
    assert_eq!(labels(row_all).len(), 3);
    assert_eq!(row_all.nearest_task, row.nearest_task);
    let value = |r: &dnd_experiment::report::TargetResult, l: &str| {
        r.training_loras
            .iter()
            .find(|s| s.label == l)
            .map(|s| (s.value, s.items.clone()))
    };
    assert_eq!(value(row_all, &nearest), value(row, &nearest));
    assert_eq!(all.scored_loras, None);

    let none = ExperimentConfig {
        score_loras: Some(0),
        ..full
    };
    let err = run(&none, &paths, &ctx, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("at least one training LoRA"),
        "{err}"
    );
}
