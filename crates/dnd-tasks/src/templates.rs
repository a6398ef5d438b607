//! Prompt templates, re-implemented from lm-evaluation-harness's task definitions (`doc_to_text`,
//! `doc_to_choice`, `doc_to_target`, default `target_delimiter` " "), so scores are comparable with
//! published lm-eval numbers. Each renderer takes the task's raw fields, whichever file they came
//! from, and returns a typed [`Example`] (its `id` is filled in by the importer).

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::example::{normalise, Body, Example};

type Rendered = Result<Example, String>;

/// How a task's raw fields become scored text. Task files name it as [`Template::name`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Template {
    #[serde(rename = "arc")]
    Arc,
    #[serde(rename = "openbookqa")]
    OpenBookQa,
    #[serde(rename = "boolq")]
    Boolq,
    #[serde(rename = "hellaswag")]
    Hellaswag,
    #[serde(rename = "piqa")]
    Piqa,
    #[serde(rename = "siqa")]
    Siqa,
    #[serde(rename = "winogrande")]
    Winogrande,
    #[serde(rename = "copa")]
    Copa,
    #[serde(rename = "commonsense_qa")]
    CommonsenseQa,
    #[serde(rename = "gsm8k")]
    Gsm8k,
    #[serde(rename = "humaneval")]
    HumanEval,
    /// PubMedQA (lm-eval `pubmedqa`): an abstract, a question, yes / no / maybe.
    #[serde(rename = "pubmedqa")]
    PubmedQa,
    /// Any file taken as it is written (a Gauntlet or LLM-Adapters file, or a user's): the query or
    /// prompt is the context, each choice or the completion its continuation. `as-written` in task files.
    #[serde(rename = "gauntlet", alias = "as-written")]
    Gauntlet,
    /// Multiple choice over the distinct answers of the file (a classification prompt whose answer
    /// comes from a small label set, as in many T0 templates and BIG-Bench Hard tasks): the prompt is
    /// the context, every label a choice.
    #[serde(rename = "label-set")]
    LabelSet,
}

impl Template {
    pub fn name(self) -> &'static str {
        match self {
            Template::Arc => "arc",
            Template::OpenBookQa => "openbookqa",
            Template::Boolq => "boolq",
            Template::Hellaswag => "hellaswag",
            Template::Piqa => "piqa",
            Template::Siqa => "siqa",
            Template::Winogrande => "winogrande",
            Template::Copa => "copa",
            Template::CommonsenseQa => "commonsense_qa",
            Template::Gsm8k => "gsm8k",
            Template::HumanEval => "humaneval",
            Template::PubmedQa => "pubmedqa",
            Template::Gauntlet => "gauntlet",
            Template::LabelSet => "label-set",
        }
    }

    /// The lm-eval rendering in one line, `context => continuation`, for listings and reports.
    pub fn pattern(self) -> &'static str {
        match self {
            Template::Arc => r#""Question: {question}\nAnswer:" => " {choice}""#,
            Template::OpenBookQa => r#""{question_stem}" => " {choice}""#,
            Template::Boolq => r#""{passage}\nQuestion: {question}?\nAnswer:" => " no" | " yes""#,
            Template::Hellaswag => {
                r#"preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}") => " {preprocess(ending)}""#
            }
            Template::Piqa => r#""Question: {goal}\nAnswer:" => " {sol}""#,
            Template::Siqa => r#""Q: {context} {question}\nA:" => " {answer}""#,
            Template::Winogrande => {
                r#""{sentence before _}{option}" => " {sentence after _, stripped}" (partial scoring)"#
            }
            Template::Copa => {
                r#""{premise without final period} because|therefore" => "  {choice, first letter lowered}""#
            }
            Template::CommonsenseQa => {
                r#""Question: {question}\nA. {choice}\n...\nAnswer:" => " A" | " B" | ..."#
            }
            Template::Gsm8k => {
                r#""Question: {question}\nAnswer:" => generate; exact match on the number after ####"#
            }
            Template::HumanEval => r#""{prompt}" => generate, run {test}"#,
            Template::PubmedQa => {
                r#""Abstract: {abstract}\nQuestion: {question}\nAnswer:" => " yes" | " no" | " maybe""#
            }
            Template::Gauntlet => r#""{query}" => " {choice}" (as in the file)"#,
            Template::LabelSet => {
                r#""{prompt}" => " {label}" for each distinct answer of the file"#
            }
        }
    }

    /// Where generation stops (lm-eval's `until` for GSM8K).
    pub fn stop_sequences(self) -> &'static [&'static str] {
        match self {
            Template::Gsm8k => &["Question:", "</s>", "<|im_end|>"],
            Template::HumanEval => &["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
            _ => &[],
        }
    }
}

/// The question followed by lettered options: the unlabeled conditioning prompt for DnD.
fn with_options(stem: &str, choices: &[String]) -> String {
    let mut out = stem.to_string();
    for (i, c) in choices.iter().enumerate() {
        out.push_str(&format!("\n{}. {c}", letter(i)));
    }
    out
}

