//! Properties of the forward pass that need no external reference: the KV cache, batched scoring and
//! merging agree with the plain forward; LoRA gradients agree with finite differences (f64).

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::*;
use dnd_llm::score::{generate_greedy, loglikelihood};
use dnd_llm::{LoraConfig, Target};
use dnd_testkit::max_abs_diff;

/// Without room reserved (the slots grow), with room for fewer positions than the first call brings,
/// with room to spare, and asked for more room than there is memory (capped, not allocated).
#[test]
fn kv_cache_continuation_equals_full_forward() {
    let (model, _fx, _dir) = tiny_model("tiny_qwen2.json", DType::F32);
    let seq: Vec<u32> = vec![3, 9, 27, 81 % 64, 11, 5, 60];
    let full = model.hidden(&ids(&seq), None, None).unwrap();
    for reserve in [0, 2, 16, usize::MAX] {
        let mut cache = model.new_cache();
        cache.reserve(reserve);
        let a = model
            .hidden(&ids(&seq[..4]), None, Some(&mut cache))
            .unwrap();
        let b = model
            .hidden(&ids(&seq[4..6]), None, Some(&mut cache))
            .unwrap();
        let c = model
            .hidden(&ids(&seq[6..]), None, Some(&mut cache))
            .unwrap();
        assert_eq!(cache.len(), 7);
        let inc = Tensor::cat(&[a, b, c], 0).unwrap();
        let d = max_abs_diff(&full, &inc);
        assert!(d < 1e-5, "room for {reserve}: cached vs full: {d}");
    }
}

/// A batch-1 prefix in a cache with room reserved, continued by a batch of 2 (the slots broadcast)
/// twice: each row's hidden states equal its sequence's full forward.
#[test]
fn reserved_cache_broadcast_to_a_batch_equals_full_forwards() {
    let (model, _fx, _dir) = tiny_model("tiny_qwen2.json", DType::F32);
    let prefix: Vec<u32> = vec![3, 9, 27, 17];
    let conts: [Vec<u32>; 2] = [vec![11, 5, 60], vec![2, 44, 8]];
    let mut cache = model.new_cache();
    cache.reserve(12);
    model.hidden(&ids(&prefix), None, Some(&mut cache)).unwrap();
    let step = |range: std::ops::Range<usize>, cache: &mut dnd_llm::KvCache| {
        let rows: Vec<u32> = conts
            .iter()
            .flat_map(|c| c[range.clone()].to_vec())
            .collect();
        let t = Tensor::from_vec(rows, (2, range.len()), &Device::Cpu).unwrap();
        model.hidden(&t, None, Some(cache)).unwrap()
    };
    let (a, b) = (step(0..2, &mut cache), step(2..3, &mut cache));
    assert_eq!(cache.len(), 7);
    for (r, cont) in conts.iter().enumerate() {
        let all: Vec<u32> = prefix.iter().chain(cont).copied().collect();
        let full = model.hidden(&ids(&all), None, None).unwrap();
        let inc = Tensor::cat(
            &[a.narrow(0, 2 * r, 2).unwrap(), b.narrow(0, r, 1).unwrap()],
            0,
        )
        .unwrap();
        let d = max_abs_diff(&full.narrow(0, 4, 3).unwrap(), &inc);
        assert!(d < 1e-5, "row {r}: cached vs full: {d}");
    }
}

