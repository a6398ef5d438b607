//! A 4-task collection on the tiny model, run as a Slurm job array on a real single-node cluster
//! (`scripts/slurm/cluster.sh`: Debian's munge, slurmctld and slurmd on loopback, installed and started
//! by the script), then merged: it equals the same collection run locally, every file byte for byte
//! but the JSON fields that measure the machine (time, memory, speed). A finished element requeued
//! does no work; a unit killed mid-way (`scontrol requeue`) resumes and ends identical. Then scoring (`dnd eval`) as a job array of (run, task) units, merged: the same
//! scores as scoring locally. `DND_SLURM_TEST=0` skips it (no root for the daemons).
//!
//! The same check with a unit killed mid-way on the real model: `scripts/slurm/collect_check.sh`.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_slurm_array_collection_equals_the_local_one() {
    if std::env::var("DND_SLURM_TEST").as_deref() == Ok("0") {
        eprintln!("DND_SLURM_TEST=0: skipped");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let up = run(Command::new(repo.join("scripts/slurm/cluster.sh")).arg("up"));
    let conf = up
        .trim()
        .strip_prefix("export SLURM_CONF=")
        .expect("cluster.sh prints the SLURM_CONF");
    let tmp = tempfile::tempdir().unwrap();
    let (model, tasks) = dnd_testkit::tiny_cli_inputs(tmp.path());
    let dnd = env!("CARGO_BIN_EXE_dnd");
    // A collection of the task file's tasks into `dir`, `first` steps before its 3 checkpoints.
    let collect_with = |first: &str, dir: &str, extra: &[&str]| {
        let mut c = Command::new(dnd);
        c.current_dir(tmp.path())
            .env("SLURM_CONF", conf)
            .env("DND_CACHE", tmp.path().join("cache"))
            .args(["collect", "--model"])
            .arg(&model)
            .arg("--task-file")
            .arg(&tasks)
            .args(["--first-phase", first, "--checkpoints", "3", "--rank", "2"])
            .args([
                "--targets",
                "q,v",
                "--batch",
                "4",
                "--max-len",
                "64",
                "--state-every",
                "1",
            ])
            .args(["--dir", dir])
            .args(extra);
        c
    };
    let collect = |dir: &str, extra: &[&str]| collect_with("3", dir, extra);
    run(&mut collect("local", &[]));
    run(&mut collect(
        "array",
        &[
            "--emit-slurm",
            "collect.sbatch",
            "--slurm-logs",
            "logs",
            "--slurm-mem",
            "1G",
            "--slurm-cpus",
            "1",
            "--units-per-job",
            "2",
        ],
    ));
    let sbatch = |args: &[&str]| {
        let mut c = Command::new("sbatch");
        c.env("SLURM_CONF", conf).current_dir(tmp.path()).args(args);
        run(&mut c).trim().to_string()
    };
    let wait = |job: &str| loop {
        let q = run(Command::new("squeue")
            .env("SLURM_CONF", conf)
            .args(["-h", "-j", job]));
        if q.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let job = sbatch(&["--parsable", "--wait", "collect.sbatch"]);
    wait(&job);
    let before = dnd_testkit::files(&tmp.path().join("array"));
    // Element 0 again (a requeue after it finished): skipped, nothing changes.
    let again = sbatch(&["--parsable", "--wait", "--array=0", "collect.sbatch"]);
    wait(&again);
    assert_eq!(dnd_testkit::files(&tmp.path().join("array")), before);
    run(&mut collect("array", &["--merge"]));
    let (local, array) = (
        dnd_testkit::collection_contents(&tmp.path().join("local")),
        dnd_testkit::collection_contents(&tmp.path().join("array")),
    );
    let differ: Vec<&String> = local
        .keys()
        .filter(|k| local.get(*k) != array.get(*k))
        .collect();
    assert!(
        differ.is_empty() && local.len() == array.len() && local.len() > 20,
        "{} vs {} files, differ: {differ:?}",
        local.len(),
        array.len()
    );

    experiment_as_array(tmp.path(), &model, conf, &wait);

    // A unit killed mid-way and requeued (`scontrol requeue`, as a preemption does): one task with a
    // longer first phase, so that the kill lands while it trains; it resumes from its saved run state
    // and ends identical to the local run.
    let slow = |dir: &str, extra: &[&str]| {
        let mut c = collect_with("400", dir, &["--tasks", "alpha"]);
        c.args(extra);
        c
    };
    run(&mut slow("slow-local", &[]));
    run(&mut slow(
        "slow-array",
        &["--emit-slurm", "slow.sbatch", "--slurm-logs", "slow-logs"],
    ));
    // Killed by scancel once it has saved its run state, then submitted again; the new run is killed
    // and requeued by Slurm once it has resumed.
    let state = tmp.path().join("slow-array/alpha/run-state.safetensors");
    let until = |what: &dyn Fn() -> bool| {
        while !what() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let first = sbatch(&["--parsable", "slow.sbatch"]);
    until(&|| state.exists());
    run(Command::new("scancel")
        .env("SLURM_CONF", conf)
        .arg(format!("{first}_0")));
    wait(&first);
    assert!(state.exists(), "killed mid-way, its state kept");
    let job = sbatch(&["--parsable", "--array=0", "slow.sbatch"]);
    let log_path = tmp.path().join(format!("slow-logs/{job}_0.out"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    until(&|| log().contains("alpha: resuming after step"));
    run(Command::new("scontrol")
        .env("SLURM_CONF", conf)
        .args(["requeue", &format!("{job}_0")]));
    // A requeued job waits out a begin time of two minutes once pending; let it start at once.
    let pending = || {
        let q = run(Command::new("squeue")
            .env("SLURM_CONF", conf)
            .args(["-h", "-o", "%T", "-j", &job]));
        q.trim() == "PENDING"
    };
    until(&pending);
    run(Command::new("scontrol").env("SLURM_CONF", conf).args([
        "update",
        &format!("jobid={job}"),
        "StartTime=now",
    ]));
    wait(&job);
    let log = log();
    assert!(log.contains("alpha: resuming after step"), "{log}");
    run(&mut slow("slow-array", &["--merge"]));
    let (local, array) = (
        dnd_testkit::collection_contents(&tmp.path().join("slow-local")),
        dnd_testkit::collection_contents(&tmp.path().join("slow-array")),
    );
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        array.keys().collect::<Vec<_>>()
    );
    assert!(local == array, "the requeued unit ends as the local run");

    // Scoring as job units: the base model and one collected adapter on the four tasks, 8 units.
    let eval = |out: &str, extra: &[&str]| {
        let mut c = Command::new(dnd);
        c.current_dir(tmp.path())
            .env("DND_CACHE", tmp.path().join("cache"))
            .args(["eval", "--model"])
            .arg(&model)
            .arg("--task-file")
            .arg(&tasks)
            .args([
                "--limit",
                "12",
                "--adapter",
                "array/beta/checkpoints/step-0006",
            ])
            .args(["--out", out])
            .args(extra);
        c
    };
    run(&mut eval("eval-local", &[]));
    run(&mut eval(
        "eval-array",
        &["--emit-slurm", "eval.sbatch", "--slurm-logs", "logs"],
    ));
    let early = eval("eval-array", &["--merge"]).output().unwrap();
    let msg = String::from_utf8_lossy(&early.stderr);
    assert!(
        !early.status.success()
            && msg.contains("8 of 8 units not done")
            && msg.contains("0 (base/alpha)"),
        "{msg}"
    );
    let job = sbatch(&["--parsable", "--wait", "--export=ALL", "eval.sbatch"]);
    wait(&job);
    run(&mut eval("eval-array", &["--merge"]));
    for label in ["base", "step-0006"] {
        for task in ["alpha", "beta", "gamma", "delta"] {
            let read = |out: &str| -> serde_json::Value {
                let p = tmp.path().join(format!("{out}/runs/{label}/{task}.json"));
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
            };
            let (l, a) = (read("eval-local"), read("eval-array"));
            assert_eq!(l["metrics"], a["metrics"], "{label}/{task}");
            assert_eq!(l["records"], a["records"], "{label}/{task}");
        }
    }
}

/// The leave-one-out experiment on the array's collection (4 targets) as a job array of one target per
/// element, merged into its report: every score equals a local run's. Its prompt encoder is the cached
/// MiniLM (linked into the test's cache); without it the case is skipped unless DND_REQUIRE_ASSETS=1.
fn experiment_as_array(tmp: &Path, model: &Path, conf: &str, wait: &dyn Fn(&str)) {
    let minilm = dnd_assets::cache_root().join("models/all-MiniLM-L6-v2");
    if !minilm.join("model.safetensors").is_file() {
        assert!(
            std::env::var("DND_REQUIRE_ASSETS").as_deref() != Ok("1"),
            "{} is required (DND_REQUIRE_ASSETS=1); run `dnd fetch --all`",
            minilm.display()
        );
        eprintln!(
            "skipping the experiment array: {} not cached",
            minilm.display()
        );
        return;
    }
    let models = tmp.join("cache/models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(&minilm, models.join("all-MiniLM-L6-v2")).unwrap();
    let experiment = |name: &str, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dnd"));
        c.current_dir(tmp)
            .env("SLURM_CONF", conf)
            .env("DND_CACHE", tmp.join("cache"))
            .args(["experiment", "--collection-dir", "array", "--model"])
            .arg(model)
            .args(["--limit", "4", "--adapters", "1", "--steps", "3"])
            .args(["--decoder-hidden", "16", "--basis-k", "2", "--prompts", "4"])
            .args(["--work-dir", &format!("{name}-work"), "--results", name])
            .args(extra);
        c
    };
    run(&mut experiment("exp-local", &[]));
    run(&mut experiment(
        "exp-array",
        &[
            "--emit-slurm",
            "experiment.sbatch",
            "--slurm-logs",
            "exp-logs",
        ],
    ));
    // The elements see the test's cache (sbatch passes the submitting environment on).
    let job = run(Command::new("sbatch")
        .current_dir(tmp)
        .env("SLURM_CONF", conf)
        .env("DND_CACHE", tmp.join("cache"))
        .args(["--parsable", "experiment.sbatch"]));
    wait(job.trim());
    run(&mut experiment("exp-array", &["--merge"]));
    // Every score of every row (labels, values and per-item scores), without the timing fields.
    let scores = |dir: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(tmp.join(dir).join("report.json")).unwrap();
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keep = |s: &serde_json::Value| serde_json::json!([s["label"], s["value"], s["items"]]);
        report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| {
                let mut row = vec![t["target"].clone()];
                for k in ["base", "oracle", "uniform_average", "best_lora", "nearest"] {
                    row.push(keep(&t[k]));
                }
                row.extend(t["dnd"].as_array().unwrap().iter().map(keep));
                row
            })
            .collect()
    };
    let (local, array) = (scores("exp-local"), scores("exp-array"));
    assert_eq!(
        local.len(),
        4 * 7,
        "4 targets: name, 5 baselines, 1 adapter"
    );
    assert_eq!(local, array);
}
