//! Evaluation logic with a scripted model: metrics from known log-likelihoods, partial scoring,
//! chat requests, generation scoring, the letter protocol, HumanEval execution, limits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use dnd_evaluate::{
    evaluate, primary_metric, select_examples, EvalConfig, Generation, LanguageModel, Protocol,
    Result, Scored,
};
use dnd_llm::score::LogLikelihood;
use dnd_tasks::{
    find_task, Body, Context, Example, Layout, Part, PromptStyle, SplitConfig, Task, Template,
};

/// Log-likelihoods looked up by continuation (or by context, for schema items); generations
/// looked up by the start of the context text. Every call is logged.
#[derive(Default)]
struct Scripted {
    by_text: HashMap<String, f64>,
    replies: Vec<(String, String)>,
    calls: RefCell<Vec<(Context, Vec<String>)>>,
}

fn text(c: &Context) -> String {
    match c {
        Context::Text(t) => t.clone(),
        Context::Chat(m) => m[0].content.clone(),
    }
}

impl LanguageModel for Scripted {
    fn loglikelihoods(&self, context: &Context, continuations: &[String]) -> Result<Scored> {
        self.calls
            .borrow_mut()
            .push((context.clone(), continuations.to_vec()));
        let lls = continuations
            .iter()
            .map(|c| {
                let key = self
                    .by_text
                    .get(c)
                    .or_else(|| self.by_text.get(&text(context)));
                LogLikelihood {
                    logprob: *key.expect("scripted"),
                    is_greedy: false,
                }
            })
            .collect();
        Ok(Scored {
            lls,
            tokens: 10 + continuations.len(),
        })
    }

    fn generate(
        &self,
        context: &Context,
        prefix: &str,
        stops: &[String],
        _max_new: usize,
    ) -> Result<Generation> {
        self.calls
            .borrow_mut()
            .push((context.clone(), vec![prefix.to_string()]));
        let t = text(context);
        let reply = self
            .replies
            .iter()
            .find(|(start, _)| t.starts_with(start.as_str()))
            .map_or("", |(_, r)| r.as_str());
        Ok(Generation {
            text: dnd_evaluate::truncate_at_stop(reply, stops).0.to_string(),
            tokens: 5,
        })
    }
}

fn mc(id: &str, q: &str, choices: &[&str], gold: usize) -> Example {
    Example {
        id: id.into(),
        prompt: q.into(),
        key: q.into(),
        body: Body::MultipleChoice {
            context: format!("Question: {q}\nAnswer:"),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            gold,
        },
    }
}

fn run(
    lm: &Scripted,
    task: &str,
    examples: &[Example],
    cfg: &EvalConfig,
) -> dnd_evaluate::Evaluation {
    let mut seen = 0;
    let eval = evaluate(lm, &find_task(task).unwrap(), examples, cfg, &mut |i| {
        seen = i
    })
    .unwrap();
    assert_eq!(seen, examples.len(), "progress reaches the end");
    eval
}

#[test]
fn multiple_choice_metrics_from_known_loglikelihoods() {
    // Item 1: acc picks "ab" (-4 > -6) but per character "abcdef" wins (-1 > -2): acc 0, norm 1.
    // Item 2: "yes" wins both ways, and is gold.
    let lm = Scripted {
        by_text: [
            (" ab", -4.0),
            (" abcdef", -6.0),
            (" yes", -1.0),
            (" no", -3.0),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into(),
        ..Default::default()
    };
    let examples = [
        mc("a", "q1", &["ab", "abcdef"], 1),
        mc("b", "q2", &["no", "yes"], 1),
    ];
    let eval = run(&lm, "arc_easy", &examples, &EvalConfig::default());
    assert_eq!(eval.metrics["acc"].value, 0.5);
    assert_eq!(eval.metrics["acc_norm"].value, 1.0);
    assert_eq!(eval.metrics["acc_norm"].stderr, 0.0);
    assert!(
        (eval.metrics["acc"].stderr_analytic - 0.5f64.powi(2).sqrt() / 2f64.sqrt()).abs() < 1e-12
    );
    assert_eq!(eval.records[0].logprobs, vec![-4.0, -6.0]);
    assert_eq!(eval.records[0].scores["acc"], 0.0);
    assert_eq!(eval.tokens, 2 * 12);
    // One call per item: the context is shared by all its options.
    let calls = lm.calls.borrow();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, Context::Text("Question: q1\nAnswer:".into()));
    assert_eq!(calls[0].1, vec![" ab", " abcdef"]);
    assert_eq!(
        primary_metric(&find_task("arc_easy").unwrap(), Protocol::Loglikelihood),
        "acc_norm"
    );
}

