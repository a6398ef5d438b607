//! Gradients against central finite differences in f64 for every parameter kind of a residual and a
//! non-residual layer, of the basis head (and the input), shapes, parameter counts, and the generator
//! files.

use candle_core::{DType, Device, Tensor, Var};
use dnd_decode::{DecodeError, DecoderConfig, GeneratorMeta, Head, HyperConvDecoder};
use dnd_llm::{LoraConfig, ModelConfig, Target};
use dnd_testkit::max_abs_diff;

fn tiny() -> DecoderConfig {
    // Layer 0 keeps the shape (residual); layer 1 changes N, H and W.
    DecoderConfig {
        stages: vec![[3, 5, 6], [3, 5, 6], [4, 3, 7]],
        kernel: 3,
        head: Head::Conv,
    }
}

/// The same stages with the basis head in place of the last layer.
fn tiny_basis() -> DecoderConfig {
    tiny().with_head(Head::Basis { k: 2 })
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A fixed pseudo-random pattern (no RNG state shared between tests).
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| ((i as f64 + 1.0) * (0.7 + seed as f64 * 0.13)).sin() * 1.3)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn set_elem(var: &Var, idx: usize, value: f64) {
    let mut v: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    v[idx] = value;
    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

#[test]
fn gradients_match_finite_differences_for_every_parameter_kind() {
    assert_eq!(check_gradients(tiny()), 2 * 9 + 1);
}

#[test]
fn basis_head_gradients_match_finite_differences() {
    assert_eq!(check_gradients(tiny_basis()), 9 + 4 + 1);
}

/// Checks every parameter's (and the input's) gradient of a fixed linear functional of the output on
/// a few elements each; returns how many tensors were checked.
fn check_gradients(cfg: DecoderConfig) -> usize {
    let dec = HyperConvDecoder::new(cfg, DType::F64, 11).unwrap();
    // Move LayerNorm affine, biases and the (zero) basis off their initial values so every term is
    // exercised.
    for (name, var) in dec.named_vars() {
        if name.contains("norm") || name.ends_with("bias") || name.ends_with("basis") {
            let t = (var.as_tensor() + randn(var.dims(), 5).affine(0.3, 0.0).unwrap()).unwrap();
            var.set(&t).unwrap();
        }
    }
    let x = Var::from_tensor(&randn(&[2, 3, 5, 6], 1)).unwrap();
    let r = randn(&[2, 4, 3, 7], 2);
    let loss = |d: &HyperConvDecoder| -> f64 {
        (d.forward(x.as_tensor()).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let grads = (dec.forward(x.as_tensor()).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut checked = Vec::new();
    let mut all: Vec<(String, Var)> = dec.named_vars();
    all.push(("input".into(), x.clone()));
    let eps = 1e-5;
    for (name, var) in &all {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = var.elem_count();
        let mut worst = 0f64;
        for k in 0..n.min(6) {
            let idx = (k * 7919 + 3) % n;
            let orig: f64 = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()[idx];
            set_elem(var, idx, orig + eps);
            let up = loss(&dec);
            set_elem(var, idx, orig - eps);
            let down = loss(&dec);
            set_elem(var, idx, orig);
            let numeric = (up - down) / (2.0 * eps);
            worst = worst.max((g[idx] - numeric).abs() / numeric.abs().max(1.0));
        }
        assert!(worst < 1e-6, "{name}: relative gradient error {worst}");
        checked.push(format!("{name} {worst:.1e}"));
    }
    eprintln!("{}", checked.join(", "));
    checked.len()
}

#[test]
fn shapes_follow_the_stages() {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 6), &Device::Cpu).unwrap();
    for cfg in [tiny(), tiny_basis()] {
        let dec = HyperConvDecoder::new(cfg, DType::F32, 0).unwrap();
        assert_eq!(dec.forward(&x).unwrap().dims(), &[2, 4, 3, 7]);
    }
    let dec = HyperConvDecoder::new(tiny(), DType::F32, 0).unwrap();
    let bad = Tensor::zeros((2, 3, 6, 5), DType::F32, &Device::Cpu).unwrap();
    let e = dec.forward(&bad).unwrap_err();
    assert!(matches!(e, DecodeError::Shape(_)), "{e}");
    assert!(e.to_string().contains("[B, 3, 5, 6]"), "{e}");
    for cfg in [
        DecoderConfig {
            stages: vec![[1, 2, 3]],
            kernel: 3,
            head: Head::Conv,
        },
        DecoderConfig {
            stages: vec![[1, 2, 3], [1, 2, 3]],
            kernel: 4,
            head: Head::Conv,
        },
        DecoderConfig {
            stages: vec![[1, 0, 3], [1, 2, 3]],
            kernel: 3,
            head: Head::Conv,
        },
        tiny().with_head(Head::Basis { k: 0 }),
    ] {
        assert!(matches!(
            HyperConvDecoder::new(cfg, DType::F32, 0),
            Err(DecodeError::Config(_))
        ));
    }
}

#[test]
fn parameter_counts() {
    let paper = DecoderConfig::paper_common_sense();
    let n = paper.num_parameters();
    eprintln!("paper common-sense decoder: {n} parameters");
    assert_eq!(n, 1_113_203_220);
    let mix: usize = paper
        .stages
        .windows(2)
        .map(|p| p[0][0] * p[1][0] * 81 + p[1][0])
        .sum();
    assert!(
        (mix as f64 / n as f64 - 0.92).abs() < 0.01,
        "92% in the N-mixing convs"
    );
    for cfg in [tiny(), tiny_basis()] {
        let dec = HyperConvDecoder::new(cfg.clone(), DType::F32, 0).unwrap();
        assert_eq!(dec.num_parameters(), cfg.num_parameters());
    }
    // The basis head: layer 0, then 2 x (3 x 5) coefficient weights, 2 biases, 2 + 1 outputs of 4 x 3 x 7.
    let layer0 = DecoderConfig::layer_parameters([3, 5, 6], [3, 5, 6], 3);
    assert_eq!(tiny_basis().num_parameters(), layer0 + 30 + 2 + 3 * 84);
    let cpu = DecoderConfig::cpu_default([32, 64, 384], [1590, 10, 194]);
    assert_eq!(cpu.input(), [32, 64, 384]);
    assert_eq!(cpu.output(), [1590, 10, 194]);
    let small = HyperConvDecoder::new(cpu.clone(), DType::F32, 0).unwrap();
    assert_eq!(small.num_parameters(), cpu.num_parameters());
}

fn smollm2() -> ModelConfig {
    dnd_testkit::smollm2_config()
}

#[test]
fn generator_files_round_trip_and_reject_other_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let lora = LoraConfig::paper_default();
    let meta = GeneratorMeta::new(&smollm2(), &lora, 192);
    let dec = HyperConvDecoder::new(tiny(), DType::F32, 3).unwrap();
    dec.save(dir.path(), &meta).unwrap();
    let back = HyperConvDecoder::load(dir.path(), &meta, DType::F32).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 5, 6), &Device::Cpu).unwrap();
    let diff = max_abs_diff(&dec.forward(&x).unwrap(), &back.forward(&x).unwrap());
    assert_eq!(diff, 0.0);

    let basis_dir = tempfile::tempdir().unwrap();
    let dec = HyperConvDecoder::new(tiny_basis(), DType::F32, 3).unwrap();
    let basis = &dec.head().unwrap().basis;
    basis
        .set(&randn(basis.dims(), 9).to_dtype(DType::F32).unwrap())
        .unwrap();
    dec.save(basis_dir.path(), &meta).unwrap();
    let back = HyperConvDecoder::load(basis_dir.path(), &meta, DType::F32).unwrap();
    assert_eq!(back.config(), &tiny_basis());
    let (a, b) = (dec.forward(&x).unwrap(), back.forward(&x).unwrap());
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(
        a.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );

    // decoder.json of a generator saved before the head setting existed: the paper's last layer.
    let (cfg, _) = HyperConvDecoder::read_meta(dir.path()).unwrap();
    let json = serde_json::to_value(&cfg).unwrap();
    assert!(
        json.get("head").is_none(),
        "the paper's head is not written: {json}"
    );
    let parsed: DecoderConfig = serde_json::from_value(json).unwrap();
    assert_eq!(parsed.head, Head::Conv);
    let basis = serde_json::to_value(tiny_basis()).unwrap();
    assert_eq!(basis["head"], serde_json::json!({"kind": "basis", "k": 2}));

    let mut other_base = smollm2();
    other_base.num_layers = 24;
    let cases = [
        (
            GeneratorMeta::new(&other_base, &lora, 192),
            "base model config",
        ),
        (
            GeneratorMeta::new(&smollm2(), &LoraConfig::new(4, 16.0, &Target::ALL), 192),
            "rank 8, wanted 4",
        ),
        (
            GeneratorMeta::new(&smollm2(), &LoraConfig::new(8, 16.0, &[Target::Q]), 192),
            "targets",
        ),
        (GeneratorMeta::new(&smollm2(), &lora, 96), "chunk width"),
    ];
    for (want, says) in cases {
        let e = HyperConvDecoder::load(dir.path(), &want, DType::F32).unwrap_err();
        assert!(matches!(e, DecodeError::Incompatible { .. }), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn im2col_conv_matches_candle_conv2d() {
    let x = randn(&[2, 3, 5, 7], 3);
    for k in [1, 3, 5] {
        let w = randn(&[4, 3, k, k], 4);
        let ours = dnd_decode::conv_same(&x, &w).unwrap();
        let theirs = x.conv2d(&w, k / 2, 1, 1, 1).unwrap();
        let d = max_abs_diff(&ours, &theirs);
        assert!(d < 1e-12, "kernel {k}: {d}");
    }
}

#[test]
fn matches_the_pytorch_reference_layer() {
    // scripts/reference/decoder_fixture.py: the same stages, written independently with torch convs.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hyperconv_tiny.json");
    let json: std::collections::HashMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut t: std::collections::HashMap<String, Tensor> = json
        .into_iter()
        .map(|(name, v)| {
            let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
            let data: Vec<f64> = serde_json::from_value(v["data"].clone()).unwrap();
            (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap())
        })
        .collect();
    let dec = HyperConvDecoder::new(tiny(), DType::F64, 0).unwrap();
    for (name, var) in dec.named_vars() {
        var.set(&t.remove(&name).unwrap_or_else(|| panic!("{name} missing")))
            .unwrap();
    }
    let out = dec.forward(&t["input"]).unwrap();
    let d = max_abs_diff(&out, &t["output"]);
    eprintln!("max |diff| vs PyTorch: {d:.2e}");
    assert!(d < 1e-10, "{d}");
}

#[test]
fn decoder_output_de_tokenizes_into_an_adapter() {
    let model = ModelConfig {
        num_layers: 2,
        hidden_size: 32,
        intermediate_size: 64,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        ..smollm2()
    };
    let lora = LoraConfig::new(2, 4.0, &Target::ALL);
    let tok = dnd_tokenize::LoraTokenizer::with_default_width(&model, &lora).unwrap();
    let (h, w) = tok.token_shape();
    let cfg = DecoderConfig::cpu_default([4, 8, 16], [tok.num_tokens(), h, w]);
    let dec = HyperConvDecoder::new(cfg, DType::F32, 0).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 16), &Device::Cpu).unwrap();
    let tokens = dec.forward(&x).unwrap().squeeze(0).unwrap();
    let adapter = tok.decode(&tokens).unwrap();
    assert_eq!(adapter.modules().count(), 2 * 7);
}
