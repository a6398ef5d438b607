//! Layouts users bring: Hugging Face style JSONL per task (rendered exactly as lm-eval renders the
//! same HF rows), Gauntlet COPA/CommonsenseQA (files not shipped here), prompts JSONL, custom tasks.

use std::path::{Path, PathBuf};

use dnd_tasks::{
    import, load_prompts, metrics, Body, Example, Layout, Part, PromptStyle, SplitConfig, Task,
    Template,
};

fn one(dir: &Path, t: Template, l: Layout, line: &str) -> Example {
    let path = dir.join("f.jsonl");
    std::fs::write(&path, line).unwrap();
    let mut all = import(t, l, &path, "f.jsonl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// Plain-text (context, continuations, gold) as the model will see them.
fn rendered(ex: &Example) -> (String, Vec<String>, usize) {
    let reqs = ex.requests(PromptStyle::Plain);
    let gold = match &ex.body {
        Body::MultipleChoice { gold, .. } | Body::Schema { gold, .. } => *gold,
        _ => panic!(),
    };
    let dnd_tasks::Context::Text(ctx) = &reqs[0].context else {
        panic!()
    };
    (
        ctx.clone(),
        reqs.iter().map(|r| r.continuation.clone()).collect(),
        gold,
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn hf_rows_render_like_lm_eval() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let arc = one(
        d,
        Template::Arc,
        Layout::Hf,
        r#"{"id": "x", "question": "Which is hot?", "choices": {"text": ["ice", "fire"], "label": ["A", "B"]}, "answerKey": "B"}"#,
    );
    assert_eq!(
        rendered(&arc),
        (
            "Question: Which is hot?\nAnswer:".into(),
            s(&[" ice", " fire"]),
            1
        )
    );

    let obqa = one(
        d,
        Template::OpenBookQa,
        Layout::Hf,
        r#"{"id": "7-980", "question_stem": "The sun is responsible for", "choices": {"text": ["puppies learning new tricks", "plants sprouting, blooming and wilting"], "label": ["A", "B"]}, "answerKey": "B"}"#,
    );
    assert_eq!(rendered(&obqa).0, "The sun is responsible for");

    let boolq = one(
        d,
        Template::Boolq,
        Layout::Hf,
        r#"{"question": "do iran and afghanistan speak the same language", "passage": "Persian language -- Persian is spoken in Iran and Afghanistan.", "idx": 0, "label": 1}"#,
    );
    assert_eq!(rendered(&boolq), (
        "Persian language -- Persian is spoken in Iran and Afghanistan.\nQuestion: do iran and afghanistan speak the same language?\nAnswer:".into(),
        s(&[" no", " yes"]), 1));

    let hs = one(
        d,
        Template::Hellaswag,
        Layout::Hf,
        r#"{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": "3"}"#,
    );
    assert_eq!(
        rendered(&hs).0,
        "Roof shingle removal: A man is sitting on a roof. He"
    );
    assert_eq!(rendered(&hs).1[3], " starts pulling up roofing on a roof.");
    let wiki = one(
        d,
        Template::Hellaswag,
        Layout::Hf,
        r#"{"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot.", "ctx_b": "", "endings": ["[step] Water daily.", "b", "c", "d"], "label": 0}"#,
    );
    // Strings printed by lm-eval's preprocess; the ending keeps the space its tag left behind.
    assert_eq!(
        rendered(&wiki).0,
        "Home and Garden: How to grow tomatoes. Pick a sunny spot."
    );
    assert_eq!(rendered(&wiki).1[0], "  Water daily.");

    let piqa = one(
        d,
        Template::Piqa,
        Layout::Hf,
        r#"{"goal": "Open a jar?", "sol1": "Twist the lid.", "sol2": "Kick it.", "label": 0}"#,
    );
    assert_eq!(
        rendered(&piqa),
        (
            "Question: Open a jar?\nAnswer:".into(),
            s(&[" Twist the lid.", " Kick it."]),
            0
        )
    );

    let siqa = one(
        d,
        Template::Siqa,
        Layout::Hf,
        r#"{"context": "Tracy didn't go home that evening and resisted Riley's attacks.", "question": "What does Tracy need to do before this?", "answerA": "make a new plan", "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"}"#,
    );
    assert_eq!(rendered(&siqa).0, "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before this?\nA:");
    assert_eq!(rendered(&siqa).2, 2);

    let wino = one(
        d,
        Template::Winogrande,
        Layout::Hf,
        r#"{"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.", "option1": "Sarah", "option2": "Maria", "answer": "2"}"#,
    );
    let reqs = wino.requests(PromptStyle::Plain);
    assert_eq!(
        reqs[1].context,
        dnd_tasks::Context::Text("Sarah was a much better surgeon than Maria so Maria".into())
    );
    assert_eq!(reqs[0].continuation, " always got the easier cases.");
    assert_eq!(wino.prompt, "Sarah was a much better surgeon than Maria so _ always got the easier cases.\nA. Sarah\nB. Maria");

    let csqa = one(
        d,
        Template::CommonsenseQa,
        Layout::Hf,
        r#"{"id": "075e", "question": "The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made to change?", "question_concept": "punishing", "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["ignore", "enforce", "authoritarian", "yell at", "avoid"]}, "answerKey": "A"}"#,
    );
    assert_eq!(rendered(&csqa), (
        "Question: The sanctions against the school were a punishing blow, and they seemed to what the efforts the school had made to change?\nA. ignore\nB. enforce\nC. authoritarian\nD. yell at\nE. avoid\nAnswer:".into(),
        s(&[" A", " B", " C", " D", " E"]), 0));

    let gsm = one(
        d,
        Template::Gsm8k,
        Layout::Hf,
        r#"{"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}"#,
    );
    assert_eq!(
        gsm.generation_context(),
        Some("Question: What is 2+2?\nAnswer:")
    );
    assert_eq!(
        Template::Gsm8k.stop_sequences(),
        ["Question:", "</s>", "<|im_end|>"]
    );
}

#[test]
fn copa_from_hf_and_gauntlet_agree_with_lm_eval() {
    let d = tempfile::tempdir().unwrap();
    let hf = one(
        d.path(),
        Template::Copa,
        Layout::Hf,
        r#"{"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.", "choice2": "Water flowed from the spout.", "question": "effect", "idx": 0, "label": 1}"#,
    );
    let gauntlet = one(
        d.path(),
        Template::Copa,
        Layout::GauntletMc,
        r#"{"query": "The man turned on the faucet, therefore", "gold": 1, "choices": ["the toilet filled with water.", "water flowed from the spout."]}"#,
    );
    assert_eq!(hf.body, gauntlet.body);
    // lm-eval's COPA choices carry a leading space and the default delimiter adds another.
    assert_eq!(
        rendered(&hf),
        (
            "The man turned on the faucet therefore".into(),
            s(&[
                "  the toilet filled with water.",
                "  water flowed from the spout."
            ]),
            1
        )
    );
    // acc_norm divides by the lengths of lm-eval's choices with their own space (30 and 29):
    // -30.02/30 < -29/29 picks 1; without the space (29, 28) it would pick 0.
    let score = metrics::score_loglikelihoods(&hf, &[-30.02, -29.0]).unwrap();
    assert_eq!((score.acc, score.acc_norm), (1.0, Some(1.0)));
}

#[test]
fn gauntlet_commonsense_qa_keeps_its_four_options() {
    let d = tempfile::tempdir().unwrap();
    let ex = one(
        d.path(),
        Template::CommonsenseQa,
        Layout::GauntletMc,
        r#"{"query": "Question: A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?\nChoices:\nA. bank\nB. department store\nC. mall\nD. new york\nAnswer:", "choices": ["A", "B", "C", "D"], "gold": 0}"#,
    );
    assert_eq!(rendered(&ex), (
        "Question: A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?\nA. bank\nB. department store\nC. mall\nD. new york\nAnswer:".into(),
        s(&[" A", " B", " C", " D"]), 0));
}

#[test]
fn prompts_jsonl() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("prompts.jsonl");
    std::fs::write(&path, "\"a plain string\"\n{\"prompt\": \"p\"}\n\n{\"text\": \"t\"}\n{\"question\": \"q\", \"answer\": \"a\"}\n").unwrap();
    assert_eq!(
        load_prompts(&path).unwrap(),
        ["a plain string", "p", "t", "q"]
    );
    std::fs::write(&path, "{\"prompt\": \"p\"}\n{\"answer\": 1}\n").unwrap();
    let err = load_prompts(&path).unwrap_err().to_string();
    assert!(
        err.contains("prompts.jsonl") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn custom_task_from_a_user_file() {
    let d = tempfile::tempdir().unwrap();
    let path: PathBuf = d.path().join("mine.jsonl");
    let rows: String = (0..200)
        .map(|i| format!("{{\"goal\": \"How to do thing {i}?\", \"sol1\": \"This way.\", \"sol2\": \"That way.\", \"label\": {}}}\n", i % 2))
        .collect();
    std::fs::write(&path, rows).unwrap();
    let task = Task::custom("mine", Template::Piqa, Layout::Hf, &path);
    assert!(
        task.available(Path::new("/nonexistent-root")),
        "absolute paths ignore the root"
    );
    let splits = task
        .splits(Path::new("/"), &SplitConfig::default())
        .unwrap();
    let total: usize = Part::ALL.iter().map(|p| splits.part(*p).len()).sum();
    assert_eq!(total + splits.unused, 200);
    assert!(
        splits.test.len() > 70 && splits.test.len() < 130,
        "about half: {}",
        splits.test.len()
    );
}
