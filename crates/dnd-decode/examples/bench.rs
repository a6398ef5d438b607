//! Measure candidate CPU decoder configs for SmolLM2-135M rank 8 (output 1590 x 10 x 194): parameters,
//! forward latency, forward+backward latency, and end-to-end generation (encode N prompts, decoder
//! forward, de-tokenize). `cargo run --release -p dnd-decode --example bench`.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use dnd_decode::{DecoderConfig, HyperConvDecoder};
use dnd_encode::{Encoder, EncoderConfig};
use dnd_llm::LoraConfig;
use dnd_tokenize::LoraTokenizer;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?; // warm-up
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

fn main() -> Result<()> {
    let model = dnd_testkit::smollm2_config();
    let tok = LoraTokenizer::with_default_width(&model, &LoraConfig::paper_default())?;
    let (h, w) = tok.token_shape();
    let out = [tok.num_tokens(), h, w];
    let only = std::env::args().nth(1);
    // Calibration: what a plain f32 matmul achieves right now (the machine is shared).
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), &Device::Cpu)?;
    let mm = time(3, || Ok(a.matmul(&a)?))?;
    println!(
        "matmul 1024^3: {:.1} GFLOP/s",
        2.0 * 1024f64.powi(3) / mm / 1e9
    );
    let candidates: Vec<(&str, DecoderConfig)> = vec![
        (
            "default N32 L32",
            DecoderConfig::cpu_default([32, 32, 384], out),
        ),
        (
            "N32 L64 depth 3",
            DecoderConfig::geometric([32, 64, 384], out, 3, 64, 3),
        ),
        (
            "N32 L64 depth 4 hidden 128",
            DecoderConfig::geometric([32, 64, 384], out, 4, 128, 3),
        ),
        ("N64 L32", DecoderConfig::cpu_default([64, 32, 384], out)),
    ];
    let encoder_dir = dnd_assets::cache_root().join("models/all-MiniLM-L6-v2");
    for (name, cfg) in candidates {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let dec = HyperConvDecoder::new(cfg.clone(), DType::F32, 0)?;
        let [n, l, c] = cfg.input();
        let x = Tensor::randn(0f32, 1.0, (1, n, l, c), &Device::Cpu)?;
        let fwd = time(3, || Ok(dec.forward(&x)?))?;
        let train = time(1, || Ok(dec.forward(&x)?.sqr()?.sum_all()?.backward()?))?;
        println!(
            "{name}: stages {:?} k{} | {:.2} M params, {:.2} GMAC | forward {:.3} s | forward+backward {:.2} s",
            cfg.stages,
            cfg.kernel,
            cfg.num_parameters() as f64 / 1e6,
            cfg.forward_macs() as f64 / 1e9,
            fwd,
            train
        );
        if !encoder_dir.is_dir() {
            continue;
        }
        // End to end, uncached: N prompts padded to L, one forward, tokens -> adapter.
        let enc = Encoder::load(
            &encoder_dir,
            EncoderConfig {
                max_len: l,
                pad_to_max: true,
                ..Default::default()
            },
        )?;
        let prompts: Vec<String> = (0..n)
            .map(|i| format!("Question {i}: which of these materials conducts heat best, wood, steel or wool? Explain."))
            .collect();
        let mut parts = [0f64; 3];
        let total = time(2, || {
            let s = Instant::now();
            let cond = enc.encode(&prompts)?.hidden.unsqueeze(0)?;
            parts[0] = s.elapsed().as_secs_f64();
            let tokens = dec.forward(&cond)?.squeeze(0)?;
            parts[1] = s.elapsed().as_secs_f64() - parts[0];
            tok.decode(&tokens)?;
            parts[2] = s.elapsed().as_secs_f64() - parts[0] - parts[1];
            Ok(())
        })?;
        println!(
            "    end to end {total:.3} s (encode {:.3}, decoder {:.3}, de-tokenize {:.3})",
            parts[0], parts[1], parts[2]
        );
    }
    Ok(())
}