/// Sum of log-softmax over the continuation, computed from one plain forward of context + continuation.
fn reference_loglik(model: &dnd_llm::Transformer, ctx: &[u32], cont: &[u32]) -> (f64, bool) {
    let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let logits = model
        .forward(&ids(&all), None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let lse = logits
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp: Vec<Vec<f64>> = logits.broadcast_sub(&lse).unwrap().to_vec2().unwrap();
    let mut total = 0.0;
    let mut greedy = true;
    for (j, &tok) in cont.iter().enumerate() {
        let row = &logp[ctx.len() - 1 + j];
        total += row[tok as usize];
        let best = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        greedy &= best == tok as usize;
    }
    (total, greedy)
}

#[test]
fn batched_loglikelihood_equals_separate_forwards() {
    for name in ["tiny_llama.json", "tiny_qwen2.json"] {
        let (model, _fx, _dir) = tiny_model(name, DType::F32);
        let ctx = [1u32, 17, 4, 44, 8];
        let conts = vec![vec![5u32], vec![9, 2, 33], vec![60, 61]];
        let got = loglikelihood(&model, None, &ctx, &conts).unwrap();
        for (c, g) in conts.iter().zip(&got) {
            let (want, greedy) = reference_loglik(&model, &ctx, c);
            assert!(
                (g.logprob - want).abs() < 1e-4,
                "{name}: {} vs {want}",
                g.logprob
            );
            assert_eq!(g.is_greedy, greedy);
        }
        // A one-token context has no prefix to cache.
        let single = loglikelihood(&model, None, &ctx[..1], &conts[1..2]).unwrap()[0];
        assert!((single.logprob - reference_loglik(&model, &ctx[..1], &conts[1]).0).abs() < 1e-4);
    }
}

#[test]
fn greedy_continuation_is_reported_greedy() {
    let (model, _fx, _dir) = tiny_model("tiny_llama.json", DType::F32);
    let ctx = [2u32, 7, 19];
    let gen = generate_greedy(&model, None, &ctx, 4, &[], &|_| false).unwrap();
    assert_eq!(gen.len(), 4);
    let ll = loglikelihood(&model, None, &ctx, std::slice::from_ref(&gen)).unwrap()[0];
    assert!(ll.is_greedy, "the greedy decode must score as greedy");
    let stop_at = gen[1];
    let stopped = generate_greedy(&model, None, &ctx, 4, &[stop_at], &|_| false).unwrap();
    assert_eq!(stopped.last(), Some(&stop_at));
    assert!(stopped.len() <= 2);
}

#[test]
fn bad_scoring_inputs_are_errors() {
    let (model, _fx, _dir) = tiny_model("tiny_llama.json", DType::F32);
    assert!(loglikelihood(&model, None, &[], &[vec![1]]).is_err());
    assert!(loglikelihood(&model, None, &[1], &[vec![]]).is_err());
    let err = model
        .forward(&ids(&[1, 64]), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("64"), "{err}");
    let long: Vec<u32> = (0..129).map(|i| i % 64).collect();
    assert!(
        model.forward(&ids(&long), None).is_err(),
        "past max_position_embeddings"
    );
}

/// Scalar loss with a fixed, non-trivial weighting of every logit.
fn loss(model: &dnd_llm::Transformer, lora: &dnd_llm::Lora, seq: &[u32]) -> Tensor {
    let logits = model.forward(&ids(seq), Some(lora)).unwrap();
    let w = formula_tensor("loss-weights", logits.dims())
        .to_dtype(DType::F64)
        .unwrap();
    (logits * w).unwrap().sum_all().unwrap()
}

#[test]
fn lora_gradients_match_finite_differences() {
    for name in ["tiny_llama.json", "tiny_qwen2.json"] {
        let (model, _fx, _dir) = tiny_model(name, DType::F64);
        let cfg = model.config().clone();
        let lora = formula_lora(&cfg, LoraConfig::new(2, 4.0, &Target::ALL), DType::F64);
        let (trainable, vars) = lora.to_vars().unwrap();
        let seq = [3u32, 14, 15, 9, 26, 53];
        let grads = loss(&model, &trainable, &seq).backward().unwrap();
        let eps = 1e-6;
        let mut checked = 0;
        for (k, var) in vars.iter().enumerate() {
            let g = grads
                .get(var.as_tensor())
                .expect("every LoRA matrix gets a gradient");
            let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            // Probe a few entries of every matrix: first, middle, last.
            for &i in &[0, base.len() / 2, base.len() - 1] {
                let mut fd = 0.0;
                for sign in [1.0, -1.0] {
                    let mut v = base.clone();
                    v[i] += sign * eps;
                    var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    fd += sign * loss(&model, &trainable, &seq).to_scalar::<f64>().unwrap();
                }
                var.set(
                    &Tensor::from_vec(base.clone(), var.as_tensor().dims(), &Device::Cpu).unwrap(),
                )
                .unwrap();
                fd /= 2.0 * eps;
                let tol = 1e-6 * (1.0 + fd.abs());
                assert!(
                    (g[i] - fd).abs() < tol.max(1e-5 * fd.abs()),
                    "{name} var {k} [{i}]: autograd {} vs fd {fd}",
                    g[i]
                );
                checked += 1;
            }
        }
        assert_eq!(checked, vars.len() * 3);
        assert_eq!(vars.len(), cfg.num_layers * 7 * 2);
    }
}

/// A left-padded batch computes, for each row, what the row computes alone: the last position's
/// hidden state, and greedy generation with a shared cache (both tiny models: tied Llama with GQA,
/// Qwen2 with q/k/v biases), with a per-sequence stop.
#[test]
fn padded_batches_equal_each_sequence_alone() {
    for fixture in ["tiny_llama.json", "tiny_qwen2.json"] {
        let (model, _fx, _dir) = tiny_model(fixture, DType::F32);
        let prompts: Vec<Vec<u32>> = vec![
            vec![3, 9, 27],
            vec![5, 1, 60, 7, 33, 2, 8],
            vec![11, 4, 19, 50, 6],
        ];
        let width = 7;
        let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let padded: Vec<u32> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()))
            .collect();
        let batch = Tensor::from_vec(padded, (3, width), &Device::Cpu).unwrap();
        let h = model.hidden_padded(&batch, &pads, None, None).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = model.hidden(&ids(p), None, None).unwrap();
            let d = max_abs_diff(
                &alone.get(p.len() - 1).unwrap(),
                &h.get(i * width + width - 1).unwrap(),
            );
            assert!(
                d < 1e-5,
                "{fixture} prompt {i}: last hidden state differs by {d}"
            );
        }
        let stop = |i: usize, out: &[u32]| i == 1 && out.len() == 4;
        let batched =
            dnd_llm::score::generate_greedy_batch(&model, None, &prompts, 10, &[], &stop).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = generate_greedy(&model, None, p, 10, &[], &|out| stop(i, out)).unwrap();
            assert_eq!(batched[i], alone, "{fixture} prompt {i}");
        }
        assert_eq!(batched[1].len(), 4);
    }
}