fn letter(i: usize) -> char {
    char::from(b'A' + u8::try_from(i % 26).expect("i % 26 fits a byte"))
}

/// Checks shared by every multiple-choice item: at least two non-empty choices (acc_norm divides by
/// a choice's length) and a gold index in range.
fn mc(context: String, choices: Vec<String>, gold: usize, stem: &str, prompt: String) -> Rendered {
    if choices.len() < 2 {
        return Err(format!("needs at least 2 choices, got {}", choices.len()));
    }
    if let Some(i) = choices.iter().position(|c| c.is_empty()) {
        return Err(format!("choice {i} is empty"));
    }
    if gold >= choices.len() {
        return Err(format!(
            "gold {gold} out of range for {} choices",
            choices.len()
        ));
    }
    Ok(Example {
        id: String::new(),
        prompt,
        key: normalise(stem),
        body: Body::MultipleChoice {
            context,
            choices,
            gold,
        },
    })
}

/// lm-eval `arc_easy`/`arc_challenge`.
pub(crate) fn arc(question: &str, choices: Vec<String>, gold: usize) -> Rendered {
    let prompt = with_options(question, &choices);
    mc(
        format!("Question: {question}\nAnswer:"),
        choices,
        gold,
        question,
        prompt,
    )
}

/// lm-eval `openbookqa`: the bare question stem is the context.
pub(crate) fn openbookqa(stem: &str, choices: Vec<String>, gold: usize) -> Rendered {
    let prompt = with_options(stem, &choices);
    mc(stem.to_string(), choices, gold, stem, prompt)
}

/// lm-eval `boolq` (super-glue-lm-eval-v1).
pub(crate) fn boolq(passage: &str, question: &str, label: bool) -> Rendered {
    let prompt = format!("{passage}\nQuestion: {question}?");
    let choices = vec!["no".to_string(), "yes".to_string()];
    let stem = format!("{passage}\n{question}");
    mc(
        format!("{prompt}\nAnswer:"),
        choices,
        usize::from(label),
        &stem,
        prompt,
    )
}

/// lm-eval `pubmedqa`: the abstract and question, answered yes, no or maybe.
pub(crate) fn pubmedqa(abstract_: &str, question: &str, answer: &str) -> Rendered {
    let choices: Vec<String> = ["yes", "no", "maybe"].map(String::from).into();
    let gold = choices
        .iter()
        .position(|c| c == answer)
        .ok_or_else(|| format!("answer `{answer}` is not yes, no or maybe"))?;
    let prompt = format!("Abstract: {abstract_}\nQuestion: {question}");
    let stem = format!("{abstract_}\n{question}");
    mc(format!("{prompt}\nAnswer:"), choices, gold, &stem, prompt)
}

/// lm-eval `hellaswag` with its `preprocess` of the query and of every ending.
pub(crate) fn hellaswag(
    activity_label: &str,
    ctx_a: &str,
    ctx_b: &str,
    endings: &[String],
    gold: usize,
) -> Rendered {
    let query = hellaswag_preprocess(&format!(
        "{activity_label}: {ctx_a} {}",
        py_capitalize(ctx_b)
    ));
    let choices: Vec<String> = endings.iter().map(|e| hellaswag_preprocess(e)).collect();
    let prompt = with_options(&query, &choices);
    mc(query.clone(), choices, gold, &query, prompt)
}

/// lm-eval's HellaSwag `preprocess`: strip, ` [title]` -> `. `, drop `[...]` (WikiHow artefacts),
/// one pass of double space -> single space.
pub fn hellaswag_preprocess(text: &str) -> String {
    static BRACKETS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\[.*?\]").expect("valid regex"));
    let text = text.trim().replace(" [title]", ". ");
    BRACKETS.replace_all(&text, "").replace("  ", " ")
}

/// Python's `str.capitalize`: first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// lm-eval `piqa`.
pub(crate) fn piqa(goal: &str, solutions: Vec<String>, gold: usize) -> Rendered {
    let prompt = with_options(goal, &solutions);
    mc(
        format!("Question: {goal}\nAnswer:"),
        solutions,
        gold,
        goal,
        prompt,
    )
}

/// lm-eval `social_iqa`; `question` is `"{context} {question}"` (LLM-Adapters stores it joined).
pub(crate) fn siqa(question: &str, answers: Vec<String>, gold: usize) -> Rendered {
    let prompt = with_options(question, &answers);
    mc(
        format!("Q: {question}\nA:"),
        answers,
        gold,
        question,
        prompt,
    )
}

/// lm-eval `winogrande`: each option fills the blank to make a context; the rest of the sentence
/// after the blank is the shared continuation.
pub(crate) fn winogrande(sentence: &str, options: Vec<String>, gold: usize) -> Rendered {
    let idx = sentence
        .find('_')
        .ok_or_else(|| "sentence has no `_` blank".to_string())?;
    if options.len() != 2 || options.iter().any(String::is_empty) || gold >= 2 {
        return Err(format!(
            "needs 2 non-empty options and gold 0/1, got {options:?} gold {gold}"
        ));
    }
    let contexts = options
        .iter()
        .map(|o| format!("{}{o}", &sentence[..idx]))
        .collect();
    let continuation = sentence[idx + 1..].trim().to_string();
    Ok(Example {
        id: String::new(),
        prompt: with_options(sentence, &options),
        key: normalise(sentence),
        body: Body::Schema {
            contexts,
            continuation,
            gold,
        },
    })
}

