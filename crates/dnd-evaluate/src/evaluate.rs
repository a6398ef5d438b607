//! Score a task's examples with a [`LanguageModel`] and aggregate lm-eval's metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dnd_tasks::metrics::{estimate, score_generation, score_loglikelihoods, BOOTSTRAP_ITERS};
use dnd_tasks::{Body, Context, Example, Metric, Part, PromptStyle, SplitConfig, Task};
use serde::{Deserialize, Serialize};

use crate::backend::{truncate_at_stop, GenRequest, Generation, LanguageModel};
use crate::choice;
use crate::code::{humaneval_program, Outcome, Sandbox};
use crate::{EvalError, Result};

/// Seed of every bootstrap, so a result file always shows the same standard errors.
const BOOTSTRAP_SEED: u64 = 0;

/// Items whose generations are decoded together, as one batch: 8 sequences decode 5-7x the tokens
/// per second of one on 2 cores (`dnd bench llm`), and a chunk waits for its longest generation.
const GENERATION_BATCH: usize = 8;

/// How multiple-choice (and schema) items are scored. Generative and code tasks ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// lm-eval: the option with the highest log-likelihood is the answer.
    #[default]
    Loglikelihood,
    /// The paper's: generate an answer and parse an option letter (see [`choice`]).
    Generative,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Loglikelihood => "loglikelihood",
            Protocol::Generative => "generative",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub style: PromptStyle,
    pub protocol: Protocol,
    /// Generation budget for GSM8K and HumanEval.
    pub max_new_tokens: usize,
    /// Interpreter for HumanEval programs.
    pub python: PathBuf,
    /// Wall-clock limit of one HumanEval program.
    pub code_timeout: Duration,
}

impl Default for EvalConfig {
    /// lm-eval's defaults where it has them (256 new tokens for GSM8K); 10 s per program.
    fn default() -> Self {
        EvalConfig {
            style: PromptStyle::Plain,
            protocol: Protocol::Loglikelihood,
            max_new_tokens: 256,
            python: "python3".into(),
            code_timeout: Duration::from_secs(10),
        }
    }
}

/// One example's outcome, kept so two runs can be compared item by item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// Per-item metric values (0/1 for accuracies), keyed like [`Evaluation::metrics`].
    pub scores: BTreeMap<String, f64>,
    /// Log-likelihood of each option (log-likelihood protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<f64>,
    /// The generated text (generation protocol, GSM8K, HumanEval completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Why a program failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Tokens run through the model for this item.
    pub tokens: usize,
}

/// A mean over items with its standard errors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    pub value: f64,
    /// Seeded bootstrap (dnd_tasks::metrics::BOOTSTRAP_ITERS resamples).
    pub stderr: f64,
    pub stderr_analytic: f64,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub records: Vec<Record>,
    pub metrics: BTreeMap<String, MetricValue>,
    pub wall_s: f64,
    /// Sum of [`Record::tokens`].
    pub tokens: usize,
    /// Conditions worth recording next to the numbers (e.g. whether code ran without network).
    pub notes: Vec<String>,
}

/// The metric a results table shows for a task: lm-eval's headline one, or `gen_acc` for
/// multiple choice under [`Protocol::Generative`]. GSM8K shows flexible extraction because a
/// zero-shot model rarely writes lm-eval's strict `#### N` (both are in the results).
pub fn primary_metric(task: &Task, protocol: Protocol) -> &'static str {
    match (task.metric, protocol) {
        (Metric::AccAndAccNorm | Metric::Acc, Protocol::Generative) => "gen_acc",
        (Metric::AccAndAccNorm, _) => "acc_norm",
        (Metric::Acc, _) => "acc",
        (Metric::ExactMatch, _) => "exact_match_flexible",
        (Metric::PassAt1, _) => "pass@1",
    }
}

/// The examples an evaluation scores: the first `limit` of a split part in split order. Split
/// order is hash order, so a limited run scores a uniform random subset that only grows as the
/// limit grows.
pub fn select_examples(
    task: &Task,
    root: &std::path::Path,
    part: Part,
    limit: Option<usize>,
    split: &SplitConfig,
) -> Result<Vec<Example>> {
    let splits = task.splits(root, split)?;
    let mut examples = splits.part(part).to_vec();
    examples.truncate(limit.unwrap_or(usize::MAX));
    Ok(examples)
}