#[test]
fn chat_style_sends_messages_and_drops_the_delimiter() {
    let lm = Scripted {
        by_text: [("ab", -1.0), ("cd", -2.0)]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
        ..Default::default()
    };
    let cfg = EvalConfig {
        style: PromptStyle::Chat,
        ..Default::default()
    };
    let eval = run(&lm, "arc_easy", &[mc("a", "q", &["ab", "cd"], 0)], &cfg);
    assert_eq!(eval.metrics["acc"].value, 1.0);
    let calls = lm.calls.borrow();
    let Context::Chat(m) = &calls[0].0 else {
        panic!("chat context expected")
    };
    assert_eq!(
        (m[0].role, m[0].content.as_str()),
        ("user", "Question: q\nAnswer:")
    );
    assert_eq!(calls[0].1, vec!["ab", "cd"]);
}

#[test]
fn schema_items_score_one_continuation_after_each_context() {
    let lm = Scripted {
        by_text: [("Tom ate", -5.0), ("Ann ate", -2.0)]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
        ..Default::default()
    };
    let ex = Example {
        id: "w".into(),
        prompt: String::new(),
        key: String::new(),
        body: Body::Schema {
            contexts: vec!["Tom ate".into(), "Ann ate".into()],
            continuation: "the pie.".into(),
            gold: 1,
        },
    };
    let eval = run(&lm, "winogrande", &[ex], &EvalConfig::default());
    assert_eq!(eval.metrics["acc"].value, 1.0);
    assert!(
        !eval.metrics.contains_key("acc_norm"),
        "lm-eval reports acc only"
    );
    let calls = lm.calls.borrow();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, Context::Text("Tom ate".into()));
    assert_eq!(calls[1].1, vec![" the pie."]);
    assert_eq!(
        primary_metric(&find_task("winogrande").unwrap(), Protocol::Loglikelihood),
        "acc"
    );
}

