//! Parity with sentence-transformers (fixture from scripts/reference/encoder_fixture.py), the length
//! policy, bad input and the disk cache. Tests needing the cached MiniLM skip with a message when it is
//! absent, unless DND_REQUIRE_ASSETS=1.

use candle_core::D;
use dnd_encode::{mean_pool_normalized, CachedEncoder, EncodeError, Encoder, EncoderConfig};
use std::path::{Path, PathBuf};

fn model_dir() -> Option<PathBuf> {
    let dir = dnd_assets::cache_root().join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("DND_REQUIRE_ASSETS").as_deref() != Ok("1"),
        "{} is required (DND_REQUIRE_ASSETS=1); run `dnd fetch --all`",
        dir.display()
    );
    eprintln!("skipping: {} not cached", dir.display());
    None
}

fn encoder(config: EncoderConfig) -> Option<Encoder> {
    Some(Encoder::load(&model_dir()?, config).unwrap())
}

fn fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_parity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn matches_sentence_transformers() {
    let Some(enc) = encoder(EncoderConfig::default()) else {
        return;
    };
    let fx = fixture();
    let stride = fx["stride"].as_u64().unwrap() as usize;
    let records = fx["texts"].as_array().unwrap();
    let texts: Vec<&str> = records
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    let ids = enc.tokenize(&texts).unwrap();
    let out = enc.encode(&texts).unwrap();
    assert_eq!(out.truncated, 1, "the last fixture text exceeds 256 pieces");
    let pooled = mean_pool_normalized(&out.hidden, &out.mask).unwrap();
    let (mut worst_hidden, mut worst_cos) = (0f32, 1f64);
    for (i, r) in records.iter().enumerate() {
        let want_ids: Vec<u32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids[i].0, want_ids, "word pieces of text {i}");
        let n = want_ids.len();
        let h: Vec<Vec<f32>> = out.hidden.get(i).unwrap().to_vec2().unwrap();
        for (row, want) in h.iter().zip(r["hidden_strided"].as_array().unwrap()) {
            let got: Vec<f32> = row.iter().step_by(stride).copied().collect();
            worst_hidden = worst_hidden.max(max_abs_diff(&got, &floats(want)));
        }
        worst_hidden = worst_hidden.max(max_abs_diff(&h[0], &floats(&r["hidden_first"])));
        worst_hidden = worst_hidden.max(max_abs_diff(&h[n - 1], &floats(&r["hidden_last"])));
        assert!(
            h[n..].iter().flatten().all(|&x| x == 0.0),
            "padding is zero"
        );
        let p: Vec<f32> = pooled.get(i).unwrap().to_vec1().unwrap();
        worst_cos = worst_cos.min(cosine(&p, &floats(&r["pooled"])));
    }
    eprintln!("per-token max |diff| {worst_hidden:.3e}, min pooled cosine {worst_cos:.8}");
    assert!(worst_hidden <= 1e-4, "hidden max |diff| {worst_hidden}");
    assert!(worst_cos >= 0.9999, "pooled cosine {worst_cos}");
}