/// lm-eval `copa`. `premise` is already without its final period and `choices` already have their
/// first letter lower-cased (the Gauntlet file stores them so; [`copa_choice`] does it for raw
/// files). lm-eval's choices carry their own leading space on top of the default delimiter, so the
/// scored continuation starts with two spaces; kept for comparability.
pub(crate) fn copa(premise: &str, connector: &str, choices: Vec<String>, gold: usize) -> Rendered {
    let context = format!("{premise} {connector}");
    let prompt = with_options(&context, &choices);
    let choices = choices.into_iter().map(|c| format!(" {c}")).collect();
    mc(context.clone(), choices, gold, &context, prompt)
}

/// lm-eval COPA `convert_choice`: lower-case the first letter so the choice continues a sentence.
pub(crate) fn copa_choice(choice: &str) -> String {
    let mut chars = choice.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// lm-eval `commonsense_qa`: options listed in the context, the letters are scored.
pub(crate) fn commonsense_qa(question: &str, choices: Vec<String>, gold: usize) -> Rendered {
    let question = question.trim();
    let prompt = with_options(&format!("Question: {question}"), &choices);
    let letters = (0..choices.len()).map(|i| letter(i).to_string()).collect();
    mc(
        format!("{prompt}\nAnswer:"),
        letters,
        gold,
        question,
        prompt,
    )
}

/// lm-eval `gsm8k` (zero-shot form): the reference is the official answer, whose last line is
/// `#### N`; exact match compares with N.
pub(crate) fn gsm8k(question: &str, solution: &str) -> Rendered {
    let answer = solution
        .rsplit_once("####")
        .map(|(_, a)| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| "answer has no `#### N` line".to_string())?;
    Ok(Example {
        id: String::new(),
        prompt: question.to_string(),
        key: normalise(question),
        body: Body::Generative {
            context: format!("Question: {question}\nAnswer:"),
            target: solution.to_string(),
            answer,
            aliases: Vec::new(),
        },
    })
}

/// HumanEval: the prompt (signature and docstring) is both the context and the DnD prompt.
pub(crate) fn code(
    task_id: String,
    prompt: String,
    entry_point: String,
    canonical_solution: String,
    test: String,
) -> Rendered {
    if prompt.trim().is_empty() || entry_point.is_empty() || test.trim().is_empty() {
        return Err("empty prompt, entry_point or test".to_string());
    }
    Ok(Example {
        id: String::new(),
        prompt: prompt.clone(),
        key: normalise(&prompt),
        body: Body::Code {
            task_id,
            prompt,
            entry_point,
            canonical_solution,
            test,
        },
    })
}

/// A Gauntlet multiple-choice record as it is.
pub(crate) fn gauntlet_mc(query: &str, choices: Vec<String>, gold: usize) -> Rendered {
    mc(query.to_string(), choices, gold, query, query.to_string())
}

/// A Gauntlet schema record as it is.
pub(crate) fn gauntlet_schema(contexts: Vec<String>, continuation: &str, gold: usize) -> Rendered {
    if contexts.len() < 2 || gold >= contexts.len() {
        return Err(format!(
            "needs >= 2 contexts and gold in range, got {} / {gold}",
            contexts.len()
        ));
    }
    let prompt = format!("{} {continuation}", contexts.join(" | "));
    Ok(Example {
        id: String::new(),
        key: normalise(&prompt),
        prompt,
        body: Body::Schema {
            contexts,
            continuation: continuation.to_string(),
            gold,
        },
    })
}

/// A Gauntlet language-modelling or generation record (or an LLM-Adapters one) as it is.
pub(crate) fn gauntlet_generative(
    context: &str,
    target: String,
    answer: String,
    aliases: Vec<String>,
) -> Rendered {
    if answer.trim().is_empty() {
        return Err("empty answer".to_string());
    }
    // Symbols are the whole problem in some of these files (Dyck words, arithmetic), so the key
    // keeps them: only case and spacing are normalised.
    let key = context
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    Ok(Example {
        id: String::new(),
        prompt: context.to_string(),
        key,
        body: Body::Generative {
            context: context.to_string(),
            target,
            answer,
            aliases,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_string_helpers() {
        assert_eq!(py_capitalize("the LADY"), "The lady");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(copa_choice("The sun was rising."), "the sun was rising.");
        // Expected strings printed by lm-eval's Python `preprocess`.
        assert_eq!(
            hellaswag_preprocess(" How to x [title] Do it [step] now. "),
            "How to x. Do it now."
        );
        assert_eq!(
            hellaswag_preprocess("[header] How to x [title] Do it [step]  now."),
            " How to x. Do it  now."
        );
    }
}
