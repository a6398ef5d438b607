//! Scoring text with a model: log-likelihood of continuations (multiple-choice evaluation) and
//! generation, greedy or sampled (generative evaluation, `dnd generate-text`, the server).

use crate::error::{LlmError, Result};
use crate::lora::Lora;
use crate::model::Transformer;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Tensor, D};

/// Log-likelihood of one continuation, as lm-evaluation-harness reports it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LogLikelihood {
    /// Sum of the log-probabilities of the continuation tokens.
    pub logprob: f64,
    /// Whether every continuation token is the argmax at its position.
    pub is_greedy: bool,
}

/// Score each continuation (token ids) after a shared, non-empty `context`.
///
/// The context minus its last token is run once into a KV cache; then all continuations are run together
/// as one right-padded batch continuing that cache, and the vocabulary projection is computed only at the
/// positions that predict continuation tokens.
pub fn loglikelihood(
    model: &Transformer,
    lora: Option<&Lora>,
    context: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<LogLikelihood>> {
    let Some((&last, prefix)) = context.split_last() else {
        return Err(LlmError::Input(
            "empty context: prepend a BOS/EOS token, as lm-eval does".into(),
        ));
    };
    if continuations.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = continuations.iter().position(Vec::is_empty) {
        return Err(LlmError::Input(format!("continuation {i} is empty")));
    }
    let dev = model.device().clone();
    let mut cache = model.new_cache();
    if !prefix.is_empty() {
        let ids = Tensor::new(prefix, &dev)?.unsqueeze(0)?;
        model.hidden(&ids, lora, Some(&mut cache))?;
    }
    let width = continuations.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(continuations.len() * width);
    let mut rows = Vec::new();
    for (i, cont) in continuations.iter().enumerate() {
        ids.push(last);
        ids.extend(&cont[..cont.len() - 1]);
        ids.extend(std::iter::repeat_n(0u32, width - cont.len()));
        rows.extend((0..cont.len()).map(|j| (i * width + j) as u32));
    }
    let ids = Tensor::from_vec(ids, (continuations.len(), width), &dev)?;
    let hidden = model.hidden(&ids, lora, Some(&mut cache))?;
    let rows_t = Tensor::new(rows.as_slice(), &dev)?;
    let logits = model
        .logits(&hidden.index_select(&rows_t, 0)?)?
        .to_dtype(DType::F64)?;
    let logp = log_softmax(&logits)?;
    let argmax: Vec<u32> = logp.argmax(D::Minus1)?.to_vec1()?;
    let logp: Vec<Vec<f64>> = logp.to_vec2()?;
    let mut out = Vec::with_capacity(continuations.len());
    let mut r = 0;
    for cont in continuations {
        let mut ll = LogLikelihood {
            logprob: 0.0,
            is_greedy: true,
        };
        for &tok in cont {
            ll.logprob += logp[r][tok as usize];
            ll.is_greedy &= argmax[r] == tok;
            r += 1;
        }
        if !ll.logprob.is_finite() {
            return Err(LlmError::NonFinite(format!(
                "log-likelihood {} for continuation {}",
                ll.logprob,
                out.len()
            )));
        }
        out.push(ll);
    }
    Ok(out)
}

/// Tokenise a (context, continuation) pair exactly as lm-evaluation-harness does: trailing spaces of the
/// context move to the continuation, the pair is encoded whole, and the continuation is what follows
/// the separately encoded context. An empty context becomes the BOS (else EOS) token.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        let prefix = tok.bos_id().or(tok.eos_id()).ok_or_else(|| {
            LlmError::Input("empty context and the tokenizer has no BOS/EOS token".into())
        })?;
        return Ok((vec![prefix], tok.encode(continuation, false)?));
    }
    let trimmed = context.trim_end();
    let (context, continuation) = (
        trimmed,
        format!("{}{continuation}", &context[trimmed.len()..]),
    );
    let whole = tok.encode(&format!("{context}{continuation}"), false)?;
    let ctx = tok.encode(context, false)?;
    let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
    if cont.is_empty() {
        return Err(LlmError::Input(format!(
            "continuation {continuation:?} encodes to no tokens"
        )));
    }
    Ok((ctx, cont))
}

fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Greedy decoding with a KV cache (a batch of one, [`generate_batch`]): up to `max_new` tokens
/// after `prompt`, stopping after any token in `stop_ids` (which is kept in the output) or when `stop`
/// says the generated ids so far are complete (for stop strings, which need the tokenizer).
pub fn generate_greedy(
    model: &Transformer,
    lora: Option<&Lora>,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    stop: &dyn Fn(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(LlmError::Input("empty prompt".into()));
    }
    let mut out = generate_greedy_batch(
        model,
        lora,
        &[prompt.to_vec()],
        max_new,
        stop_ids,
        &|_, ids| stop(ids),
    )?;
    Ok(out.pop().unwrap_or_default())
}