fn sampled(t: f64, top_k: usize, top_p: f64, seed: u64) -> dnd_llm::score::Sampling {
    dnd_llm::score::Sampling {
        temperature: t,
        top_k,
        top_p,
        seed,
    }
}

/// Seeded sampling: the same seed gives the same tokens alone and inside a batch of other prompts
/// with other settings (one of them finishing early, so the batch shrinks around it); top-k 1 and
/// temperature 0 are greedy decoding.
#[test]
fn seeded_sampling_is_reproducible_alone_and_in_a_batch() {
    use dnd_llm::score::{generate_batch, Sampling};
    let (model, _fx, _dir) = tiny_model("tiny_llama.json", DType::F32);
    let prompts = vec![vec![3, 9, 27], vec![5, 1, 60, 7, 33, 2], vec![11, 4]];
    let settings = [
        sampled(1.3, 0, 1.0, 7),
        sampled(0.0, 0, 1.0, 0),
        sampled(0.8, 20, 0.9, 99),
    ];
    let stop = |i: usize, out: &[u32]| i == 1 && out.len() == 3;
    let batched = generate_batch(&model, None, &prompts, &settings, 12, &[], &stop).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate_batch(
            &model,
            None,
            std::slice::from_ref(p),
            &[settings[i]],
            12,
            &[],
            &|_, out| stop(i, out),
        )
        .unwrap();
        assert_eq!(batched[i], alone[0], "prompt {i}");
    }
    assert_eq!(batched[1].len(), 3);
    assert_eq!(batched[0].len(), 12);
    // The first prompt alone, up to `n` tokens, under one setting.
    let first = |s: Sampling, n: usize| {
        generate_batch(&model, None, &prompts[..1], &[s], n, &[], &|_, _| false)
    };
    let greedy = generate_greedy(&model, None, &prompts[0], 12, &[], &|_| false).unwrap();
    assert_eq!(first(sampled(2.0, 1, 1.0, 5), 12).unwrap()[0], greedy);
    // Another seed draws other tokens at temperature 1.3 (the tiny model's next-token distribution
    // is wide: 12 draws agreeing by chance is negligible).
    assert_ne!(first(sampled(1.3, 0, 1.0, 8), 12).unwrap()[0], batched[0]);
    assert_ne!(batched[0], greedy);
    let error = |s: Sampling| first(s, 4).unwrap_err().to_string();
    assert!(error(sampled(-1.0, 0, 1.0, 0)).contains("temperature -1"));
    assert!(error(sampled(1.0, 0, 0.0, 0)).contains("top_p 0"));
    let bad = generate_batch(
        &model,
        None,
        &prompts,
        &[Sampling::GREEDY],
        4,
        &[],
        &|_, _| false,
    );
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("1 sampling settings for 3 prompts"));
}