/// Score `examples` (in order) of `task`; `progress` gets the number of items done so far.
pub fn evaluate(
    lm: &dyn LanguageModel,
    task: &Task,
    examples: &[Example],
    cfg: &EvalConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<Evaluation> {
    let start = Instant::now();
    let mut sandbox = None;
    let mut records = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(GENERATION_BATCH) {
        let requests: Vec<Option<GenRequest>> = chunk
            .iter()
            .map(|ex| generation_request(ex, task, cfg))
            .collect();
        let batch: Vec<GenRequest> = requests.iter().flatten().cloned().collect();
        let mut generations = lm.generate_batch(&batch)?.into_iter();
        for (ex, request) in chunk.iter().zip(&requests) {
            let rec = match request {
                None => loglikelihood_item(lm, ex, cfg.style)?,
                Some(_) => {
                    let gen = generations.next().ok_or_else(|| {
                        EvalError::Input(format!("{}: the model returned no generation", ex.id))
                    })?;
                    generation_record(ex, gen, cfg, &mut sandbox)?
                }
            };
            records.push(rec);
            progress(records.len());
        }
    }
    let mut notes = Vec::new();
    if let Some(s) = &sandbox {
        notes.push(format!(
            "code ran with a {:.0} s timeout, network {}",
            s.timeout().as_secs_f64(),
            if s.network_isolated() {
                "isolated (unshare)"
            } else {
                "NOT isolated (unshare unavailable; proxy variables cleared)"
            }
        ));
    }
    Ok(Evaluation {
        metrics: aggregate(&records),
        tokens: records.iter().map(|r| r.tokens).sum(),
        records,
        wall_s: start.elapsed().as_secs_f64(),
        notes,
    })
}

/// Every metric that appears in the records, with bootstrap and analytic standard errors.
fn aggregate(records: &[Record]) -> BTreeMap<String, MetricValue> {
    let mut values: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in records {
        for (k, v) in &r.scores {
            values.entry(k).or_default().push(*v);
        }
    }
    values
        .into_iter()
        .map(|(k, v)| {
            let e = estimate(&v, BOOTSTRAP_ITERS, BOOTSTRAP_SEED);
            let m = MetricValue {
                value: e.mean,
                stderr: e.stderr_bootstrap,
                stderr_analytic: e.stderr_analytic,
                n: e.n,
            };
            (k.to_string(), m)
        })
        .collect()
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn record<const N: usize>(ex: &Example, scores: [(&str, f64); N], tokens: usize) -> Record {
    Record {
        id: ex.id.clone(),
        scores: scores.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        logprobs: Vec::new(),
        output: None,
        note: None,
        tokens,
    }
}

impl Record {
    fn with_output(mut self, text: String) -> Self {
        self.output = Some(text);
        self
    }
}

/// Multiple choice: one call, so the shared context is run once for all options. Schema: one call
/// per context, the same continuation after each (lm-eval's partial scoring).
fn loglikelihood_item(lm: &dyn LanguageModel, ex: &Example, style: PromptStyle) -> Result<Record> {
    let requests = ex.requests(style);
    let mut lls = Vec::with_capacity(requests.len());
    let mut tokens = 0;
    let mut run = |context: &Context, conts: Vec<String>| -> Result<()> {
        let s = lm.loglikelihoods(context, &conts)?;
        tokens += s.tokens;
        lls.extend(s.lls.iter().map(|l| l.logprob));
        Ok(())
    };
    match &ex.body {
        Body::MultipleChoice { .. } => run(
            &requests[0].context,
            requests.iter().map(|r| r.continuation.clone()).collect(),
        )?,
        _ => {
            for r in &requests {
                run(&r.context, vec![r.continuation.clone()])?;
            }
        }
    }
    let score = score_loglikelihoods(ex, &lls).ok_or_else(|| {
        EvalError::Input(format!(
            "{}: got {} log-likelihoods for {} requests",
            ex.id,
            lls.len(),
            requests.len()
        ))
    })?;
    let mut rec = record(ex, [("acc", score.acc)], tokens);
    if let Some(n) = score.acc_norm {
        rec.scores.insert("acc_norm".into(), n);
    }
    rec.logprobs = lls;
    Ok(rec)
}

/// The generation an item is scored on, or `None` for items scored by log-likelihood.
fn generation_request(ex: &Example, task: &Task, cfg: &EvalConfig) -> Option<GenRequest> {
    let request = |context: Context, prefix: String, stops: Vec<String>, max_new: usize| {
        Some(GenRequest {
            context,
            prefix,
            stops,
            max_new,
        })
    };
    match (&ex.body, cfg.protocol) {
        (Body::MultipleChoice { .. } | Body::Schema { .. }, Protocol::Loglikelihood) => None,
        (Body::MultipleChoice { .. } | Body::Schema { .. }, _) => {
            let (text, _) = choice::letter_prompt(ex).expect("multiple-choice item");
            request(
                cfg.style.context(&text),
                String::new(),
                strings(&choice::STOPS),
                choice::MAX_NEW_TOKENS,
            )
        }
        (Body::Generative { context, .. }, _) => request(
            cfg.style.context(context),
            String::new(),
            strings(task.template.stop_sequences()),
            cfg.max_new_tokens,
        ),
        // Plain style: complete the prompt itself (lm-eval `humaneval`). Chat style: lm-eval's
        // `humaneval_instruct`, whose answer prefix repeats the prompt inside a code fence; the
        // completion ends at the closing fence.
        (Body::Code { prompt, .. }, _) => {
            let stops = strings(task.template.stop_sequences());
            match cfg.style {
                PromptStyle::Plain => request(
                    Context::Text(prompt.clone()),
                    String::new(),
                    stops,
                    cfg.max_new_tokens,
                ),
                PromptStyle::Chat => request(
                    cfg.style.context(&format!(
                        "Write a solution to the following problem and make sure that it passes \
                         the tests:\n```python\n{prompt}\n```\n"
                    )),
                    format!("Here is the completed function:\n```python\n{prompt}\n"),
                    stops,
                    cfg.max_new_tokens,
                ),
            }
        }
    }
}

/// The record of an item scored on its generation `gen` (of [`generation_request`]'s request). Code
/// runs in `sandbox`, started on first use.
fn generation_record(
    ex: &Example,
    gen: Generation,
    cfg: &EvalConfig,
    sandbox: &mut Option<Sandbox>,
) -> Result<Record> {
    match &ex.body {
        Body::MultipleChoice { gold, .. } | Body::Schema { gold, .. } => {
            let (_, n) = choice::letter_prompt(ex).expect("multiple-choice item");
            let pred = choice::parse_letter(&gen.text, n);
            let scores = [
                ("gen_acc", f64::from(pred == Some(*gold))),
                ("gen_invalid", f64::from(pred.is_none())),
            ];
            Ok(record(ex, scores, gen.tokens).with_output(gen.text))
        }
        Body::Generative { .. } => {
            let s = score_generation(ex, &gen.text).expect("generative item");
            let scores = [
                ("exact_match_strict", s.strict),
                ("exact_match_flexible", s.flexible),
            ];
            Ok(record(ex, scores, gen.tokens).with_output(gen.text))
        }
        Body::Code {
            prompt,
            entry_point,
            test,
            ..
        } => {
            let completion = match cfg.style {
                PromptStyle::Plain => gen.text.as_str(),
                PromptStyle::Chat => truncate_at_stop(&gen.text, &["```".to_string()]).0,
            };
            let program = humaneval_program(prompt, completion, test, entry_point);
            let sandbox =
                sandbox.get_or_insert_with(|| Sandbox::new(cfg.python.clone(), cfg.code_timeout));
            let outcome = sandbox.run(&program)?;
            let mut rec = record(
                ex,
                [("pass@1", f64::from(outcome == Outcome::Passed))],
                gen.tokens,
            )
            .with_output(completion.to_string());
            rec.note = match outcome {
                Outcome::Passed => None,
                Outcome::Failed(why) => Some(why),
                Outcome::TimedOut => Some("timed out".into()),
            };
            Ok(rec)
        }
    }
}
