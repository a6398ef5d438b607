//! Round trips (random adapters of tiny and real-size shapes, a real checkpoint when one is cached), the
//! exact border layout, token counts against the paper, and rejection of mismatched inputs.

use candle_core::{DType, Device, Tensor};
use dnd_llm::{Arch, Lora, LoraConfig, ModelConfig, Target};
use dnd_tokenize::{default_chunk_width, Factor, LoraTokenizer};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn config(
    arch: Arch,
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    hd: usize,
) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 1000,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hd,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: arch == Arch::Llama,
        qkv_bias: arch == Arch::Qwen2,
        max_position_embeddings: 2048,
    }
}

fn smollm2() -> ModelConfig {
    config(Arch::Llama, 576, 1536, 30, 9, 3, 64)
}

fn qwen25_05b() -> ModelConfig {
    config(Arch::Qwen2, 896, 4864, 24, 14, 2, 64)
}

/// A random adapter whose B factors span the regimes a collection holds: zero (initialisation), tiny,
/// ordinary, and constant (std 0 but non-zero mean).
fn random_lora(model: &ModelConfig, lora: &LoraConfig, seed: u64) -> Lora {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut parts = Vec::new();
    for layer in 0..model.num_layers {
        for (k, &t) in lora.targets.iter().enumerate() {
            let (i, o) = model.module_shape(t);
            let bound = 1.0 / (i as f32).sqrt();
            let a: Vec<f32> = (0..lora.rank * i)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let b_scale = [0.0, 1e-6, 1e-3, 2e-2][(layer + k) % 4];
            let constant = (layer + k) % 5 == 4;
            let b: Vec<f32> = (0..o * lora.rank)
                .map(|_| {
                    if constant {
                        0.25
                    } else {
                        b_scale * rng.random_range(-1.0f32..1.0)
                    }
                })
                .collect();
            parts.push((
                layer,
                t,
                Tensor::from_vec(a, (lora.rank, i), &Device::Cpu).unwrap(),
                Tensor::from_vec(b, (o, lora.rank), &Device::Cpu).unwrap(),
            ));
        }
    }
    Lora::from_parts(lora.clone(), model, parts, Path::new("<random>")).unwrap()
}

/// Largest `max |decoded - original| / max |original|` over every factor (0/0 counts as 0).
fn max_relative_error(a: &Lora, b: &Lora) -> f64 {
    let mut worst = 0f64;
    for ((_, _, a1, b1), (_, _, a2, b2)) in a.modules().zip(b.modules()) {
        for (x, y) in [(a1, a2), (b1, b2)] {
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let diff = x
                .iter()
                .zip(&y)
                .fold(0f64, |m, (p, q)| m.max((p - q).abs() as f64));
            if diff > 0.0 {
                worst = worst.max(diff / scale);
            }
        }
    }
    worst
}

fn round_trip(tok: &LoraTokenizer, lora: &Lora) -> f64 {
    let (tokens, mask) = tok.encode(lora).unwrap();
    let (h, w) = tok.token_shape();
    assert_eq!(tokens.dims(), &[tok.num_tokens(), h, w]);
    assert_eq!(mask.dims(), tokens.dims());
    max_relative_error(lora, &tok.decode(&tokens).unwrap())
}

#[test]
fn tiny_configs_round_trip_for_any_rank_width_and_targets() {
    let models = [
        config(Arch::Llama, 64, 160, 2, 4, 2, 16),
        config(Arch::Qwen2, 48, 112, 3, 6, 2, 8),
    ];
    let target_sets: [&[Target]; 3] = [
        &Target::ALL,
        &[Target::Q, Target::V],
        &[Target::Down, Target::Gate],
    ];
    let mut worst = 0f64;
    for (m, model) in models.iter().enumerate() {
        for (s, targets) in target_sets.iter().enumerate() {
            for rank in [1, 3, 8] {
                let lora = LoraConfig::new(rank, 16.0, targets);
                for cw in [7, 16, 24, default_chunk_width(model, targets), 1000] {
                    let tok = LoraTokenizer::new(model, &lora, cw).unwrap();
                    let adapter = random_lora(model, &lora, (m * 100 + s * 10 + rank) as u64);
                    worst = worst.max(round_trip(&tok, &adapter));
                }
            }
        }
    }
    eprintln!("tiny configs: max relative error {worst:.3e}");
    assert!(worst <= 1e-5, "{worst}");
}