#[test]
fn paraphrase_cosine_is_0_755() {
    let Some(enc) = encoder(EncoderConfig::default()) else {
        return;
    };
    let out = enc
        .encode(&["A man is eating food.", "A man is eating a piece of bread."])
        .unwrap();
    let p = mean_pool_normalized(&out.hidden, &out.mask).unwrap();
    let cos: f32 = (p.get(0).unwrap() * p.get(1).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    eprintln!("cosine {cos:.6}");
    assert!((cos - 0.755).abs() < 5e-4, "cosine {cos}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let Some(enc) = encoder(EncoderConfig::default()) else {
        return;
    };
    let none: [&str; 0] = [];
    let e = enc.encode(&none).unwrap_err();
    assert!(matches!(e, EncodeError::NoPrompts), "{e}");
    assert!(e.to_string().contains("prompt file empty"), "{e}");
    let e = enc.encode(&["fine", "  \n"]).unwrap_err();
    assert!(matches!(e, EncodeError::BlankPrompt { index: 1 }), "{e}");
    let dir = model_dir().unwrap();
    for max_len in [0, 1, 513] {
        let cfg = EncoderConfig {
            max_len,
            ..Default::default()
        };
        let e = Encoder::load(&dir, cfg).err().unwrap();
        assert!(e.to_string().contains("max_len"), "{e}");
    }
}

const LONG: &str =
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";

#[test]
fn long_prompts_truncate_or_fail_under_strict() {
    let cfg = EncoderConfig {
        max_len: 8,
        ..Default::default()
    };
    let Some(enc) = encoder(cfg.clone()) else {
        return;
    };
    let out = enc.encode(&["short", LONG]).unwrap();
    assert_eq!(out.truncated, 1);
    assert_eq!(out.hidden.dims(), &[2, 8, 384]);
    let ids = enc.tokenize(&[LONG]).unwrap();
    assert_eq!(ids[0].0.len(), 8);
    assert_eq!(ids[0].0[7], 102, "truncation keeps the final [SEP]");
    assert_eq!(ids[0].1, 16, "pieces before truncation");

    let strict = Encoder::load(
        &model_dir().unwrap(),
        EncoderConfig {
            strict: true,
            ..cfg
        },
    )
    .unwrap();
    let e = strict.encode(&["short", LONG]).unwrap_err();
    assert!(
        matches!(
            e,
            EncodeError::PromptTooLong {
                index: 1,
                tokens: 16,
                max_len: 8,
                ..
            }
        ),
        "{e}"
    );
    // The cache reports the caller's index for misses and hits alike.
    let dir = tempfile::tempdir().unwrap();
    let cached = CachedEncoder::new(strict, dir.path().into());
    for _ in 0..2 {
        let e = cached.encode(&["short", "short", LONG]).unwrap_err();
        assert!(
            matches!(e, EncodeError::PromptTooLong { index: 2, .. }),
            "{e}"
        );
    }
}

#[test]
fn padding_and_batching_do_not_change_a_prompt() {
    let Some(enc) = encoder(EncoderConfig {
        pad_to_max: true,
        max_len: 64,
        batch_size: 2,
        ..Default::default()
    }) else {
        return;
    };
    let alone = enc.encode(&["A man is eating food."]).unwrap();
    assert_eq!(alone.hidden.dims(), &[1, 64, 384]);
    assert_eq!(
        alone.mask.sum_all().unwrap().to_scalar::<f32>().unwrap(),
        8.0
    );
    let batch = enc
        .encode(&[LONG, "x", "A man is eating food.", LONG])
        .unwrap();
    let d = dnd_testkit::max_abs_diff(&batch.hidden.get(2).unwrap(), &alone.hidden.get(0).unwrap());
    assert!(d < 1e-5, "batch composition changed a prompt by {d}");
}

#[test]
fn cache_serves_repeated_prompts_without_encoding() {
    let Some(enc) = encoder(EncoderConfig::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cached = CachedEncoder::new(enc, dir.path().into());
    let prompts = [
        "What is the boiling point of water?",
        "Name a mammal.",
        "Name a mammal.",
    ];
    let first = cached.encode(&prompts).unwrap();
    assert_eq!(cached.computed(), 2, "a prompt drawn twice is encoded once");
    let second = cached.encode(&prompts).unwrap();
    assert_eq!(cached.computed(), 2, "second call is served from disk");
    assert_eq!(
        dnd_testkit::max_abs_diff(&first.hidden, &second.hidden),
        0.0
    );
    assert_eq!(dnd_testkit::max_abs_diff(&first.mask, &second.mask), 0.0);
    cached.encode(&["Name a mammal.", "A new one."]).unwrap();
    assert_eq!(cached.computed(), 3);
    // A fresh encoder over the same directory (a new training run) hits too.
    let again = CachedEncoder::new(
        encoder(EncoderConfig::default()).unwrap(),
        dir.path().into(),
    );
    let third = again.encode(&prompts).unwrap();
    assert_eq!(again.computed(), 0);
    assert_eq!(dnd_testkit::max_abs_diff(&first.hidden, &third.hidden), 0.0);
    // A different length limit is a different key.
    let short = CachedEncoder::new(
        encoder(EncoderConfig {
            max_len: 32,
            ..Default::default()
        })
        .unwrap(),
        dir.path().into(),
    );
    short.encode(&prompts[..1]).unwrap();
    assert_eq!(short.computed(), 1);
    let norms = mean_pool_normalized(&first.hidden, &first.mask)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(D::Minus1)
        .unwrap();
    assert!(norms
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|n| (n - 1.0).abs() < 1e-5));
}