/// [`generate_batch`] with every sequence decoded greedily.
pub fn generate_greedy_batch(
    model: &Transformer,
    lora: Option<&Lora>,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop_ids: &[u32],
    stop: &dyn Fn(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    let greedy = vec![Sampling::GREEDY; prompts.len()];
    generate_batch(model, lora, prompts, &greedy, max_new, stop_ids, stop)
}

/// How a sequence's next token is chosen: the argmax when `temperature` is 0, else a draw from the
/// softmax of the logits over `temperature`, restricted to the `top_k` likeliest tokens (0: all) and
/// then to the smallest set of them whose probability reaches `top_p` (transformers' order), by a
/// generator seeded with `seed` (ChaCha8): the same seed and prompt give the same tokens, alone or in
/// any batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };

    /// A clear error for a temperature that is negative or not finite, or a `top_p` outside (0, 1].
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(LlmError::Input(format!(
                "temperature {} must be finite and >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(LlmError::Input(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// One sequence's [`Sampling`] and its random generator.
struct Sampler {
    s: Sampling,
    rng: rand_chacha::ChaCha8Rng,
}

impl Sampler {
    fn new(s: Sampling) -> Self {
        use rand::SeedableRng;
        Self {
            s,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(s.seed),
        }
    }

    /// The next token from one row of logits (`None` if a logit is not finite).
    fn pick(&mut self, logits: &[f32]) -> Option<u32> {
        if logits.iter().any(|l| !l.is_finite()) {
            return None;
        }
        if self.s.is_greedy() {
            // The first of equal maxima, as torch's argmax.
            let best = logits
                .iter()
                .enumerate()
                .fold(0, |b, (i, &l)| if l > logits[b] { i } else { b });
            return Some(best as u32);
        }
        let mut c: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l as f64 / self.s.temperature))
            .collect();
        let by_logit = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.s.top_k > 0 && self.s.top_k < c.len() {
            c.select_nth_unstable_by(self.s.top_k - 1, by_logit);
            c.truncate(self.s.top_k);
        }
        if self.s.top_p < 1.0 {
            c.sort_unstable_by(by_logit);
        }
        let max = c.iter().fold(f64::NEG_INFINITY, |m, x| m.max(x.1));
        let mut p: Vec<f64> = c.iter().map(|x| (x.1 - max).exp()).collect();
        if self.s.top_p < 1.0 {
            let total: f64 = p.iter().sum();
            let mut cum = 0.0;
            let keep = p
                .iter()
                .position(|&q| {
                    cum += q / total;
                    cum >= self.s.top_p
                })
                .map_or(p.len(), |i| i + 1);
            p.truncate(keep);
        }
        let total: f64 = p.iter().sum();
        let mut u = rand::Rng::random::<f64>(&mut self.rng) * total;
        for (i, q) in p.iter().enumerate() {
            if u < *q {
                return Some(c[i].0);
            }
            u -= q;
        }
        Some(c[p.len() - 1].0)
    }
}

/// Decoding of several prompts at once: one left-padded batch ([`Transformer::hidden_padded`]) with
/// one KV cache, one forward pass per new token for all unfinished sequences. Sequence `i` draws its
/// tokens by `sampling[i]`, and ends after a token in `stop_ids` (kept) or when `stop(i, ids)` says its
/// ids so far are complete; a finished sequence leaves the batch (its rows of the cache are dropped),
/// so the others run on at the smaller batch's cost. Each prompt gets what it gets alone (up to float
/// rounding of the batched matmuls).
pub fn generate_batch(
    model: &Transformer,
    lora: Option<&Lora>,
    prompts: &[Vec<u32>],
    sampling: &[Sampling],
    max_new: usize,
    stop_ids: &[u32],
    stop: &dyn Fn(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(LlmError::Input(format!("prompt {i} is empty")));
    }
    if sampling.len() != prompts.len() {
        return Err(LlmError::Input(format!(
            "{} sampling settings for {} prompts",
            sampling.len(),
            prompts.len()
        )));
    }
    for s in sampling {
        s.check()?;
    }
    let (b, width) = (
        prompts.len(),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
    );
    let mut outs = vec![Vec::new(); b];
    if b == 0 || max_new == 0 {
        return Ok(outs);
    }
    let mut samplers: Vec<Sampler> = sampling.iter().map(|&s| Sampler::new(s)).collect();
    let mut pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    // Padding is any valid id: no real position attends to it.
    let ids: Vec<u32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()))
        .collect();
    let dev = model.device().clone();
    let mut cache = model.new_cache();
    cache.reserve(width + max_new);
    let mut input = Tensor::from_vec(ids, (b, width), &dev)?;
    // The prompt index of each row of the batch.
    let mut live: Vec<usize> = (0..b).collect();
    for _ in 0..max_new {
        let t = input.dim(1)?;
        let hidden = model.hidden_padded(&input, &pads, lora, Some(&mut cache))?;
        let last: Vec<u32> = (0..live.len()).map(|r| (r * t + t - 1) as u32).collect();
        let logits: Vec<Vec<f32>> = model
            .logits(&hidden.index_select(&Tensor::new(last.as_slice(), &dev)?, 0)?)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let mut next = Vec::with_capacity(live.len());
        let mut keep = Vec::with_capacity(live.len());
        for (row, &i) in live.iter().enumerate() {
            let Some(tok) = samplers[i].pick(&logits[row]) else {
                return Err(LlmError::NonFinite(format!(
                    "logits of sequence {i} at generated token {}",
                    outs[i].len()
                )));
            };
            outs[i].push(tok);
            if !(stop_ids.contains(&tok) || stop(i, &outs[i])) {
                keep.push(row);
                next.push(tok);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < live.len() {
            cache.retain_rows(&keep)?;
            pads = keep.iter().map(|&r| pads[r]).collect();
            live = keep.iter().map(|&r| live[r]).collect();
        }
        input = Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?;
    }
    Ok(outs)
}
