//! The SFT objective on the tiny model: the decoder's gradients through de-tokenisation and the base
//! LLM's answer-token loss match central finite differences in f64, and the trainer runs it (alone and
//! hybrid with reconstruction), refusing it without a base model.

use candle_core::{DType, Device, Tensor, Var};
use dnd_collect::Sequence;
use dnd_decode::{DecoderConfig, GeneratorMeta, HyperConvDecoder};
use dnd_generate::GeneratorInfo;
use dnd_llm::{Llm, Lora, LoraConfig, Target};
use dnd_testkit::tiny_llm;
use dnd_tokenize::LoraTokenizer;
use dnd_train::{GeneratorTrainConfig, GeneratorTrainer, Objective, Setup, Sft, TrainingTask};
use rand::{Rng, SeedableRng};

fn sequences(seed: u64) -> Vec<Sequence> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..6)
        .map(|i| {
            let len = 6 + i % 4;
            Sequence {
                ids: (0..len).map(|_| rng.random_range(1..256)).collect(),
                context_len: len - 2,
            }
        })
        .collect()
}

/// Random f64 values in [-a, a], seeded.
fn uniform(dims: &[usize], a: f64, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-a..a)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// The tiny base model in `dtype`, its rank-2 tokenizer on two targets, and the tokens of an adapter
/// with non-zero B (every chunk's scale away from the clamp at zero).
fn tiny(dir: &std::path::Path, dtype: DType) -> (Llm, LoraTokenizer, Tensor) {
    tiny_llm(dir);
    let llm = Llm::load(dir, dtype).unwrap();
    let lora = LoraConfig::new(2, 4.0, &[Target::Q, Target::Down]);
    let tok = LoraTokenizer::new(llm.model.config(), &lora, 16).unwrap();
    let init = Lora::init(lora.clone(), llm.model.config(), 3, DType::F64).unwrap();
    let parts = init
        .modules()
        .enumerate()
        .map(|(i, (l, t, a, b))| (l, t, a.clone(), uniform(b.dims(), 0.05, 10 + i as u64)))
        .collect();
    let lora = Lora::from_parts(lora, llm.model.config(), parts, "<test>".as_ref()).unwrap();
    let (tokens, _) = tok.encode(&lora).unwrap();
    (llm, tok, tokens.to_dtype(dtype).unwrap())
}

#[test]
fn sft_gradients_reach_the_decoder_as_finite_differences_say() {
    let dir = tempfile::tempdir().unwrap();
    let (llm, tok, offset) = tiny(dir.path(), DType::F64);
    let (h, w) = tok.token_shape();
    let cfg = DecoderConfig::cpu_default([2, 3, 4], [tok.num_tokens(), h, w]);
    let dec = HyperConvDecoder::new(cfg, DType::F64, 5).unwrap();
    let cond = uniform(&[1, 2, 3, 4], 1.0, 7);
    let sft = Sft::new(llm.model, tok, vec![sequences(1)], 32).unwrap();
    let seqs = sequences(1);
    let batch: Vec<&Sequence> = seqs.iter().take(3).collect();
    let tokens = |d: &HyperConvDecoder| {
        // Scaled down so the decoder moves the adapter without swamping its scales.
        let out = (d.forward(&cond).unwrap().squeeze(0).unwrap() * 0.1).unwrap();
        (out + &offset).unwrap()
    };
    let loss = |d: &HyperConvDecoder| sft.loss_and_grad(&tokens(d), &batch).unwrap().0;
    let t = tokens(&dec);
    let (_, g) = sft.loss_and_grad(&t, &batch).unwrap();
    let grads = (t * g).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    let mut worst = 0f64;
    for (name, var) in dec.named_vars() {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let set = |v: &Var, vals: Vec<f64>| {
            v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
                .unwrap()
        };
        for k in 0..3 {
            let idx = (k * 7919 + 11) % base.len();
            let at = |d: f64| {
                let mut v = base.clone();
                v[idx] += d;
                set(&var, v);
                loss(&dec)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            set(&var, base.clone());
            worst = worst.max((analytic[idx] - numeric).abs() / numeric.abs().max(1e-3));
            checked += 1;
        }
    }
    eprintln!("SFT decoder gradients: {checked} checked, worst relative error {worst:.1e}");
    assert!(worst < 1e-5, "{worst}");
}

/// Two synthetic tasks on the tiny model's adapter layout, with labelled sequences each.
fn trainer(
    objective: Objective,
    sft: bool,
) -> anyhow::Result<(tempfile::TempDir, GeneratorTrainer)> {
    let dir = tempfile::tempdir().unwrap();
    let (llm, tok, offset) = tiny(dir.path(), DType::F32);
    let (h, w) = tok.token_shape();
    let task = |seed: u64, shift: f64| {
        let checkpoints = (0..3)
            .map(|i| {
                let noise = uniform(offset.dims(), 0.01, seed * 10 + i).to_dtype(DType::F32);
                (&offset + noise.unwrap()).unwrap()
            })
            .collect();
        let prompts = (0..5)
            .map(|i| {
                (uniform(&[3, 8], 1.0, seed * 100 + i)
                    .to_dtype(DType::F32)
                    .unwrap()
                    + shift)
                    .unwrap()
            })
            .collect();
        TrainingTask::new(format!("task{seed}"), checkpoints, prompts).unwrap()
    };
    let mask = Tensor::ones(offset.dims(), DType::F32, &Device::Cpu)?;
    let setup = Setup {
        out: dir.path().join("gen"),
        decoder: DecoderConfig::cpu_default([2, 3, 8], [tok.num_tokens(), h, w]),
        meta: GeneratorMeta::new(llm.model.config(), tok.lora_config(), tok.chunk_width()),
        info: GeneratorInfo {
            encoder_model_hash: "synthetic".into(),
            encoder_max_len: 3,
            base_model: "tiny".into(),
        },
        collection: "synthetic".into(),
        mask,
        tokens: tok.tokens().to_vec(),
        sft: sft
            .then(|| Sft::new(llm.model, tok.clone(), vec![sequences(1), sequences(2)], 32))
            .transpose()?,
    };
    let config = GeneratorTrainConfig {
        steps: 4,
        batch: 2,
        objective,
        sft_batch: 2,
        holdout_every: 3,
        validate_every: 2,
        save_every: 2,
        ..GeneratorTrainConfig::default()
    };
    let t = GeneratorTrainer::open(setup, vec![task(1, 1.0), task(2, -1.0)], config)?;
    Ok((dir, t))
}

#[test]
fn the_trainer_runs_the_sft_and_hybrid_objectives() {
    for objective in [Objective::Sft, Objective::Hybrid] {
        let (_dir, mut t) = trainer(objective, true).unwrap();
        let m = t.run(None, &mut |_, _| {}).unwrap();
        assert!(m.complete);
        let sft: Vec<f64> = m.steps.iter().map(|s| s.sft_loss.unwrap()).collect();
        assert!(sft.iter().all(|l| l.is_finite() && *l > 0.0), "{sft:?}");
        assert!(m.steps.iter().all(|s| s.grad_norm > 0.0));
        assert_eq!(m.config.objective, objective);
    }
    let (_dir, mut t) = trainer(Objective::Reconstruction, false).unwrap();
    let m = t.run(None, &mut |_, _| {}).unwrap();
    assert!(m.steps.iter().all(|s| s.sft_loss.is_none()));
    let err = trainer(Objective::Sft, false).err().unwrap().to_string();
    assert!(err.contains("needs the base model"), "{err}");
}
