//! Serde views of the record layouts (see [`crate::Layout`]). Field names follow the files;
//! `Label` accepts the number / numeric string / boolean variants different exports use.

use serde::Deserialize;

/// A label stored as a number, a numeric string or a boolean, as different exports do.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Label {
    Int(i64),
    Bool(bool),
    Text(String),
}

impl Label {
    /// Index counted from `base` (SIQA and WinoGrande labels start at 1).
    pub(crate) fn index(&self, base: i64) -> std::result::Result<usize, String> {
        let n = match self {
            Label::Int(n) => Some(*n),
            Label::Text(s) => s.trim().parse().ok(),
            Label::Bool(_) => None,
        };
        n.and_then(|n| usize::try_from(n - base).ok())
            .ok_or_else(|| format!("label is not an index counted from {base}"))
    }

    pub(crate) fn boolean(&self) -> std::result::Result<bool, String> {
        match self {
            Label::Bool(b) => Ok(*b),
            Label::Int(0) => Ok(false),
            Label::Int(1) => Ok(true),
            Label::Text(s) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
            Label::Text(s) if s.eq_ignore_ascii_case("false") || s == "0" => Ok(false),
            _ => Err("label is not a boolean".to_string()),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct HfChoices {
    pub(crate) text: Vec<String>,
    pub(crate) label: Vec<String>,
}

/// HF ARC and CommonsenseQA rows.
#[derive(Deserialize)]
pub(crate) struct HfQuestion {
    pub(crate) question: String,
    pub(crate) choices: HfChoices,
    #[serde(rename = "answerKey")]
    pub(crate) answer_key: String,
}

#[derive(Deserialize)]
pub(crate) struct HfObqa {
    pub(crate) question_stem: String,
    pub(crate) choices: HfChoices,
    #[serde(rename = "answerKey")]
    pub(crate) answer_key: String,
}

#[derive(Deserialize)]
pub(crate) struct HfBoolq {
    pub(crate) passage: String,
    pub(crate) question: String,
    pub(crate) label: Label,
}

#[derive(Deserialize)]
pub(crate) struct HfHellaswag {
    pub(crate) activity_label: String,
    pub(crate) ctx_a: String,
    pub(crate) ctx_b: String,
    pub(crate) endings: Vec<String>,
    pub(crate) label: Label,
}

#[derive(Deserialize)]
pub(crate) struct HfPiqa {
    pub(crate) goal: String,
    pub(crate) sol1: String,
    pub(crate) sol2: String,
    pub(crate) label: Label,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HfSiqa {
    pub(crate) context: String,
    pub(crate) question: String,
    pub(crate) answer_a: String,
    pub(crate) answer_b: String,
    pub(crate) answer_c: String,
    pub(crate) label: Label,
}

#[derive(Deserialize)]
pub(crate) struct HfWinogrande {
    pub(crate) sentence: String,
    pub(crate) option1: String,
    pub(crate) option2: String,
    pub(crate) answer: Label,
}

#[derive(Deserialize)]
pub(crate) struct HfCopa {
    pub(crate) premise: String,
    pub(crate) choice1: String,
    pub(crate) choice2: String,
    pub(crate) question: String,
    pub(crate) label: Label,
}

#[derive(Deserialize)]
pub(crate) struct HfGsm8k {
    pub(crate) question: String,
    pub(crate) answer: String,
}

#[derive(Deserialize)]
pub(crate) struct CodeRecord {
    pub(crate) task_id: String,
    pub(crate) prompt: String,
    pub(crate) entry_point: String,
    #[serde(default)]
    pub(crate) canonical_solution: String,
    pub(crate) test: String,
}

#[derive(Deserialize)]
pub(crate) struct ArcRecord {
    pub(crate) question: ArcQuestion,
    #[serde(rename = "answerKey")]
    pub(crate) answer_key: String,
}

#[derive(Deserialize)]
pub(crate) struct ArcQuestion {
    pub(crate) stem: String,
    pub(crate) choices: Vec<ArcChoice>,
}

#[derive(Deserialize)]
pub(crate) struct ArcChoice {
    pub(crate) text: String,
    pub(crate) label: String,
}

#[derive(Deserialize)]
pub(crate) struct AdaptersRecord {
    pub(crate) instruction: String,
    #[serde(default)]
    pub(crate) input: String,
    #[serde(default)]
    pub(crate) output: String,
    /// Absent in instruction data without a short answer (Code Alpaca).
    #[serde(default)]
    pub(crate) answer: String,
}

#[derive(Deserialize)]
pub(crate) struct McRecord {
    pub(crate) query: String,
    pub(crate) choices: Vec<String>,
    pub(crate) gold: usize,
}

#[derive(Deserialize)]
pub(crate) struct SchemaRecord {
    pub(crate) context_options: Vec<String>,
    pub(crate) continuation: String,
    pub(crate) gold: usize,
}

#[derive(Deserialize)]
pub(crate) struct LmRecord {
    pub(crate) context: String,
    pub(crate) continuation: String,
}

/// A BIG-Bench Hard file: `{"examples": [{"input", "target"}]}`.
#[derive(Deserialize)]
pub(crate) struct BbhFile {
    pub(crate) examples: Vec<BbhExample>,
}

#[derive(Deserialize)]
pub(crate) struct BbhExample {
    pub(crate) input: String,
    pub(crate) target: String,
}

/// A prompt/completion pair (T0 files, and the simplest file a user writes).
#[derive(Deserialize)]
pub(crate) struct PromptCompletionRecord {
    pub(crate) prompt: String,
    pub(crate) completion: String,
}

#[derive(Deserialize)]
pub(crate) struct GenRecord {
    pub(crate) context: String,
    pub(crate) answer: String,
    #[serde(default)]
    pub(crate) chain_of_thought: Option<String>,
    #[serde(default)]
    pub(crate) aliases: Vec<String>,
}
