//! llama.cpp exports on the tiny Llama written as a llama.cpp GGUF (permuted Q/K, Q8_0 and F32 tensors):
//! the merged GGUF gives dnd's adapted logits, the LoRA GGUF holds what llama.cpp's formula needs to
//! build the same weights, files are byte-identical across runs, and bad adapters are refused.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use dnd_export::{lora_gguf, merge_gguf, Precision};
use dnd_llm::gguf::GgufFile;
use dnd_llm::{Target, Transformer};
use dnd_testkit::{max_abs_diff, tiny_llm, write_llama_gguf};
use std::path::{Path, PathBuf};

mod common;
use common::adapter;

/// The tiny Llama as a GGUF in `dir`, and the model dnd loads from it.
fn tiny_base(dir: &Path) -> (PathBuf, Transformer) {
    let llm = tiny_llm(dir);
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let path = dir.join("base.gguf");
    write_llama_gguf(llm.model.config(), weights, true, &path);
    (path.clone(), load(&path))
}

fn load(path: &Path) -> Transformer {
    let mut f = GgufFile::open(path).unwrap();
    let cfg = f.config().unwrap();
    let w = f.weights(&cfg).unwrap();
    Transformer::new(cfg, w, DType::F32, path).unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[3u32, 17, 42, 99, 7, 250, 1, 64]], &Device::Cpu).unwrap()
}

fn read_gguf(path: &Path) -> (Content, std::fs::File) {
    let mut f = std::fs::File::open(path).unwrap();
    (Content::read(&mut f).unwrap(), f)
}

fn tensor(gguf: &mut (Content, std::fs::File), name: &str) -> Tensor {
    gguf.0
        .tensor(&mut gguf.1, name, &Device::Cpu)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

#[test]
fn merged_gguf_gives_the_adapted_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (base, model) = tiny_base(dir.path());
    let lora = adapter(model.config(), 4, 8.0, false, 0.05);
    let out = dir.path().join("merged.gguf");
    let report = merge_gguf(&base, Some(&lora), Precision::F32, false, &out).unwrap();
    assert_eq!(report.merged, 2 * 7);
    assert_eq!(report.dequantized, 0);
    let expected = model.forward(&ids(), Some(&lora)).unwrap();
    let merged = load(&out).forward(&ids(), None).unwrap();
    let d = max_abs_diff(&expected, &merged);
    assert!(d < 1e-4, "merged GGUF vs base + adapter: {d}");
    let plain = model.forward(&ids(), None).unwrap();
    assert!(
        max_abs_diff(&expected, &plain) > 1e-2,
        "the adapter matters"
    );
    // Tensors the adapter does not touch keep their quantisation, metadata is kept.
    let (content, _) = read_gguf(&out);
    assert_eq!(
        content.tensor_infos["token_embd.weight"].ggml_dtype,
        GgmlDType::Q8_0
    );
    assert_eq!(
        content.tensor_infos["blk.1.attn_q.weight"].ggml_dtype,
        GgmlDType::F32
    );
    assert!(content.metadata.contains_key("llama.block_count"));
}

#[test]
fn lora_gguf_holds_what_llama_cpp_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (base, model) = tiny_base(dir.path());
    // rsLoRA: llama.cpp only knows alpha / r, so the file's alpha must give alpha / sqrt(r).
    let lora = adapter(model.config(), 4, 6.0, true, 0.05);
    let out = dir.path().join("lora.gguf");
    let report = lora_gguf(&lora, model.config(), Precision::F32, &out).unwrap();
    assert!(report.rslora_folded_into_alpha && report.permuted_qk);
    assert_eq!(report.tensors, 2 * 7 * 2);
    let merged = dir.path().join("merged.gguf");
    merge_gguf(&base, Some(&lora), Precision::F32, false, &merged).unwrap();

    let mut file = read_gguf(&out);
    let meta = |k: &str| file.0.metadata[k].clone();
    assert!(matches!(meta("general.type"), Value::String(s) if s == "adapter"));
    assert!(matches!(meta("adapter.type"), Value::String(s) if s == "lora"));
    assert!(matches!(meta("general.architecture"), Value::String(s) if s == "llama"));
    let Value::F32(alpha) = meta("adapter.lora.alpha") else {
        panic!("alpha is not an f32")
    };
    let scale = alpha as f64 / 4.0;
    assert!((scale - 6.0 / 2.0).abs() < 1e-6, "alpha/r = {scale}");
    let mut base = read_gguf(&base);
    let mut merged = read_gguf(&merged);
    for layer in 0..2 {
        for t in Target::ALL {
            let name = format!("blk.{layer}.{}.weight", t.gguf());
            let (a, b) = (
                tensor(&mut file, &format!("{name}.lora_a")),
                tensor(&mut file, &format!("{name}.lora_b")),
            );
            let w = tensor(&mut base, &name);
            // llama.cpp's shape checks: a.ne[0] = in = w.ne[0], b.ne[1] = out = w.ne[1], a.ne[1] = b.ne[0].
            let (out_f, in_f) = w.dims2().unwrap();
            assert_eq!(a.dims(), [4, in_f], "{name} A");
            assert_eq!(b.dims(), [out_f, 4], "{name} B");
            let rebuilt = (w + (b.matmul(&a).unwrap() * scale).unwrap()).unwrap();
            let d = max_abs_diff(&rebuilt, &tensor(&mut merged, &name));
            assert!(d < 1e-6, "{name}: {d}");
        }
    }
}

#[test]
fn dequantized_copy_keeps_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (base, model) = tiny_base(dir.path());
    let out = dir.path().join("f32.gguf");
    let report = merge_gguf(&base, None, Precision::F32, true, &out).unwrap();
    assert!(report.dequantized > 0 && report.merged == 0);
    let (content, _) = read_gguf(&out);
    assert!(content
        .tensor_infos
        .values()
        .all(|i| i.ggml_dtype == GgmlDType::F32));
    let d = max_abs_diff(
        &model.forward(&ids(), None).unwrap(),
        &load(&out).forward(&ids(), None).unwrap(),
    );
    assert!(d < 1e-6, "{d}");
}

#[test]
fn files_are_byte_identical_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (base, model) = tiny_base(dir.path());
    let lora = adapter(model.config(), 4, 8.0, false, 0.05);
    let p = |n: &str| dir.path().join(n);
    for (a, b) in [("l1", "l2"), ("m1", "m2")] {
        for n in [a, b] {
            if n.starts_with('l') {
                lora_gguf(&lora, model.config(), Precision::F16, &p(n)).unwrap();
            } else {
                merge_gguf(&base, Some(&lora), Precision::F16, false, &p(n)).unwrap();
            }
        }
        assert_eq!(std::fs::read(p(a)).unwrap(), std::fs::read(p(b)).unwrap());
    }
}

#[test]
fn adapters_llama_cpp_cannot_take_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (base, model) = tiny_base(dir.path());
    let out = dir.path().join("x.gguf");
    let zero = adapter(model.config(), 4, 0.0, false, 0.05);
    let e = lora_gguf(&zero, model.config(), Precision::F32, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("finite positive alpha"), "{e}");
    // An adapter made for another base (wider MLP).
    let mut other = model.config().clone();
    other.intermediate_size += 16;
    let foreign = adapter(&other, 4, 8.0, false, 0.05);
    let e = merge_gguf(&base, Some(&foreign), Precision::F32, false, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit") && e.contains("gate_proj"), "{e}");
    let e = lora_gguf(&foreign, model.config(), Precision::F32, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        4,
        "nothing new"
    );
}
