//! Bad files give clear errors that name the file and the problem, never a panic; and a tiny model
//! written as a llama.cpp-style GGUF (permuted Q/K) loads to the same logits as its HF directory.

mod common;

use candle_core::DType;
use common::*;
use dnd_llm::gguf::GgufFile;
use dnd_llm::{peft, LlmError, Lora, LoraConfig, ModelConfig, Target, Transformer};
use std::path::{Path, PathBuf};

/// Write the tiny llama formula model as a GGUF file the way llama.cpp lays it out.
fn write_tiny_gguf(cfg: &ModelConfig, path: &Path) {
    dnd_testkit::write_llama_gguf(cfg, formula_weights(cfg), false, path);
}

fn tiny_gguf() -> (ModelConfig, tempfile::TempDir, PathBuf) {
    let (model, _fx, dir) = tiny_model("tiny_llama.json", DType::F32);
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(model.config(), &path);
    (model.config().clone(), dir, path)
}

fn load_gguf(path: &Path) -> Result<Transformer, LlmError> {
    let mut f = GgufFile::open(path)?;
    let cfg = f.config()?;
    let w = f.weights(&cfg)?;
    Transformer::new(cfg, w, DType::F32, path)
}

#[test]
fn permuted_gguf_equals_hf_directory() {
    let (model, fx, dir) = tiny_model("tiny_llama.json", DType::F32);
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(model.config(), &path);
    let from_gguf = load_gguf(&path).unwrap();
    let mut cfg = from_gguf.config().clone();
    assert!(
        (cfg.rms_norm_eps - 1e-5).abs() < 1e-12,
        "GGUF stores eps as f32"
    );
    cfg.rms_norm_eps = model.config().rms_norm_eps;
    assert_eq!(&cfg, model.config());
    for (seq, expected) in input_seqs(&fx).iter().zip(fx["logits"].as_array().unwrap()) {
        let d = max_diff(
            &from_gguf
                .forward(&ids(seq), None)
                .unwrap()
                .squeeze(0)
                .unwrap(),
            expected,
        );
        assert!(d < 1e-4, "GGUF-loaded tiny llama: {d}");
    }
}

fn err_text(r: Result<Transformer, LlmError>) -> String {
    r.err().expect("must fail").to_string()
}

#[test]
fn wrong_magic_is_named() {
    let (_cfg, dir, path) = tiny_gguf();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..4].copy_from_slice(b"GGUX");
    let bad = dir.path().join("magic.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let e = err_text(load_gguf(&bad));
    assert!(
        e.contains("magic.gguf") && e.contains("not a readable GGUF"),
        "{e}"
    );
}

#[test]
fn truncated_gguf_names_file_and_tensor() {
    let (_cfg, dir, path) = tiny_gguf();
    let bytes = std::fs::read(&path).unwrap();
    for (i, keep) in [bytes.len() - 100, bytes.len() / 2, 40]
        .into_iter()
        .enumerate()
    {
        let bad = dir.path().join(format!("cut{i}.gguf"));
        std::fs::write(&bad, &bytes[..keep]).unwrap();
        let e = err_text(load_gguf(&bad));
        assert!(e.contains(&format!("cut{i}.gguf")), "{e}");
    }
}

#[test]
fn unknown_tensor_type_is_an_error() {
    // A minimal GGUF v3: one 1-D tensor whose ggml type id (99) does not exist.
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(0u64.to_le_bytes()); // metadata entries
    b.extend(4u64.to_le_bytes());
    b.extend(b"w.wt");
    b.extend(1u32.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(99u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len() + 64, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.gguf");
    std::fs::write(&path, b).unwrap();
    let e = GgufFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("odd.gguf") && e.contains("99"), "{e}");
}

#[test]
fn missing_metadata_key_is_named() {
    let (_cfg, dir, path) = tiny_gguf();
    let text = std::fs::read(&path).unwrap();
    // Rename one key in place (same length), so the file stays well-formed.
    let needle = b"llama.feed_forward_length";
    let pos = text
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut bytes = text.clone();
    bytes[pos..pos + 5].copy_from_slice(b"xxxxx");
    let bad = dir.path().join("nokey.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let e = err_text(load_gguf(&bad));
    assert!(
        e.contains("llama.feed_forward_length") && e.contains("nokey.gguf"),
        "{e}"
    );
}

#[test]
fn lying_safetensors_header_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let header = br#"{"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}}"#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header);
    b.extend([0u8; 16]); // 64 bytes promised, 16 present
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b).unwrap();
    let e = dnd_llm::hf::read_safetensors(&path, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a readable safetensors"),
        "{e}"
    );
}

