//! Generation from a saved (untrained) generator: the adapter it writes loads as a PEFT directory for
//! the base config; another base model or rank, a corrupt file and an empty prompt pool are clear errors.

use candle_core::{DType, Device, Tensor};
use dnd_decode::{DecoderConfig, GeneratorMeta, HyperConvDecoder};
use dnd_generate::{draw, draw_batches, ConditionNorm, Generator, GeneratorInfo};
use dnd_llm::{LoraConfig, ModelConfig, Target};
use dnd_testkit::{max_abs_diff, tiny_model_config};
use dnd_tokenize::LoraTokenizer;
use rand::SeedableRng;
use std::path::Path;

fn saved_generator(dir: &Path) {
    saved_generator_with(dir, |_| None)
}

/// A saved generator with the offset `offset(output shape)` (see `dnd_generate::OFFSET_FILE`).
fn saved_generator_with(dir: &Path, offset: impl Fn([usize; 3]) -> Option<Tensor>) {
    let model = tiny_model_config();
    let lora = LoraConfig::new(2, 4.0, &Target::ALL);
    let tok = LoraTokenizer::with_default_width(&model, &lora).unwrap();
    let (h, w) = tok.token_shape();
    let cfg = DecoderConfig::cpu_default([4, 8, 16], [tok.num_tokens(), h, w]);
    let dec = HyperConvDecoder::new(cfg, DType::F32, 3).unwrap();
    let info = GeneratorInfo {
        encoder_model_hash: "synthetic".into(),
        encoder_max_len: 8,
        base_model: "tiny".into(),
    };
    dnd_generate::save(
        dir,
        &dec,
        &GeneratorMeta::new(&model, &lora, tok.chunk_width()),
        &info,
        offset([tok.num_tokens(), h, w]).as_ref(),
        None,
    )
    .unwrap();
}

#[test]
fn a_generated_adapter_loads_as_peft_for_the_base_config() {
    let dir = tempfile::tempdir().unwrap();
    saved_generator(dir.path());
    let model = tiny_model_config();
    let g = Generator::load(dir.path(), &model, None).unwrap();
    assert_eq!((g.prompts_per_batch(), g.prompt_len()), (4, 8));
    // Prompts of different lengths, some longer than L.
    let states: Vec<Tensor> = (0..4)
        .map(|i| Tensor::randn(0f32, 1.0, (3 + 3 * i, 16), &Device::Cpu).unwrap())
        .collect();
    let lora = g.generate(&states.iter().collect::<Vec<_>>()).unwrap();
    let out = dir.path().join("adapter");
    dnd_llm::peft::save(&lora, &out, &g.info().base_model).unwrap();
    let back = dnd_llm::peft::load(&out, &model, DType::F32).unwrap();
    assert_eq!(back.modules().count(), 2 * 7);
    assert_eq!(back.config().rank, 2);
}

#[test]
fn the_offset_is_added_to_the_decoder_output() {
    let (plain, shifted) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    saved_generator(plain.path());
    let offset = |shape: [usize; 3]| Tensor::randn(0f32, 1.0, &shape, &Device::Cpu).unwrap();
    let model = tiny_model_config();
    let g0 = Generator::load(plain.path(), &model, None).unwrap();
    let o = offset(g0.decoder().config().output());
    saved_generator_with(shifted.path(), |_| Some(o.clone()));
    let g1 = Generator::load(shifted.path(), &model, None).unwrap();
    let states: Vec<Tensor> = (0..4)
        .map(|i| Tensor::randn(0f32, 1.0, (5 + i, 16), &Device::Cpu).unwrap())
        .collect();
    let refs: Vec<&Tensor> = states.iter().collect();
    let cond = dnd_generate::condition(&refs, g0.prompt_len())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let raw = g0.decoder().forward(&cond).unwrap().squeeze(0).unwrap();
    let same = |expected: &dnd_llm::Lora, got: &dnd_llm::Lora| {
        for ((l, t, a0, b0), (_, _, a1, b1)) in expected.modules().zip(got.modules()) {
            for (x, y) in [(a0, a1), (b0, b1)] {
                let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "layer {l} {t:?}");
            }
        }
    };
    let expected = g0.tokenizer().decode(&(&raw + &o).unwrap()).unwrap();
    same(&expected, &g1.generate(&refs).unwrap());

    // The offset scale multiplies the decoder's part only: 0 leaves the offset, 2.5 steps 2.5 times
    // as far from it.
    let g1 = Generator::load(shifted.path(), &model, None).unwrap();
    let at_offset = g1.with_offset_scale(0.0).generate(&refs).unwrap();
    same(&g0.tokenizer().decode(&o).unwrap(), &at_offset);
    let g1 = Generator::load(shifted.path(), &model, None).unwrap();
    let far = g1.with_offset_scale(2.5).generate(&refs).unwrap();
    let stepped = ((&raw * 2.5).unwrap() + &o).unwrap();
    same(&g0.tokenizer().decode(&stepped).unwrap(), &far);

    // An offset of the wrong shape is refused with the file named.
    let bad = tempfile::tempdir().unwrap();
    saved_generator_with(bad.path(), |_| Some(offset([1, 2, 3])));
    let err = Generator::load(bad.path(), &model, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("offset.safetensors") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn another_base_model_or_rank_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    saved_generator(dir.path());
    let other = ModelConfig {
        hidden_size: 48,
        ..tiny_model_config()
    };
    let err = Generator::load(dir.path(), &other, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("another adapter layout") && err.contains("base model"),
        "{err}"
    );
    let err = Generator::load(dir.path(), &tiny_model_config(), Some(8))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("rank 2, wanted 8"), "{err}");
}