/// The first sampled token over 3000 seeds against the distribution it should follow, computed here
/// from the model's logits: softmax(logits / T), cut to the top k, then to the nucleus of mass top_p
/// and renormalised. Every drawn token must lie in the allowed set, and the frequencies must match
/// within 5 binomial standard deviations (plus 0.01).
#[test]
fn sampled_tokens_follow_the_tempered_truncated_softmax() {
    use dnd_llm::score::generate_batch;
    let (model, _fx, _dir) = tiny_model("tiny_llama.json", DType::F32);
    let prompt = vec![3u32, 9, 27, 5];
    let h = model.hidden(&ids(&prompt), None, None).unwrap();
    let logits: Vec<f32> = model
        .logits(&h.get(prompt.len() - 1).unwrap().unsqueeze(0).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let n = 3000;
    for (t, k, p) in [(1.0, 0, 1.0), (0.7, 8, 1.0), (1.5, 0, 0.6)] {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if k > 0 {
            order.truncate(k);
        }
        let w: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] - logits[order[0]]) as f64 / t).exp())
            .collect();
        let total: f64 = w.iter().sum();
        let mut keep = w.len();
        let mut cum = 0.0;
        for (j, x) in w.iter().enumerate() {
            cum += x / total;
            if cum >= p {
                keep = j + 1;
                break;
            }
        }
        let kept: f64 = w[..keep].iter().sum();
        let mut want = vec![0.0; logits.len()];
        for j in 0..keep {
            want[order[j]] = w[j] / kept;
        }
        let prompts = vec![prompt.clone(); n];
        let settings: Vec<_> = (0..n as u64).map(|s| sampled(t, k, p, s)).collect();
        let out = generate_batch(&model, None, &prompts, &settings, 1, &[], &|_, _| false).unwrap();
        let mut count = vec![0usize; logits.len()];
        for o in &out {
            count[o[0] as usize] += 1;
        }
        for (tok, (&c, &q)) in count.iter().zip(&want).enumerate() {
            let f = c as f64 / n as f64;
            if q == 0.0 {
                assert_eq!(
                    c, 0,
                    "T {t} k {k} p {p}: token {tok} is outside the allowed set"
                );
            }
            let sd = (q * (1.0 - q) / n as f64).sqrt();
            assert!(
                (f - q).abs() <= 5.0 * sd + 0.01,
                "T {t} k {k} p {p}: token {tok} drawn {f:.4}, expected {q:.4}"
            );
        }
    }
}
