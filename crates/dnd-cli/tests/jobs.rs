//! `--jobs N`: a plan's units run in N local worker processes of one thread each, then merged. The
//! result must be what one process running the whole plan writes: the collection byte for byte (but
//! the fields that measure the machine), the scores record for record.

use std::path::Path;
use std::process::Command;

fn dnd(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dnd"))
        .current_dir(dir)
        .env("DND_CACHE", dir.join("cache"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) {
    let out = dnd(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn workers_collect_and_score_what_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (model, tasks) = dnd_testkit::tiny_cli_inputs(t);
    let (model, tasks) = (model.to_str().unwrap(), tasks.to_str().unwrap());
    let collect = |dir: &str, extra: &[&str]| {
        let mut args = vec![
            "collect",
            "--model",
            model,
            "--task-file",
            tasks,
            "--dir",
            dir,
        ];
        args.extend(["--first-phase", "3", "--checkpoints", "2", "--rank", "2"]);
        args.extend(["--targets", "q,v", "--max-len", "64"]);
        args.extend(extra);
        ok(t, &args);
    };
    collect("one", &[]);
    // --fresh is done once, by the parent: workers repeating it would delete each other's units.
    std::fs::create_dir_all(t.join("jobs/stale")).unwrap();
    collect("jobs", &["--jobs", "3", "--fresh"]);
    assert!(!t.join("jobs/stale").exists());
    let (one, jobs) = (
        dnd_testkit::collection_contents(&t.join("one")),
        dnd_testkit::collection_contents(&t.join("jobs")),
    );
    assert!(one.len() > 20, "{} files", one.len());
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        jobs.keys().collect::<Vec<_>>()
    );
    for (k, v) in &one {
        assert!(jobs[k] == *v, "{k} differs");
    }

    // The experiment's units are its held-out targets: a merge before they ran names all four, and the
    // array script has an element per target (neither needs the model or the encoder).
    let exp = |extra: &[&str]| {
        let mut args = vec![
            "experiment",
            "--collection-dir",
            "one",
            "--task-file",
            tasks,
        ];
        args.extend(["--work-dir", "exp", "--results", "exp-results"]);
        args.extend(extra);
        dnd(t, &args)
    };
    let out = exp(&["--merge"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("4 units not done")
            && err.contains("0 (alpha), 1 (beta), 2 (gamma), 3 (delta)"),
        "{err}"
    );
    assert!(exp(&["--emit-slurm", "exp.sbatch"]).status.success());
    let script = std::fs::read_to_string(t.join("exp.sbatch")).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-3%8") && script.contains("--unit env"),
        "{script}"
    );

    let eval = |out: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--model", model, "--task-file", tasks, "--out", out];
        args.extend([
            "--limit",
            "10",
            "--adapter",
            "one/gamma/checkpoints/step-0005",
        ]);
        args.extend(extra);
        ok(t, &args);
    };
    eval("eval-one", &[]);
    eval("eval-jobs", &["--jobs", "2"]);
    for label in ["base", "step-0005"] {
        for task in ["alpha", "beta", "gamma", "delta"] {
            let read = |out: &str| -> serde_json::Value {
                let p = t.join(format!("{out}/runs/{label}/{task}.json"));
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
            };
            let (a, b) = (read("eval-one"), read("eval-jobs"));
            assert_eq!(a["metrics"], b["metrics"], "{label}/{task}");
            assert_eq!(a["records"], b["records"], "{label}/{task}");
        }
    }
    // The parent merged the workers' runs into the summary.
    let summary = |out: &str| -> Vec<String> {
        let p = t.join(format!("{out}/results.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let runs = v["runs"].as_array().unwrap().iter();
        runs.map(|r| format!("{} {} {}", r["label"], r["settings"]["task"], r["metrics"]))
            .collect()
    };
    assert_eq!(summary("eval-one").len(), 8);
    assert_eq!(summary("eval-one"), summary("eval-jobs"));
}

#[test]
fn a_worker_number_out_of_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = dnd(
        tmp.path(),
        &["collect", "--dir", "c", "--jobs", "2", "--worker", "2"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--worker 2: there are 2 workers"),
        "{err}"
    );
}
