//! The training loop on a synthetic two-task collection (tiny base config, random adapters, random
//! "encoder states" whose statistics differ per task): it learns, beats the mean-checkpoint baseline on
//! held-out checkpoints, and a run interrupted and resumed ends with the same bytes.

use candle_core::{DType, Device, Tensor};
use dnd_decode::{DecoderConfig, GeneratorMeta, Head};
use dnd_generate::{ConditionNorm, Generator, GeneratorInfo};
use dnd_llm::{Lora, LoraConfig, Target};
use dnd_testkit::{max_abs_diff, tiny_model_config};
use dnd_tokenize::LoraTokenizer;
use dnd_train::{
    weighted_mse, GeneratorTrainConfig, GeneratorTrainer, Setup, TrainingTask, TRAIN_MANIFEST_FILE,
};
use rand::{Rng, SeedableRng};
use std::path::Path;

const C: usize = 16;

/// Seeded standard-normal noise, so every call builds the same data.
fn noise(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.7f32..1.7)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// A task: `k` checkpoints scattered around a task-specific B (A shared, as with one LoRA seed), and
/// prompts whose states are shifted by `shift` so the decoder can tell the tasks apart.
fn task(tok: &LoraTokenizer, name: &str, seed: u64, shift: f32, k: usize) -> TrainingTask {
    let model = tok.model_config();
    let init = Lora::init(tok.lora_config().clone(), model, 0, DType::F32).unwrap();
    let checkpoints = (0..k)
        .map(|i| {
            let parts = init
                .modules()
                .enumerate()
                .map(|(m, (l, t, a, b))| {
                    let center = (noise(b.dims(), seed * 1000 + m as u64) * 0.02).unwrap();
                    let jitter =
                        (noise(b.dims(), seed * 1_000_000 + (i * 100 + m) as u64) * 0.002).unwrap();
                    let a = (a + i as f64 * 1e-5).unwrap();
                    (l, t, a, (center + jitter).unwrap())
                })
                .collect();
            let lora = Lora::from_parts(
                tok.lora_config().clone(),
                model,
                parts,
                Path::new("synthetic"),
            )
            .unwrap();
            tok.encode(&lora).unwrap().0
        })
        .collect();
    let prompts = (0..12)
        .map(|i| {
            let len = 3 + i % 6;
            (noise(&[len, C], seed * 77 + i as u64) + shift as f64).unwrap()
        })
        .collect();
    TrainingTask::new(name.into(), checkpoints, prompts).unwrap()
}

fn setup(out: &Path) -> (Setup, Vec<TrainingTask>) {
    let model = tiny_model_config();
    let lora = LoraConfig::new(2, 4.0, &Target::ALL);
    let tok = LoraTokenizer::with_default_width(&model, &lora).unwrap();
    let (h, w) = tok.token_shape();
    let tasks = vec![task(&tok, "up", 1, 1.0, 6), task(&tok, "down", 2, -1.0, 6)];
    let mask = tok
        .encode(&Lora::init(lora.clone(), &model, 0, DType::F32).unwrap())
        .unwrap()
        .1;
    let setup = Setup {
        out: out.into(),
        decoder: DecoderConfig::cpu_default([4, 8, C], [tok.num_tokens(), h, w]),
        meta: GeneratorMeta::new(&model, &lora, tok.chunk_width()),
        info: GeneratorInfo {
            encoder_model_hash: "synthetic".into(),
            encoder_max_len: 8,
            base_model: "tiny".into(),
        },
        collection: "synthetic".into(),
        mask,
        tokens: tok.tokens().to_vec(),
        sft: None,
    };
    (setup, tasks)
}

fn config(steps: usize) -> GeneratorTrainConfig {
    GeneratorTrainConfig {
        steps,
        batch: 2,
        lr: 3e-3,
        holdout_every: 3,
        validate_every: 10,
        save_every: 5,
        ..GeneratorTrainConfig::default()
    }
}