#[test]
fn a_corrupt_generator_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    saved_generator(dir.path());
    let weights = dir.path().join(dnd_decode::WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = Generator::load(dir.path(), &tiny_model_config(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unreadable generator file"), "{err}");

    std::fs::write(dir.path().join(dnd_decode::CONFIG_FILE), "{ not json").unwrap();
    let err = Generator::load(dir.path(), &tiny_model_config(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unreadable generator file"), "{err}");
}

#[test]
fn prompt_draws_are_even_reproducible_and_refuse_an_empty_pool() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    assert!(draw(0, 4, &mut rng)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    // One description fills the batch with itself; a small pool is used evenly.
    assert_eq!(draw(1, 4, &mut rng).unwrap(), vec![0; 4]);
    let mut d = draw(3, 7, &mut rng).unwrap();
    d.sort();
    assert!([0, 1, 2]
        .iter()
        .all(|i| d.iter().filter(|&&x| x == *i).count() >= 2));
    // A large pool gives distinct prompts; batches differ from each other but not between calls.
    let a = draw_batches(100, 8, 3, 5).unwrap();
    assert_eq!(a, draw_batches(100, 8, 3, 5).unwrap());
    assert_ne!(a[0], a[1]);
    let mut s = a[0].clone();
    s.dedup();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), 8);
}

#[test]
fn the_condition_standardisation_fits_round_trips_and_is_applied() {
    let prompts: Vec<Tensor> = (0..3)
        .map(|i| {
            Tensor::randn(0f32, 1.0, (4 + i, 16), &Device::Cpu)
                .unwrap()
                .affine(3.0, 5.0)
                .unwrap()
        })
        .collect();
    let norm = ConditionNorm::fit(&prompts).unwrap();
    let all = Tensor::cat(
        &prompts
            .iter()
            .map(|p| norm.apply(p).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let mean: Vec<f32> = all.mean(0).unwrap().to_vec1().unwrap();
    let var: Vec<f32> = all.sqr().unwrap().mean(0).unwrap().to_vec1().unwrap();
    assert!(mean.iter().all(|m| m.abs() < 1e-5), "{mean:?}");
    assert!(var.iter().all(|v| (v - 1.0).abs() < 1e-4), "{var:?}");
    assert!(ConditionNorm::fit(&[]).is_err());
    assert!(norm
        .apply(&Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap())
        .is_err());

    // Saved with a generator, it is loaded and applied before the decoder.
    let dir = tempfile::tempdir().unwrap();
    saved_generator(dir.path());
    let model = tiny_model_config();
    let plain = Generator::load(dir.path(), &model, None).unwrap();
    let [n, _, c] = plain.decoder().config().input();
    let states: Vec<Tensor> = (0..n)
        .map(|i| {
            Tensor::randn(0f32, 1.0, (3 + i % 2, c), &Device::Cpu)
                .unwrap()
                .affine(2.0, 1.0)
                .unwrap()
        })
        .collect();
    let norm = ConditionNorm::fit(&states).unwrap();
    norm.save(dir.path()).unwrap();
    assert!(ConditionNorm::load(dir.path(), c + 1).is_err());
    let with = Generator::load(dir.path(), &model, None).unwrap();
    let refs: Vec<&Tensor> = states.iter().collect();
    let std: Vec<Tensor> = states.iter().map(|s| norm.apply(s).unwrap()).collect();
    let by_hand = plain.generate(&std.iter().collect::<Vec<_>>()).unwrap();
    let applied = with.generate(&refs).unwrap();
    let unapplied = plain.generate(&refs).unwrap();
    let first = |l: &dnd_llm::Lora| l.modules().next().unwrap().2.clone();
    assert_eq!(max_abs_diff(&first(&by_hand), &first(&applied)), 0.0);
    assert!(max_abs_diff(&first(&unapplied), &first(&applied)) > 0.0);
}