#[test]
fn missing_config_key_is_named() {
    let fx = fixture("tiny_llama.json");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fx["config"].clone();
    cfg.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = ModelConfig::from_hf_file(&dir.path().join("config.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("`hidden_size`"),
        "{e}"
    );
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let e = ModelConfig::from_hf_file(&dir.path().join("config.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("invalid JSON"), "{e}");
}

#[test]
fn wrong_weight_shape_is_named() {
    let fx = fixture("tiny_llama.json");
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(&fx["config"], dir.path());
    let mut cfg = fx["config"].clone();
    cfg["intermediate_size"] = 64.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let c = ModelConfig::from_hf_file(&dir.path().join("config.json")).unwrap();
    let w = dnd_llm::hf::read_weights(dir.path(), DType::F32).unwrap();
    let e = err_text(Transformer::new(c, w, DType::F32, dir.path()));
    assert!(
        e.contains("gate_proj.weight") && e.contains("[48, 32]"),
        "{e}"
    );
}

/// The tiny Llama and a formula adapter on q/v/down saved as PEFT in `dir/adapter`.
fn saved_adapter() -> (Transformer, ModelConfig, Lora, tempfile::TempDir, PathBuf) {
    let (model, _fx, dir) = tiny_model("tiny_llama.json", DType::F32);
    let cfg = model.config().clone();
    let lora = formula_lora(
        &cfg,
        LoraConfig::new(4, 8.0, &[Target::Q, Target::V, Target::Down]),
        DType::F32,
    );
    let adir = dir.path().join("adapter");
    peft::save(&lora, &adir, "tiny").unwrap();
    (model, cfg, lora, dir, adir)
}

#[test]
fn peft_round_trip_and_mismatched_adapters() {
    let (model, cfg, lora, _dir, adir) = saved_adapter();
    let back = peft::load(&adir, &cfg, DType::F32).unwrap();
    assert_eq!(back.config(), lora.config());
    let x = ids(&[1, 2, 3]);
    let a = model.forward(&x, Some(&lora)).unwrap();
    let b = model.forward(&x, Some(&back)).unwrap();
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    // Same adapter against a base with another hidden size.
    let mut other = cfg.clone();
    other.hidden_size = 64;
    let e = peft::load(&adir, &other, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("does not fit"),
        "{e}"
    );
    // A config without `r`, and one that is not JSON.
    let cfg_path = adir.join(peft::CONFIG_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("r");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = peft::load(&adir, &cfg, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("`r`"),
        "{e}"
    );
    std::fs::write(&cfg_path, "[").unwrap();
    assert!(peft::load(&adir, &cfg, DType::F32)
        .err()
        .unwrap()
        .to_string()
        .contains("invalid JSON"));
    // Partial adapters are rejected rather than half-applied.
    let init = Lora::init(LoraConfig::new(2, 4.0, &[Target::Q]), &cfg, 0, DType::F32).unwrap();
    let parts: Vec<_> = init
        .modules()
        .skip(1)
        .map(|(l, t, a, b)| (l, t, a.clone(), b.clone()))
        .collect();
    let e = Lora::from_parts(init.config().clone(), &cfg, parts, "x".as_ref())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layer 0 q_proj is missing"), "{e}");
}

/// An extreme but finite `lora_alpha` parses (it is a number), and the scores it produces are refused
/// instead of being reported as null; greedy generation refuses its NaN logits too.
#[test]
fn non_finite_scores_are_errors() {
    let (model, cfg, lora, _dir, adir) = saved_adapter();
    let cfg_path = adir.join(peft::CONFIG_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["lora_alpha"] = serde_json::json!(1e300);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let huge = peft::load(&adir, &cfg, DType::F32).unwrap();
    let e = dnd_llm::score::loglikelihood(&model, Some(&huge), &[1, 2, 3], &[vec![4, 5]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite") && e.contains("lora_alpha"), "{e}");
    let e = dnd_llm::score::generate_greedy(&model, Some(&huge), &[1, 2, 3], 4, &[], &|_| false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
    // The same adapter at its real alpha scores finitely.
    let ok = dnd_llm::score::loglikelihood(&model, Some(&lora), &[1, 2, 3], &[vec![4, 5]]).unwrap();
    assert!(ok[0].logprob.is_finite());
}

/// Inputs the fuzzer (scripts/fuzz.sh) found crashing dnd, kept as regressions: each must now be a
/// clear error.
#[test]
fn fuzzer_finds_are_errors() {
    // A tensor shape whose element count overflows: candle's size check passed on the wrapped product
    // and dequantising it asked for an impossible allocation (a panic).
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/gguf-shape-overflow");
    let mut f = GgufFile::open(&path).unwrap();
    let cfg = f.config().unwrap();
    let e = f.weights(&cfg).expect_err("must fail").to_string();
    assert!(e.contains("needs more bytes than the file"), "{e}");
}