#[test]
fn training_learns_and_beats_the_mean_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (setup, tasks) = setup(dir.path());
    let mut t = GeneratorTrainer::open(setup, tasks, config(120)).unwrap();
    let m = t.run(None, &mut |_, _| {}).unwrap();
    assert!(m.complete);
    let first: f64 = m.steps[..10].iter().map(|s| s.loss).sum::<f64>() / 10.0;
    let last: f64 = m.steps[110..].iter().map(|s| s.loss).sum::<f64>() / 10.0;
    let val = m.validations.last().unwrap().loss;
    let (mean, own) = (
        m.baseline_mean_checkpoint.unwrap(),
        m.baseline_task_mean.unwrap(),
    );
    eprintln!(
        "train {first:.4} -> {last:.4}; held-out {val:.4}, mean ckpt {mean:.4}, own task {own:.4}"
    );
    assert!(last < 0.5 * first, "{first} -> {last}");
    assert!(val < 0.2 * mean, "held-out {val} vs mean checkpoint {mean}");
    assert!(
        m.weight_b > m.weight_a,
        "B moves more than A here: {} {}",
        m.weight_a,
        m.weight_b
    );
    assert!(
        m.weight_a > 0.02,
        "the floor keeps A in the loss: {}",
        m.weight_a
    );
    for f in [
        TRAIN_MANIFEST_FILE,
        "loss.png",
        "decoder.safetensors",
        "generator.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}

/// A collection saved in f16 (every value an f16) is held in f16: training reads it through every
/// path (token weights, the basis head's start, mixed pairs, held-out losses, the baselines) and the
/// values it reads are the f32 ones it was given.
#[test]
fn checkpoints_saved_in_f16_train_through_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, tasks) = setup(dir.path());
    s.decoder = s.decoder.with_head(Head::Basis { k: 4 });
    let half = |t: &TrainingTask| -> Vec<Tensor> {
        let all = t.stacked().unwrap().to_dtype(DType::F16).unwrap();
        let all = all.to_dtype(DType::F32).unwrap();
        (0..t.num_checkpoints())
            .map(|i| all.get(i).unwrap())
            .collect()
    };
    let rounded: Vec<TrainingTask> = tasks
        .iter()
        .map(|t| TrainingTask::new(t.name.clone(), half(t), t.prompts.clone()).unwrap())
        .collect();
    for (t, r) in tasks.iter().zip(&rounded) {
        for (i, want) in half(t).iter().enumerate() {
            assert_eq!(max_abs_diff(&r.checkpoint(i).unwrap(), want), 0.0);
        }
    }
    let cfg = GeneratorTrainConfig {
        mix: 0.5,
        validate_every: 4,
        ..config(8)
    };
    let m = GeneratorTrainer::open(s, rounded, cfg)
        .unwrap()
        .run(None, &mut |_, _| {})
        .unwrap();
    assert!(m.complete);
    assert!(m.steps.iter().all(|s| s.loss.is_finite()));
    let val = m.validations.last().unwrap().loss;
    let own = m.baseline_task_mean.unwrap();
    assert!(val.is_finite() && own.is_finite() && m.baseline_probe_task_mean.is_some());
}

/// `freeze_basis`: the basis head's directions stay at their start while the rest of the decoder
/// learns; a run resumed half-way ends with the same bytes as an uninterrupted one.
#[test]
fn a_frozen_basis_stays_at_its_start() {
    let run = |dir: &Path, stop: Option<usize>| {
        let (mut s, tasks) = setup(dir);
        s.decoder = s.decoder.with_head(Head::Basis { k: 4 });
        let cfg = GeneratorTrainConfig {
            freeze_basis: true,
            ..config(10)
        };
        let mut t = GeneratorTrainer::open(s, tasks, cfg).unwrap();
        let start = t
            .decoder()
            .head()
            .unwrap()
            .basis
            .as_tensor()
            .copy()
            .unwrap();
        let coef = t
            .decoder()
            .head()
            .unwrap()
            .coef_w
            .as_tensor()
            .copy()
            .unwrap();
        let m = t.run(stop, &mut |_, _| {}).unwrap();
        let head = t.decoder().head().unwrap();
        (
            start,
            coef,
            head.basis.as_tensor().copy().unwrap(),
            head.coef_w.as_tensor().copy().unwrap(),
            m,
        )
    };
    let a = tempfile::tempdir().unwrap();
    let (start, coef, end, coef_end, m) = run(a.path(), None);
    assert!(m.complete);
    assert_eq!(
        max_abs_diff(&start, &end),
        0.0,
        "the directions did not move"
    );
    assert!(
        max_abs_diff(&coef, &coef_end) > 0.0,
        "the coefficients learned"
    );
    let b = tempfile::tempdir().unwrap();
    run(b.path(), Some(5));
    let (_, _, end_b, coef_b, _) = run(b.path(), None);
    assert_eq!(max_abs_diff(&end, &end_b), 0.0);
    assert_eq!(max_abs_diff(&coef_end, &coef_b), 0.0);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let a = tempfile::tempdir().unwrap();
    let (s, tasks) = setup(a.path());
    GeneratorTrainer::open(s, tasks, config(12))
        .unwrap()
        .run(None, &mut |_, _| {})
        .unwrap();

    let b = tempfile::tempdir().unwrap();
    let (s, tasks) = setup(b.path());
    let m = GeneratorTrainer::open(s, tasks, config(12))
        .unwrap()
        .run(Some(7), &mut |_, _| {})
        .unwrap();
    assert!(!m.complete);
    let (s, tasks) = setup(b.path());
    let mut t = GeneratorTrainer::open(s, tasks, config(12)).unwrap();
    assert_eq!(
        t.step_count(),
        5,
        "resumes from the last save, not from where it stopped"
    );
    t.run(None, &mut |_, _| {}).unwrap();

    let finished = b.path().join("state/step-000012");
    assert!(finished.join("decoder.safetensors").is_file());
    assert!(
        !finished.join("optimizer.safetensors").exists(),
        "a finished run keeps no optimizer state"
    );
    // Reopening the finished run resumes nothing and steps no more.
    let (s, tasks) = setup(b.path());
    let mut again = GeneratorTrainer::open(s, tasks, config(12)).unwrap();
    assert_eq!(again.step_count(), 12);
    assert!(again.run(None, &mut |_, _| {}).unwrap().complete);
    let bytes = |d: &Path| std::fs::read(d.join("decoder.safetensors")).unwrap();
    assert!(
        bytes(a.path()) == bytes(b.path()),
        "decoder bytes differ after resume"
    );
    let losses = |d: &Path| {
        let m: dnd_train::TrainManifest =
            serde_json::from_str(&std::fs::read_to_string(d.join(TRAIN_MANIFEST_FILE)).unwrap())
                .unwrap();
        m.steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    };
    assert_eq!(losses(a.path()), losses(b.path()));
}