#[test]
fn smollm2_shape_rank8_round_trips() {
    let model = smollm2();
    let lora = LoraConfig::paper_default();
    let adapter = random_lora(&model, &lora, 7);
    for cw in [default_chunk_width(&model, &lora.targets), 128] {
        let tok = LoraTokenizer::new(&model, &lora, cw).unwrap();
        let err = round_trip(&tok, &adapter);
        eprintln!(
            "SmolLM2 rank 8 cw {cw}: {} tokens of {:?}, padding {:.2}%, max relative error {err:.3e}",
            tok.num_tokens(),
            tok.token_shape(),
            100.0 * tok.padding_fraction()
        );
        assert!(err <= 1e-5, "{err}");
    }
}

#[test]
fn initialisation_round_trips_with_exact_zero_b() {
    let model = smollm2();
    let lora = LoraConfig::paper_default();
    let init = Lora::init(lora.clone(), &model, 42, DType::F32).unwrap();
    let tok = LoraTokenizer::with_default_width(&model, &lora).unwrap();
    let (tokens, _) = tok.encode(&init).unwrap();
    let back = tok.decode(&tokens).unwrap();
    for (_, _, _, b) in back.modules() {
        assert_eq!(
            b.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
    assert!(max_relative_error(&init, &back) <= 1e-5);
}

#[test]
fn chunk_widths_and_token_counts_match_the_paper() {
    let lora = LoraConfig::paper_default();
    let qwen = LoraTokenizer::with_default_width(&qwen25_05b(), &lora).unwrap();
    assert_eq!(qwen.chunk_width(), 128);
    assert_eq!(qwen.num_tokens(), 4296, "the paper's output N");
    assert_eq!(qwen.token_shape(), (10, 130));
    assert_eq!(qwen.padding_fraction(), 0.0);
    let smol = LoraTokenizer::with_default_width(&smollm2(), &lora).unwrap();
    assert_eq!(smol.chunk_width(), 192);
    assert_eq!(smol.num_tokens(), 30 * 53);
    assert_eq!(smol.padding_fraction(), 0.0);
    // Token order: layer 0 q A (3 chunks), q B^T (3 chunks), k A ...; up before gate.
    let t = smol.tokens();
    assert_eq!(
        (t[0].target, t[0].factor, t[0].start),
        (Target::Q, Factor::A, 0)
    );
    assert_eq!(
        (t[3].target, t[3].factor, t[3].start),
        (Target::Q, Factor::B, 0)
    );
    assert_eq!((t[6].target, t[6].factor), (Target::K, Factor::A));
    assert_eq!((t[20].target, t[20].factor), (Target::Up, Factor::A));
    assert_eq!((t[31].target, t[31].factor), (Target::Gate, Factor::A));
    assert_eq!((t[53].layer, t[53].target), (1, Target::Q));
    let b_tokens = t.iter().filter(|x| x.factor == Factor::B).count();
    assert_eq!(
        b_tokens,
        30 * 27,
        "q 3, k 1, v 1, o 3, up 8, gate 8, down 3"
    );
}

#[test]
fn border_holds_the_chunk_scale_and_the_gap_is_masked() {
    let model = config(Arch::Llama, 10, 20, 1, 2, 1, 4);
    let lora = LoraConfig::new(2, 16.0, &[Target::K]);
    // k: A [2, 10], B [4, 2]; width 6 -> A chunks of 6 and 4 columns, B^T one chunk of 4.
    let a: Vec<f32> = (0..20).map(|i| i as f32 * 0.5 - 3.0).collect();
    let b: Vec<f32> = vec![0.0; 8];
    let adapter = Lora::from_parts(
        lora.clone(),
        &model,
        vec![(
            0,
            Target::K,
            Tensor::from_vec(a.clone(), (2, 10), &Device::Cpu).unwrap(),
            Tensor::from_vec(b, (4, 2), &Device::Cpu).unwrap(),
        )],
        Path::new("<test>"),
    )
    .unwrap();
    let tok = LoraTokenizer::new(&model, &lora, 6).unwrap();
    let (tokens, mask) = tok.encode(&adapter).unwrap();
    assert_eq!(tokens.dims(), &[3, 4, 8]);
    let t: Vec<Vec<Vec<f32>>> = tokens.to_vec3().unwrap();
    let m: Vec<Vec<Vec<f32>>> = mask.to_vec3().unwrap();
    // Second A chunk: columns 6..10 of both rows.
    let chunk: Vec<f64> = (0..2)
        .flat_map(|i| (6..10).map(|j| a[i * 10 + j] as f64).collect::<Vec<_>>())
        .collect();
    let mean = chunk.iter().sum::<f64>() / 8.0;
    let std = (chunk.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0).sqrt();
    let (mp, sp) = ((8.0 * mean) as f32, ((0.9 * std + 0.1).ln() + 1.6) as f32);
    let tk = &t[1];
    for row in &tk[2..4] {
        for (j, v) in row.iter().enumerate() {
            assert_eq!(*v, if j % 2 == 0 { mp } else { sp });
        }
    }
    for row in &tk[..2] {
        assert_eq!((row[6], row[7]), (mp, sp));
        assert_eq!(&row[4..6], &[0.0, 0.0], "gap is zero");
    }
    assert_eq!(m[1][0], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
    assert_eq!(m[0][0], vec![1.0; 8], "a full chunk has no gap");
    assert_eq!(m[1][3], vec![1.0; 8], "border rows are never masked");
    let z: Vec<f32> = tk[..2].iter().flat_map(|r| r[..4].to_vec()).collect();
    let zm = z.iter().sum::<f32>() / 8.0;
    let zs = (z.iter().map(|x| (x - zm).powi(2)).sum::<f32>() / 7.0).sqrt();
    assert!(
        zm.abs() < 1e-5 && (zs - 1.0).abs() < 1e-5,
        "standardised: {zm} {zs}"
    );
    // B = 0: standardised zeros, m' = 0 and s' = ln(0.1) + 1.6.
    assert_eq!(t[2][0][..4], [0.0; 4]);
    assert_eq!(t[2][3][1], ((0.1f64).ln() + 1.6) as f32);
}

#[test]
fn decoding_averages_the_border_and_clamps_negative_std() {
    let model = config(Arch::Llama, 64, 160, 1, 4, 2, 16);
    let lora = LoraConfig::new(4, 16.0, &[Target::Q]);
    let tok = LoraTokenizer::new(&model, &lora, 32).unwrap();
    let adapter = random_lora(&model, &lora, 3);
    let (tokens, _) = tok.encode(&adapter).unwrap();
    // Zero-mean noise on the border alone barely moves the result: it is averaged over 2(cw+2)+2r cells.
    let (h, w) = tok.token_shape();
    let mut border = vec![0f32; h * w];
    for (i, v) in border.iter_mut().enumerate() {
        let (row, col) = (i / w, i % w);
        if row >= h - 2 || col >= w - 2 {
            *v = if (row + col) % 2 == 0 { 1e-3 } else { -1e-3 };
        }
    }
    let noise = Tensor::from_vec(border, (1, h, w), &Device::Cpu).unwrap();
    let noisy = tokens.broadcast_add(&noise).unwrap();
    assert!(max_relative_error(&adapter, &tok.decode(&noisy).unwrap()) < 1e-2);
    // A border claiming std below 0 decodes to the chunk mean, not a sign-flipped matrix.
    let low = Tensor::full(-5f32, (tok.num_tokens(), h, w), &Device::Cpu).unwrap();
    let back = tok.decode(&low).unwrap();
    let (a, _, _) = back.get(0, Target::Q).unwrap();
    let vals: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    assert!(vals.iter().all(|&v| v == -5.0 / 8.0), "{:?}", &vals[..4]);
}

#[test]
fn mismatched_inputs_are_rejected() {
    let model = config(Arch::Llama, 64, 160, 2, 4, 2, 16);
    let lora = LoraConfig::new(4, 16.0, &Target::ALL);
    let tok = LoraTokenizer::new(&model, &lora, 32).unwrap();
    let other = random_lora(&model, &LoraConfig::new(2, 16.0, &Target::ALL), 1);
    let e = tok.encode(&other).err().unwrap().to_string();
    assert!(e.contains("rank 2") && e.contains("rank 4"), "{e}");
    let bad = Tensor::zeros((3, 6, 34), DType::F32, &Device::Cpu).unwrap();
    let e = tok.decode(&bad).err().unwrap().to_string();
    assert!(e.contains("expected"), "{e}");
    assert!(LoraTokenizer::new(&model, &lora, 0).is_err());
}

/// A PEFT adapter to test on: `$DND_TEST_ADAPTER`, else the first checkpoint of a cached collection.
fn real_checkpoint() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DND_TEST_ADAPTER") {
        return Some(dir.into());
    }
    let root = dnd_assets::cache_root().join("collections");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
        .ok()?
        .flatten()
        .flat_map(|c| std::fs::read_dir(c.path()).into_iter().flatten().flatten())
        .flat_map(|t| {
            std::fs::read_dir(t.path().join("checkpoints"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|s| s.path())
        .filter(|s| s.join("adapter_model.safetensors").is_file())
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn real_checkpoint_round_trips() {
    let Some(dir) = real_checkpoint() else {
        eprintln!(
            "skipping: no collected checkpoint under $DND_CACHE/collections (or DND_TEST_ADAPTER)"
        );
        return;
    };
    let gguf = dnd_assets::cache_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = if gguf.is_file() {
        dnd_llm::gguf::GgufFile::open(&gguf)
            .unwrap()
            .config()
            .unwrap()
    } else {
        smollm2()
    };
    let adapter = match dnd_llm::peft::load(&dir, &model, DType::F32) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("skipping: {} is not a SmolLM2 adapter: {e}", dir.display());
            return;
        }
    };
    let tok = LoraTokenizer::with_default_width(&model, adapter.config()).unwrap();
    let err = round_trip(&tok, &adapter);
    eprintln!(
        "{}: {} tokens, max relative error {err:.3e}",
        dir.display(),
        tok.num_tokens()
    );
    assert!(err <= 1e-5, "{err}");
}

/// The tensor-op decoding equals the reference decoding, on tiny configs and the SmolLM2 shape.
#[test]
fn differentiable_decoding_equals_decoding() {
    let tiny = config(Arch::Qwen2, 48, 112, 3, 6, 2, 8);
    let mut worst = 0f64;
    for (model, targets, rank, cw) in [
        (tiny.clone(), &Target::ALL[..], 3, 16),
        (tiny, &[Target::Q, Target::Down][..], 1, 7),
        (smollm2(), &Target::ALL[..], 8, 0),
    ] {
        let lora = LoraConfig::new(rank, 16.0, targets);
        let cw = if cw == 0 {
            default_chunk_width(&model, targets)
        } else {
            cw
        };
        let tok = LoraTokenizer::new(&model, &lora, cw).unwrap();
        let (tokens, _) = tok.encode(&random_lora(&model, &lora, 5)).unwrap();
        let plain = tok.decode(&tokens).unwrap();
        let tensor = tok.decode_differentiable(&tokens).unwrap();
        worst = worst.max(max_relative_error(&plain, &tensor));
    }
    eprintln!("differentiable vs reference decoding: max relative difference {worst:.2e}");
    assert!(worst < 1e-5, "{worst}");
}

/// Gradients of a fixed linear functional of the decoded adapter with respect to the tokens (data
/// cells and both border kinds) against central finite differences in f64.
#[test]
fn differentiable_decoding_gradients_match_finite_differences() {
    let model = config(Arch::Llama, 64, 160, 1, 4, 2, 16);
    let lora = LoraConfig::new(2, 4.0, &[Target::Q, Target::Up]);
    let tok = LoraTokenizer::new(&model, &lora, 24).unwrap();
    let (tokens, _) = tok.encode(&random_lora(&model, &lora, 9)).unwrap();
    let tokens = candle_core::Var::from_tensor(&tokens.to_dtype(DType::F64).unwrap()).unwrap();
    let weights: Vec<Tensor> = {
        let l = tok.decode_differentiable(tokens.as_tensor()).unwrap();
        l.modules()
            .enumerate()
            .flat_map(|(i, (_, _, a, b))| {
                [(a, 2 * i), (b, 2 * i + 1)].map(|(t, s)| {
                    let n = t.elem_count();
                    let v: Vec<f64> = (0..n).map(|k| ((k + 3 * s) as f64 * 0.37).sin()).collect();
                    Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
                })
            })
            .collect()
    };
    let loss = |t: &Tensor| -> Tensor {
        let l = tok.decode_differentiable(t).unwrap();
        let mut terms = Vec::new();
        for (_, _, a, b) in l.modules() {
            terms.push(a.clone());
            terms.push(b.clone());
        }
        terms
            .iter()
            .zip(&weights)
            .map(|(t, w)| (t * w).unwrap().sum_all().unwrap())
            .reduce(|x, y| (x + y).unwrap())
            .unwrap()
    };
    let grads = loss(tokens.as_tensor()).backward().unwrap();
    let g: Vec<f64> = grads
        .get(tokens.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (h, w) = tok.token_shape();
    let base: Vec<f64> = tokens.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    // A data cell, an m' cell on the right column, an s' cell in the bottom rows, of several tokens.
    let mut worst = 0f64;
    for n in [0, 1, tok.num_tokens() - 1] {
        for (i, j) in [(0, 3), (1, w - 2), (h - 1, 1), (h - 2, 4)] {
            let idx = n * h * w + i * w + j;
            let at = |d: f64| {
                let mut v = base.clone();
                v[idx] += d;
                let t = Tensor::from_vec(v, tokens.dims(), &Device::Cpu).unwrap();
                loss(&t).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            worst = worst.max((g[idx] - numeric).abs() / numeric.abs().max(1.0));
        }
    }
    eprintln!("decoding gradient: worst relative error {worst:.1e}");
    assert!(worst < 1e-6, "{worst}");
}
