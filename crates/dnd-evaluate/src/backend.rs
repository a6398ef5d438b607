//! The model side of evaluation: text requests in, log-likelihoods or generated text out.

use dnd_llm::score::{encode_pair, generate_greedy_batch, loglikelihood, LogLikelihood};
use dnd_llm::{ChatMessage, Tokenizer, Transformer};
use dnd_tasks::Context;

use crate::{EvalError, Result};

/// Log-likelihoods of several continuations of one context.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub lls: Vec<LogLikelihood>,
    /// Tokens run through the model (context once, plus every continuation), for throughput.
    pub tokens: usize,
}

/// A greedy generation, already cut before its first stop string.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Prompt plus generated tokens run through the model.
    pub tokens: usize,
}

/// One generation an evaluation asks for: the arguments of [`LanguageModel::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    pub context: Context,
    pub prefix: String,
    pub stops: Vec<String>,
    pub max_new: usize,
}

/// What evaluation needs from a language model. The real one is [`LlmBackend`]; tests script one.
pub trait LanguageModel {
    /// `log P(continuation | context)` for each continuation, with lm-eval's tokenisation.
    fn loglikelihoods(&self, context: &Context, continuations: &[String]) -> Result<Scored>;

    /// Greedy generation after the rendered `context` followed by `prefix` (lm-eval's
    /// `gen_prefix`: the start of the answer, written for the model), stopping at an end-of-turn
    /// token, after `max_new` tokens, or once the generated text contains one of `stops`; the text
    /// is cut before the first stop and does not include `prefix`.
    fn generate(
        &self,
        context: &Context,
        prefix: &str,
        stops: &[String],
        max_new: usize,
    ) -> Result<Generation>;

    /// [`Self::generate`] for several requests; a model that can decode them as one batch does.
    fn generate_batch(&self, requests: &[GenRequest]) -> Result<Vec<Generation>> {
        requests
            .iter()
            .map(|r| self.generate(&r.context, &r.prefix, &r.stops, r.max_new))
            .collect()
    }
}

/// lm-eval's `until` handling: the text before the earliest occurrence of any stop string, and
/// whether one occurred. (lm-eval splits on each stop in turn, which keeps the same prefix.)
pub fn truncate_at_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    let cut = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match cut {
        Some(i) => (&text[..i], true),
        None => (text, false),
    }
}

/// A `dnd_llm` model (merge an adapter into it first: [`Transformer::merged`]) and its tokenizer.
pub struct LlmBackend<'a> {
    model: &'a Transformer,
    tokenizer: &'a Tokenizer,
}

impl<'a> LlmBackend<'a> {
    pub fn new(model: &'a Transformer, tokenizer: &'a Tokenizer) -> Self {
        Self { model, tokenizer }
    }

    /// The exact text the model is conditioned on: plain text as it is, chat messages through
    /// the model's chat template with the assistant header appended (lm-eval's
    /// `--apply_chat_template`).
    pub fn render(&self, context: &Context) -> Result<String> {
        match context {
            Context::Text(text) => Ok(text.clone()),
            Context::Chat(messages) => {
                let messages: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m| ChatMessage::new(m.role, m.content.as_str()))
                    .collect();
                Ok(self.tokenizer.apply_chat_template(&messages, true)?)
            }
        }
    }
}

impl LanguageModel for LlmBackend<'_> {
    /// Pairs are encoded as lm-eval does ([`encode_pair`]); those whose context encodes the same
    /// (all of them unless a continuation changes how trailing spaces move) share one forward pass
    /// of the context.
    fn loglikelihoods(&self, context: &Context, continuations: &[String]) -> Result<Scored> {
        let text = self.render(context)?;
        let pairs = continuations
            .iter()
            .map(|c| encode_pair(self.tokenizer, &text, c))
            .collect::<dnd_llm::Result<Vec<_>>>()?;
        let mut lls = vec![None; pairs.len()];
        let mut tokens = 0;
        for i in 0..pairs.len() {
            if lls[i].is_some() {
                continue;
            }
            let group: Vec<usize> = (i..pairs.len())
                .filter(|&j| lls[j].is_none() && pairs[j].0 == pairs[i].0)
                .collect();
            let conts: Vec<Vec<u32>> = group.iter().map(|&j| pairs[j].1.clone()).collect();
            tokens += pairs[i].0.len() + conts.iter().map(Vec::len).sum::<usize>();
            let scored = loglikelihood(self.model, None, &pairs[i].0, &conts)?;
            for (j, ll) in group.into_iter().zip(scored) {
                lls[j] = Some(ll);
            }
        }
        Ok(Scored {
            lls: lls.into_iter().flatten().collect(),
            tokens,
        })
    }

    /// The prompt is encoded without added special tokens, as lm-eval's HF backend does for these
    /// models. Stop strings are looked for in the decoded generation after every token.
    fn generate(
        &self,
        context: &Context,
        prefix: &str,
        stops: &[String],
        max_new: usize,
    ) -> Result<Generation> {
        let request = GenRequest {
            context: context.clone(),
            prefix: prefix.to_string(),
            stops: stops.to_vec(),
            max_new,
        };
        Ok(self.generate_batch(&[request])?.remove(0))
    }

    /// One left-padded batch, greedy ([`generate_greedy_batch`]): each request ends at its own stop
    /// strings or token budget and leaves the batch; the texts are those decoded one at a time (up to
    /// float rounding of the batched products).
    fn generate_batch(&self, requests: &[GenRequest]) -> Result<Vec<Generation>> {
        let mut prompts = Vec::with_capacity(requests.len());
        for r in requests {
            let prompt = self
                .tokenizer
                .encode(&(self.render(&r.context)? + &r.prefix), false)?;
            if prompt.is_empty() {
                return Err(EvalError::Input("generation context is empty".into()));
            }
            prompts.push(prompt);
        }
        let decode = |ids: &[u32]| self.tokenizer.decode(ids, true).unwrap_or_default();
        let stop = |i: usize, ids: &[u32]| {
            ids.len() >= requests[i].max_new || truncate_at_stop(&decode(ids), &requests[i].stops).1
        };
        let max_new = requests.iter().map(|r| r.max_new).max().unwrap_or(0);
        let outs = generate_greedy_batch(
            self.model,
            None,
            &prompts,
            max_new,
            self.tokenizer.eos_ids(),
            &stop,
        )?;
        requests
            .iter()
            .zip(prompts.iter().zip(&outs))
            .map(|(r, (prompt, ids))| {
                let text = self.tokenizer.decode(ids, true)?;
                Ok(Generation {
                    text: truncate_at_stop(&text, &r.stops).0.to_string(),
                    tokens: prompt.len() + ids.len(),
                })
            })
            .collect()
    }
}