#[test]
fn uniform_weights_weigh_a_and_b_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (s, tasks) = setup(dir.path());
    let c = GeneratorTrainConfig {
        uniform_weights: true,
        ..config(2)
    };
    let m = GeneratorTrainer::open(s, tasks, c)
        .unwrap()
        .run(None, &mut |_, _| {})
        .unwrap();
    assert!((m.weight_a - 1.0).abs() < 1e-6 && (m.weight_b - 1.0).abs() < 1e-6);
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, tasks) = setup(dir.path());
    GeneratorTrainer::open(s, tasks, config(5))
        .unwrap()
        .run(None, &mut |_, _| {})
        .unwrap();
    let (s, tasks) = setup(dir.path());
    let err = GeneratorTrainer::open(
        s,
        tasks,
        GeneratorTrainConfig {
            lr: 1.0,
            ..config(5)
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("other settings"), "{err}");
}

/// Half the prompts of each task: without mixed pairs the decoder never sees such a condition; with
/// them it learns to answer it with the midpoint of the two tasks' checkpoints.
#[test]
fn mixed_pairs_teach_the_midpoint_between_tasks() {
    let err = |mix: f64| {
        let dir = tempfile::tempdir().unwrap();
        let (s, tasks) = setup(dir.path());
        let (h, w) = (s.mask.dim(1).unwrap(), s.mask.dim(2).unwrap());
        let wmask = s.mask.to_dtype(DType::F32).unwrap();
        let cells = wmask.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let mean = |t: &TrainingTask| {
            let all = t.stacked().unwrap();
            let n_w = all.dim(1).unwrap();
            (all.mean(0).unwrap()).reshape((1, n_w, h, w)).unwrap()
        };
        let midpoint = ((mean(&tasks[0]) + mean(&tasks[1])).unwrap() * 0.5).unwrap();
        let states: Vec<&Tensor> = tasks[0].prompts[..2]
            .iter()
            .chain(&tasks[1].prompts[..2])
            .collect();
        let cond = dnd_generate::condition(&states, 8)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        // The condition is built from raw states here, so the trainer must not standardise them.
        let c = GeneratorTrainConfig {
            mix,
            standardize: false,
            ..config(120)
        };
        let mut t = GeneratorTrainer::open(s, tasks, c).unwrap();
        t.run(None, &mut |_, _| {}).unwrap();
        let pred = t.predict(&cond).unwrap();
        weighted_mse(&pred, &midpoint, &wmask, cells)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (plain, mixed) = (err(0.0), err(0.5));
    eprintln!("distance to the midpoint: without mixing {plain:.5}, with {mixed:.5}");
    assert!(mixed < 0.5 * plain, "{plain} -> {mixed}");
}

/// The basis head starts at the training checkpoints' principal directions (orthogonal, spanning the
/// difference between the two tasks' means), fits, and the generator it saves (with the condition's
/// standardisation) generates from raw prompt states exactly what the trainer predicts.
#[test]
fn the_basis_head_fits_and_its_generator_reproduces_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, tasks) = setup(dir.path());
    s.decoder = s.decoder.with_head(Head::Basis { k: 4 });
    let task_mean = |t: &TrainingTask| t.stacked().unwrap().mean(0).unwrap().flatten_all().unwrap();
    let diff = (task_mean(&tasks[0]) - task_mean(&tasks[1])).unwrap();
    let t = GeneratorTrainer::open(s, tasks, config(30)).unwrap();
    let basis = t.decoder().head().unwrap().basis.as_tensor().clone();
    let gram: Vec<Vec<f32>> = basis
        .matmul(&basis.t().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, row) in gram.iter().enumerate() {
        for (j, g) in row.iter().enumerate() {
            if i != j {
                assert!(
                    g.abs() < 1e-3 * (gram[i][i] * gram[j][j]).sqrt().max(1e-12),
                    "{gram:?}"
                );
            }
        }
    }
    // The part of the task difference outside the basis' span is small.
    let coords = basis.matmul(&diff.unsqueeze(1).unwrap()).unwrap();
    let norms = basis
        .sqr()
        .unwrap()
        .sum_keepdim(1)
        .unwrap()
        .clamp(1e-12, f64::INFINITY)
        .unwrap();
    let inside = basis
        .t()
        .unwrap()
        .matmul(&(coords / norms).unwrap())
        .unwrap()
        .squeeze(1)
        .unwrap();
    let sq = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (rest, whole) = (sq(&(&diff - inside).unwrap()), sq(&diff));
    assert!(rest < 0.05 * whole, "{rest} of {whole} outside the basis");

    // Standardised conditions (the default), trained from that start.
    assert!(config(30).standardize);
    let mut t = t;
    let basis = t.run(None, &mut |_, _| {}).unwrap();
    let val = basis.validations.last().unwrap().loss;
    let mean = basis.baseline_mean_checkpoint.unwrap();
    eprintln!(
        "held-out after 30 steps: {val:.4}; mean checkpoint {mean:.4}, own task {:.4}",
        basis.baseline_task_mean.unwrap()
    );
    assert!(val < 0.1 * mean, "{val} vs {mean}");

    assert!(dir.path().join(dnd_generate::NORM_FILE).is_file());
    let (_, tasks) = setup(dir.path());
    let raw: Vec<&Tensor> = tasks[0].prompts[..4].iter().collect();
    let g = Generator::load(dir.path(), &tiny_model_config(), None).unwrap();
    let generated = g.generate(&raw).unwrap();
    let norm = ConditionNorm::load(dir.path(), C).unwrap().unwrap();
    let std: Vec<Tensor> = raw.iter().map(|p| norm.apply(p).unwrap()).collect();
    let cond = dnd_generate::condition(&std.iter().collect::<Vec<_>>(), 8)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let predicted = g
        .tokenizer()
        .decode(&t.predict(&cond).unwrap().squeeze(0).unwrap())
        .unwrap();
    for ((_, _, a1, b1), (_, _, a2, b2)) in generated.modules().zip(predicted.modules()) {
        assert_eq!(max_abs_diff(a1, a2), 0.0);
        assert_eq!(max_abs_diff(b1, b2), 0.0);
    }
}

/// Prompts of the two synthetic tasks are shifted apart: the linear probe tells every batch apart,
/// so the probe's baseline is the own task's mean.
#[test]
fn the_condition_probe_tells_separable_tasks_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (s, tasks) = setup(dir.path());
    let m = GeneratorTrainer::open(s, tasks, config(1))
        .unwrap()
        .run(None, &mut |_, _| {})
        .unwrap();
    let p = m.condition_probe.unwrap();
    assert_eq!(p.batch, 4);
    assert_eq!(p.batch_accuracy, 1.0);
    assert_eq!(p.confusion, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    assert!(p.separation > 1.0, "{}", p.separation);
    let (own, probed) = (
        m.baseline_task_mean.unwrap(),
        m.baseline_probe_task_mean.unwrap(),
    );
    assert!((own - probed).abs() < 1e-12, "{own} vs {probed}");

    // One task with another's prompts: the probe cannot tell them apart.
    let (_, mut tasks) = setup(dir.path());
    tasks[1].prompts = tasks[0].prompts.clone();
    let none = dnd_train::condition_probe(&tasks, 4).unwrap().unwrap();
    assert!(
        none.batch_accuracy < 1.0 && none.separation < 1e-9,
        "{none:?}"
    );
}