fn gsm8k(dir: &std::path::Path) -> Vec<Example> {
    let path = dir.join("gsm.jsonl");
    let rows = [
        r#"{"question": "One plus one?", "answer": "1+1=2\n#### 2"}"#,
        r#"{"question": "Two times three?", "answer": "2*3=6\n#### 6"}"#,
        r#"{"question": "Ten minus one?", "answer": "10-1=9\n#### 9"}"#,
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    dnd_tasks::import(Template::Gsm8k, Layout::Hf, &path, "gsm.jsonl").unwrap()
}

#[test]
fn generation_is_cut_at_stop_strings_and_scored_strict_and_flexible() {
    let dir = tempfile::tempdir().unwrap();
    let examples = gsm8k(dir.path());
    let lm = Scripted {
        replies: vec![
            // The stop string hides the wrong second answer.
            (
                "Question: One".into(),
                " 1+1=2\n#### 2\n\nQuestion: 5?\n#### 5".into(),
            ),
            ("Question: Two".into(), " It is 6.".into()),
            ("Question: Ten".into(), " It is 8".into()),
        ],
        ..Default::default()
    };
    let eval = run(&lm, "gsm8k", &examples, &EvalConfig::default());
    assert_eq!(
        eval.records[0].output.as_deref(),
        Some(" 1+1=2\n#### 2\n\n")
    );
    let strict: Vec<f64> = eval
        .records
        .iter()
        .map(|r| r.scores["exact_match_strict"])
        .collect();
    let flexible: Vec<f64> = eval
        .records
        .iter()
        .map(|r| r.scores["exact_match_flexible"])
        .collect();
    assert_eq!(strict, vec![1.0, 0.0, 0.0]);
    assert_eq!(flexible, vec![1.0, 1.0, 0.0]);
    assert_eq!(
        primary_metric(&find_task("gsm8k").unwrap(), Protocol::Loglikelihood),
        "exact_match_flexible"
    );
}

#[test]
fn generative_protocol_parses_letters() {
    let lm = Scripted {
        replies: vec![
            ("q1".into(), "B. abcdef".into()),
            ("q2".into(), "The answer is A".into()),
            ("q3".into(), "I do not know".into()),
        ],
        ..Default::default()
    };
    let examples = [
        mc("a", "q1", &["ab", "abcdef"], 1),
        mc("b", "q2", &["no", "yes"], 1),
        mc("c", "q3", &["no", "yes"], 1),
    ];
    let cfg = EvalConfig {
        protocol: Protocol::Generative,
        ..Default::default()
    };
    let eval = run(&lm, "arc_easy", &examples, &cfg);
    let acc: Vec<f64> = eval.records.iter().map(|r| r.scores["gen_acc"]).collect();
    assert_eq!(acc, vec![1.0, 0.0, 0.0]);
    assert!((eval.metrics["gen_invalid"].value - 1.0 / 3.0).abs() < 1e-12);
    assert!(
        !eval.metrics.contains_key("acc"),
        "reported apart from log-likelihood scores"
    );
    let calls = lm.calls.borrow();
    assert!(text(&calls[0].0)
        .ends_with("\nA. ab\nB. abcdef\nAnswer with the letter of the correct option.\nAnswer:"));
    assert_eq!(
        primary_metric(&find_task("arc_easy").unwrap(), Protocol::Generative),
        "gen_acc"
    );
}

fn code_example(id: &str) -> Example {
    Example {
        id: id.into(),
        prompt: String::new(),
        key: String::new(),
        body: Body::Code {
            task_id: id.into(),
            prompt: format!("def {id}(x):\n    \"\"\"Double x.\"\"\"\n"),
            entry_point: id.into(),
            canonical_solution: "    return 2 * x\n".into(),
            test: "def check(f):\n    assert f(2) == 4\n".into(),
        },
    }
}

#[test]
fn humaneval_pass_fail_and_timeout() {
    let lm = Scripted {
        replies: vec![
            (
                "def good".into(),
                "    return 2 * x\n\ndef unrelated():\n    pass".into(),
            ),
            ("def bad".into(), "    return x + 1\n".into()),
            ("def slow".into(), "    while True:\n        pass\n".into()),
        ],
        ..Default::default()
    };
    let examples = [
        code_example("good"),
        code_example("bad"),
        code_example("slow"),
    ];
    let cfg = EvalConfig {
        code_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let eval = run(&lm, "humaneval", &examples, &cfg);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the slow program was killed"
    );
    let pass: Vec<f64> = eval.records.iter().map(|r| r.scores["pass@1"]).collect();
    assert_eq!(pass, vec![1.0, 0.0, 0.0]);
    assert_eq!(
        eval.records[0].output.as_deref(),
        Some("    return 2 * x\n"),
        "cut at \\ndef"
    );
    assert!(
        eval.records[1]
            .note
            .as_deref()
            .unwrap()
            .contains("AssertionError"),
        "{:?}",
        eval.records[1].note
    );
    assert_eq!(eval.records[2].note.as_deref(), Some("timed out"));
    assert!(eval.notes[0].contains("timeout"), "{:?}", eval.notes);
}

#[test]
fn chat_humaneval_uses_the_instruct_prefix_and_cuts_at_the_fence() {
    let lm = Scripted {
        replies: vec![(
            "Write a solution".into(),
            "    return 2 * x\n```\nDone.".into(),
        )],
        ..Default::default()
    };
    let cfg = EvalConfig {
        style: PromptStyle::Chat,
        ..Default::default()
    };
    let eval = run(&lm, "humaneval", &[code_example("good")], &cfg);
    assert_eq!(eval.records[0].scores["pass@1"], 1.0);
    let calls = lm.calls.borrow();
    assert!(calls[0].1[0].starts_with("Here is the completed function:\n```python\ndef good(x):"));
}

#[test]
fn limit_takes_the_first_examples_in_split_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("boolq.jsonl");
    let rows: Vec<String> = (0..60)
        .map(|i| {
            format!(
                r#"{{"question": "is {i} even", "passage": "Number {i}.", "label": {}}}"#,
                i % 2 == 0
            )
        })
        .collect();
    std::fs::write(&path, rows.join("\n")).unwrap();
    let task = Task::custom("toy", Template::Boolq, Layout::Hf, &path);
    let cfg = SplitConfig::default();
    let all = select_examples(&task, dir.path(), Part::Test, None, &cfg).unwrap();
    assert!(all.len() > 10, "{}", all.len());
    let five = select_examples(&task, dir.path(), Part::Test, Some(5), &cfg).unwrap();
    assert_eq!(five, all[..5]);
    let many = select_examples(&task, dir.path(), Part::Test, Some(10_000), &cfg).unwrap();
    assert_eq!(many, all);
}
