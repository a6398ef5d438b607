//! Scoring text with a model: log-likelihood of continuations (multiple-choice evaluation) and greedy
//! generation (generative evaluation, sanity checks).

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

/// Greedy decoding with a KV cache (a batch of one, [`generate_greedy_batch`]): up to `max_new` tokens
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

/// Greedy decoding of several prompts at once: one left-padded batch ([`Transformer::hidden_padded`])
/// with one KV cache, one forward pass per new token for all of them. Each sequence ends after a token
/// in `stop_ids` (kept) or when `stop(i, ids)` says its ids so far are complete; a finished sequence
/// rides along, its outputs dropped, until all are done or `max_new` tokens. Each prompt gets what
/// [`generate_greedy`] gives it alone (up to float rounding of the batched matmuls).
pub fn generate_greedy_batch(
    model: &Transformer,
    lora: Option<&Lora>,
    prompts: &[Vec<u32>],
    max_new: usize,
    stop_ids: &[u32],
    stop: &dyn Fn(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(LlmError::Input(format!("prompt {i} is empty")));
    }
    let (b, width) = (
        prompts.len(),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
    );
    let mut outs = vec![Vec::new(); b];
    if b == 0 || max_new == 0 {
        return Ok(outs);
    }
    let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    // Padding is any valid id: no real position attends to it.
    let ids: Vec<u32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0, width - p.len()).chain(p.iter().copied()))
        .collect();
    let dev = model.device().clone();
    let mut cache = model.new_cache();
    let mut input = Tensor::from_vec(ids, (b, width), &dev)?;
    let mut done = vec![false; b];
    for _ in 0..max_new {
        let t = input.dim(1)?;
        let hidden = model.hidden_padded(&input, &pads, lora, Some(&mut cache))?;
        let last: Vec<u32> = (0..b).map(|i| (i * t + t - 1) as u32).collect();
        let logits =
            model.logits(&hidden.index_select(&Tensor::new(last.as_slice(), &dev)?, 0)?)?;
        let sums: Vec<f64> = logits.to_dtype(DType::F64)?.sum(1)?.to_vec1()?;
        if let Some(i) = (0..b).find(|&i| !done[i] && !sums[i].is_finite()) {
            return Err(LlmError::NonFinite(format!(
                "logits of sequence {i} at generated token {}",
                outs[i].len()
            )));
        }
        let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        for i in 0..b {
            if !done[i] {
                outs[i].push(next[i]);
                done[i] = stop_ids.contains(&next[i]) || stop(i, &outs[i]);
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input = Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?;
    }
    Ok(outs)
}
