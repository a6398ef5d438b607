//! Resumable runs on a tiny model: an interrupted run (including a half-written checkpoint) ends with
//! the same bytes as an uninterrupted one; same seed, same bytes; finished runs are not redone; runs
//! with other settings are refused; micro-batching leaves the update unchanged; training learns.

use dnd_collect::{
    run, BaseModel, CollectError, DataInfo, EncodeStats, LoraTrainConfig, Manifest, RunOptions,
    RunOutcome, RunSpec, Saves, Sequence, Storage, Trainer, CHECKPOINTS_DIR, RUN_LOSS_PNG,
    STATE_FILE,
};
use dnd_llm::{Lora, Transformer};
use std::path::Path;
use std::time::Instant;

fn seqs() -> Vec<Sequence> {
    (0..12u32)
        .map(|i| {
            let len = 5 + (i as usize * 7) % 10;
            let mut ids: Vec<u32> = (0..len as u32).map(|j| (i * 31 + j * 17) % 200).collect();
            // The same two-token answer everywhere: quick to learn.
            ids.extend([200, 210]);
            Sequence {
                context_len: len,
                ids,
            }
        })
        .collect()
}

fn config() -> LoraTrainConfig {
    LoraTrainConfig {
        rank: 2,
        alpha: 4.0,
        targets: dnd_llm::Target::ALL
            .iter()
            .map(|t| t.module().to_string())
            .collect(),
        seed: 7,
        lr: 1e-2,
        warmup_steps: 2,
        min_lr_ratio: 0.1,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        batch: 4,
        micro_batch_tokens: 40,
        max_len: 20,
        steps: 8,
    }
}

fn spec(train: LoraTrainConfig, saves: Saves) -> RunSpec {
    let s = seqs();
    RunSpec {
        task: "synthetic".into(),
        base_model: BaseModel {
            path: "tiny".into(),
            sha256: "0".repeat(64),
        },
        data: DataInfo {
            root: "none".into(),
            part: "adapter-train".into(),
            split_seed: 1,
            encoded: EncodeStats {
                sequences: s.len(),
                truncated: 0,
                mean_tokens: 0.0,
                max_tokens: 0,
            },
            tokens_sha256: DataInfo::tokens_hash(&s),
        },
        train,
        saves,
        storage: Storage::F32,
    }
}

fn go(
    model: &Transformer,
    spec: &RunSpec,
    dir: &Path,
    stop_after: Option<usize>,
    steps_seen: &mut Vec<usize>,
) -> Result<RunOutcome, CollectError> {
    let mut on_step = |r: &dnd_collect::StepRecord| steps_seen.push(r.step);
    let mut opts = RunOptions {
        state_every: 3,
        stop_after,
        started: Instant::now(),
        on_step: &mut on_step,
    };
    run(model, &seqs(), spec, dir, &mut opts)
}

fn complete(o: RunOutcome) -> Manifest {
    match o {
        RunOutcome::Complete(m) => *m,
        RunOutcome::Stopped(s) => panic!("stopped after {s}"),
    }
}

/// Checkpoint files, and (loss, lr, grad norm) per step: what must not depend on interruptions.
type Outputs = (
    std::collections::BTreeMap<String, Vec<u8>>,
    Vec<(f64, f64, f64)>,
);

fn outputs(dir: &Path) -> Outputs {
    let m = Manifest::read(&dir.join("manifest.json")).unwrap();
    let steps = m
        .steps
        .iter()
        .map(|r| (r.loss, r.lr, r.grad_norm))
        .collect();
    (dnd_testkit::files(&dir.join(CHECKPOINTS_DIR)), steps)
}

#[test]
fn an_interrupted_run_ends_with_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = dnd_testkit::tiny_llm(tmp.path());
    let spec = spec(config(), Saves::EveryStepFrom(4));
    let straight = tmp.path().join("straight");
    let m = complete(go(&llm.model, &spec, &straight, None, &mut Vec::new()).unwrap());
    assert!(m.complete && m.steps.len() == 8 && m.sessions.len() == 1);
    let names: Vec<&str> = m.checkpoints.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [4, 5, 6, 7, 8].map(|s| format!("checkpoints/step-{s:04}"))
    );
    assert!(
        !straight.join(STATE_FILE).exists(),
        "state removed at the end"
    );
    let png = std::fs::read(straight.join(RUN_LOSS_PNG)).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    let resumed = tmp.path().join("resumed");
    let mut seen = Vec::new();
    // Killed after step 5 (state persisted at steps 3, 4 and 5).
    let o = go(&llm.model, &spec, &resumed, Some(5), &mut seen).unwrap();
    assert!(matches!(o, RunOutcome::Stopped(5)));
    // ... in the middle of writing step 6: a half-written checkpoint, a temporary directory and a
    // temporary state file, none of which may be taken for finished work.
    let ck = resumed.join(CHECKPOINTS_DIR);
    std::fs::create_dir_all(ck.join("step-0006")).unwrap();
    std::fs::write(ck.join("step-0006/adapter_model.safetensors"), b"half").unwrap();
    std::fs::create_dir_all(dnd_io::temp_path(&ck.join("step-0007"))).unwrap();
    let half_state = dnd_io::temp_path(&resumed.join(STATE_FILE));
    std::fs::write(&half_state, b"half").unwrap();
    // Killed again after one step (step 6 is saved with its state), then a clean finish.
    let o = go(&llm.model, &spec, &resumed, Some(1), &mut seen).unwrap();
    assert!(matches!(o, RunOutcome::Stopped(6)));
    let m = complete(go(&llm.model, &spec, &resumed, None, &mut seen).unwrap());
    assert_eq!(seen, (1..=8).collect::<Vec<_>>(), "no step done twice");
    assert_eq!(m.sessions.len(), 3);
    assert_eq!(outputs(&straight), outputs(&resumed));
    assert!(
        !half_state.exists(),
        "the killed writer's leftovers are removed"
    );

    // A kill between two state saves loses the steps since the last one; they are redone exactly.
    let lost = tmp.path().join("lost");
    let mut seen = Vec::new();
    go(&llm.model, &spec, &lost, Some(2), &mut seen).unwrap();
    go(&llm.model, &spec, &lost, None, &mut seen).unwrap();
    assert_eq!(seen[..3], [1, 2, 1], "no state before step 3: starts over");
    assert_eq!(outputs(&straight), outputs(&lost));
}

#[test]
fn finished_runs_are_kept_and_other_settings_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = dnd_testkit::tiny_llm(tmp.path());
    let dir = tmp.path().join("run");
    let spec = spec(config(), Saves::Final);
    let m = complete(go(&llm.model, &spec, &dir, None, &mut Vec::new()).unwrap());
    assert!(m.checkpoints.is_empty());
    // The run directory is a PEFT adapter for the base model.
    let lora = dnd_llm::peft::load(&dir, llm.model.config(), llm.model.dtype()).unwrap();
    assert_eq!(lora.config().rank, 2);
    let mut seen = Vec::new();
    let again = complete(go(&llm.model, &spec, &dir, None, &mut seen).unwrap());
    assert!(seen.is_empty(), "a finished run is not redone");
    assert_eq!(again, Manifest::read(&dir.join("manifest.json")).unwrap());
    assert_eq!(again.steps.len(), m.steps.len());
    let mut other = config();
    other.lr = 2e-2;
    let err = go(
        &llm.model,
        &self::spec(other, Saves::Final),
        &dir,
        None,
        &mut seen,
    )
    .err()
    .expect("other settings are refused");
    assert!(matches!(err, CollectError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("other training settings"), "{err}");
}

#[test]
fn checkpoints_stored_in_f16_take_half_the_disk_and_read_back_rounded() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = dnd_testkit::tiny_llm(tmp.path());
    let full = spec(config(), Saves::EveryStepFrom(7));
    let half = RunSpec {
        storage: Storage::F16,
        ..full.clone()
    };
    // f32 runs keep the fingerprint they had before the storage type could be chosen.
    assert!(!serde_json::to_string(&full).unwrap().contains("storage"));
    assert_ne!(full.fingerprint(), half.fingerprint());
    let size = |d: &Path| {
        std::fs::metadata(d.join("adapter_model.safetensors"))
            .unwrap()
            .len()
    };
    let (a, b) = (tmp.path().join("f32"), tmp.path().join("f16"));
    let ma = complete(go(&llm.model, &full, &a, None, &mut Vec::new()).unwrap());
    let mb = complete(go(&llm.model, &half, &b, None, &mut Vec::new()).unwrap());
    let (ca, cb) = (a.join(&ma.checkpoints[1]), b.join(&mb.checkpoints[1]));
    // Half the tensor bytes; the header (tensor names) is the same.
    let stored = candle_core::safetensors::load(
        cb.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(stored
        .values()
        .all(|t| t.dtype() == candle_core::DType::F16));
    let payload: u64 = stored.values().map(|t| 2 * t.elem_count() as u64).sum();
    assert_eq!(
        size(&ca) - size(&cb),
        payload,
        "f32 takes twice the bytes of f16"
    );
    let load =
        |d: &Path| dnd_llm::peft::load(d, llm.model.config(), candle_core::DType::F32).unwrap();
    for ((_, _, a32, b32), (_, _, a16, b16)) in load(&ca).modules().zip(load(&cb).modules()) {
        for (x, y) in [(a32, a16), (b32, b16)] {
            let scale = x
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let err = dnd_testkit::max_abs_diff(x, y);
            assert!(
                err <= scale * 2f64.powi(-11) + 1e-7,
                "{err} vs scale {scale}"
            );
        }
    }
    let err = go(&llm.model, &full, &b, None, &mut Vec::new())
        .err()
        .unwrap();
    assert!(err.to_string().contains("stored as F16"), "{err}");
}

#[test]
fn the_seed_decides_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = dnd_testkit::tiny_llm(tmp.path());
    let mut short = config();
    short.steps = 3;
    let run_with = |seed: u64, name: &str| {
        let mut c = short.clone();
        c.seed = seed;
        let dir = tmp.path().join(name);
        go(
            &llm.model,
            &spec(c, Saves::EveryStepFrom(3)),
            &dir,
            None,
            &mut Vec::new(),
        )
        .unwrap();
        dnd_testkit::files(&dir.join(CHECKPOINTS_DIR))
    };
    let a = run_with(1, "a");
    assert_eq!(a, run_with(1, "b"));
    assert_ne!(a, run_with(2, "c"));
}

#[test]
fn micro_batching_leaves_the_update_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = dnd_testkit::tiny_llm(tmp.path());
    let data = seqs();
    let batch: Vec<&Sequence> = data.iter().take(6).collect();
    let mut params = Vec::new();
    for micro in [20, 1000] {
        let mut c = config();
        c.micro_batch_tokens = micro;
        let init = Lora::init(
            c.lora_config().unwrap(),
            llm.model.config(),
            3,
            llm.model.dtype(),
        )
        .unwrap();
        let mut t = Trainer::new(&llm.model, &init, &c).unwrap();
        let r = t.step(&batch).unwrap();
        let flat: Vec<f32> = t
            .lora()
            .modules()
            .flat_map(|(_, _, a, b)| {
                let mut v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                v.extend(b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                v
            })
            .collect();
        params.push((r.loss, r.grad_norm, flat));
    }
    let (a, b) = (&params[0], &params[1]);
    assert!((a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5 * a.1);
    let max =
        a.2.iter()
            .zip(&b.2)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
    assert!(max < 1e-6, "parameters differ by {max}");
}

#[test]
fn training_lowers_the_answer_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = dnd_testkit::tiny_llm(tmp.path());
    let mut c = config();
    c.steps = 40;
    let m = complete(
        go(
            &llm.model,
            &spec(c, Saves::Final),
            &tmp.path().join("learn"),
            None,
            &mut Vec::new(),
        )
        .unwrap(),
    );
    let mean =
        |r: &[dnd_collect::StepRecord]| r.iter().map(|x| x.loss).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&m.steps[..5]), mean(&m.steps[35..]));
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn bad_settings_are_refused() {
    let mut c = config();
    c.targets = vec!["qq_proj".into()];
    assert!(c.validate().unwrap_err().to_string().contains("qq_proj"));
    let mut c = config();
    c.micro_batch_tokens = 10;
    assert!(
        c.validate().is_err(),
        "a micro-batch below the sequence cap"
    );
    let mut c = config();
    c.batch = 0;
    assert!(c.validate().is_err());
}
