//! Importers and templates on the real files in ../shared/data. Expected renderings are written
//! out from lm-evaluation-harness's task definitions (doc_to_text / doc_to_choice, delimiter " ").

mod common;

use std::path::Path;

use common::data_root;
use dnd_tasks::{import, Body, Example, Layout, Template};

/// (context, choices, gold) of a multiple-choice example.
pub fn mc(ex: &Example) -> (&str, Vec<&str>, usize) {
    match &ex.body {
        Body::MultipleChoice {
            context,
            choices,
            gold,
        } => (context, choices.iter().map(String::as_str).collect(), *gold),
        other => panic!("{}: not multiple choice: {other:?}", ex.id),
    }
}

fn load(root: &Path, t: Template, l: Layout, rel: &str) -> Vec<Example> {
    import(t, l, &root.join(rel), rel).unwrap_or_else(|e| panic!("{e}"))
}

fn raw_lines(root: &Path, rel: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join(rel))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn official_arc_jsonl() {
    let Some(root) = data_root() else { return };
    let test = load(&root, Template::Arc, Layout::Arc, "arc/ARC-Easy-Test.jsonl");
    assert_eq!(test.len(), 2376);
    let (context, choices, gold) = mc(&test[0]);
    assert_eq!(
        context,
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    );
    assert_eq!(choices[3], "The producers in all ecosystems are plants.");
    assert_eq!((choices.len(), gold), (4, 0));
    assert_eq!(test[0].id, "arc/ARC-Easy-Test.jsonl:1");
    let counts = [
        ("arc/ARC-Easy-Dev.jsonl", 570),
        ("arc/ARC-Challenge-Test.jsonl", 1172),
        ("arc/ARC-Challenge-Dev.jsonl", 299),
    ];
    for (rel, n) in counts {
        let all = load(&root, Template::Arc, Layout::Arc, rel);
        assert_eq!(all.len(), n, "{rel}");
        // Numeric labels ("1".."5") and 3- or 5-option questions resolve like letters.
        for (ex, raw) in all.iter().zip(raw_lines(&root, rel)) {
            let key = raw["answerKey"].as_str().unwrap();
            let labels = raw["question"]["choices"].as_array().unwrap();
            let gold = labels.iter().position(|c| c["label"] == key).unwrap();
            assert_eq!(mc(ex).2, gold);
            assert_eq!(mc(ex).1.len(), labels.len());
        }
    }
}

#[test]
fn llm_adapters_instruction_json() {
    let Some(root) = data_root() else { return };
    let per_task = [
        ("ARC-Easy/train.json", Template::Arc, 2251),
        ("ARC-Challenge/train.json", Template::Arc, 1119),
        ("openbookqa/train.json", Template::OpenBookQa, 4957),
        ("piqa/test.json", Template::Piqa, 1838),
        ("social_i_qa/test.json", Template::Siqa, 1954),
        ("winogrande/test.json", Template::Winogrande, 1267),
    ];
    for (rel, template, n) in per_task {
        let rel = format!("llm-adapters/{rel}");
        assert_eq!(
            load(&root, template, Layout::Adapters, &rel).len(),
            n,
            "{rel}"
        );
    }
    let obqa = load(
        &root,
        Template::OpenBookQa,
        Layout::Adapters,
        "llm-adapters/openbookqa/train.json",
    );
    let (context, choices, gold) = mc(&obqa[0]);
    assert_eq!(context, "The sun is responsible for");
    assert_eq!(
        choices,
        [
            "puppies learning new tricks",
            "children growing up and getting old",
            "flowers wilting in a vase",
            "plants sprouting, blooming and wilting"
        ]
    );
    assert_eq!(gold, 3);
    // Every instruction-layout file (train/test) also reads generically, math ones included.
    for dir in std::fs::read_dir(root.join("llm-adapters")).unwrap() {
        let dir = dir.unwrap().path();
        for name in ["train.json", "test.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let raw: Vec<serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let all = load(&root, Template::Gauntlet, Layout::Adapters, &rel);
            assert_eq!(all.len(), raw.len(), "{rel}");
        }
    }
}

#[test]
fn siqa_and_winogrande_render_as_lm_eval() {
    let Some(root) = data_root() else { return };
    let siqa = load(
        &root,
        Template::Siqa,
        Layout::Adapters,
        "llm-adapters/social_i_qa/test.json",
    );
    let (context, choices, gold) = mc(&siqa[0]);
    assert_eq!(
        context,
        "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before this?\nA:"
    );
    assert_eq!(
        (choices, gold),
        (
            vec![
                "make a new plan",
                "Go home and see Riley",
                "Find somewhere to go"
            ],
            2
        )
    );

    let wino = load(
        &root,
        Template::Winogrande,
        Layout::Adapters,
        "llm-adapters/winogrande/test.json",
    );
    let Body::Schema {
        contexts,
        continuation,
        gold,
    } = &wino[0].body
    else {
        panic!()
    };
    assert_eq!(
        contexts[0],
        "Sarah was a much better surgeon than Maria so Sarah"
    );
    assert_eq!(
        contexts[1],
        "Sarah was a much better surgeon than Maria so Maria"
    );
    assert_eq!(
        (continuation.as_str(), *gold),
        ("always got the easier cases.", 1)
    );
    let r = wino[0].requests(dnd_tasks::PromptStyle::Plain);
    assert_eq!(r[1].continuation, " always got the easier cases.");
    // The blank-filled contexts equal the Gauntlet schema file, record for record.
    let schema = load(
        &root,
        Template::Gauntlet,
        Layout::GauntletSchema,
        "gauntlet/language_understanding/winogrande.jsonl",
    );
    assert_eq!(schema.len(), wino.len());
    for (a, b) in wino.iter().zip(&schema) {
        assert_eq!(a.body, b.body, "{}", a.id);
    }
}

#[test]
fn gauntlet_mc_mapped_to_lm_eval() {
    let Some(root) = data_root() else { return };
    let piqa = load(
        &root,
        Template::Piqa,
        Layout::GauntletMc,
        "gauntlet/commonsense_reasoning/piqa.jsonl",
    );
    assert_eq!(piqa.len(), 1838);
    let (context, choices, gold) = mc(&piqa[0]);
    assert_eq!(
        context,
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    );
    assert!(choices[1].starts_with(
        "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans"
    ));
    assert_eq!(gold, 0);

    let obqa = load(
        &root,
        Template::OpenBookQa,
        Layout::GauntletMc,
        "gauntlet/commonsense_reasoning/openbook_qa.jsonl",
    );
    assert_eq!(obqa.len(), 500);
    let (context, choices, gold) = mc(&obqa[0]);
    assert_eq!(context, "A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking over their budget and expenses, they decide the best way to save money is to");
    assert_eq!((choices[1], gold), ("quit eating lunch out", 1));

    let arc = load(
        &root,
        Template::Arc,
        Layout::GauntletMc,
        "gauntlet/world_knowledge/arc_easy.jsonl",
    );
    let official = load(&root, Template::Arc, Layout::Arc, "arc/ARC-Easy-Test.jsonl");
    assert_eq!(arc.len(), official.len());
    assert_eq!(
        arc[0].body, official[0].body,
        "Gauntlet ARC maps to the same rendering"
    );
}

#[test]
fn superglue_boolq() {
    let Some(root) = data_root() else { return };
    let rel = "boolq/val.jsonl";
    let all = load(&root, Template::Boolq, Layout::Hf, rel);
    assert_eq!(all.len(), 3270);
    let raw = &raw_lines(&root, rel)[0];
    let (context, choices, gold) = mc(&all[0]);
    let want = format!(
        "{}\nQuestion: {}?\nAnswer:",
        raw["passage"].as_str().unwrap(),
        raw["question"].as_str().unwrap()
    );
    assert_eq!(context, want);
    assert!(context.starts_with("Ethanol fuel -- All biomass goes through"));
    assert!(
        context.ends_with("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    );
    assert_eq!(
        (choices, gold),
        (vec!["no", "yes"], 0),
        "label \"false\" is `no`"
    );
}

#[test]
fn gauntlet_pubmedqa_as_lm_eval() {
    let Some(root) = data_root() else { return };
    let rel = "gauntlet/reading_comprehension/pubmed_qa_labeled.jsonl";
    let all = load(&root, Template::PubmedQa, Layout::GauntletLm, rel);
    assert_eq!(all.len(), 1000);
    let (context, choices, gold) = mc(&all[0]);
    assert!(context.starts_with("Abstract: BACKGROUND. Programmed cell death (PCD)"));
    assert!(context.ends_with(
        "\nQuestion: Do mitochondria play a role in remodelling lace plant leaves during \
         programmed cell death?\nAnswer:"
    ));
    assert_eq!((choices, gold), (vec!["yes", "no", "maybe"], 0));
    assert!(
        !all[0].prompt.contains("Answer"),
        "the prompt carries no answer"
    );
    let mut counts = [0; 3];
    for ex in &all {
        counts[mc(ex).2] += 1;
    }
    assert_eq!(
        counts,
        [552, 338, 110],
        "the file's yes / no / maybe counts"
    );
}

#[test]
fn hellaswag_bz2_text() {
    let Some(root) = data_root() else { return };
    let rel = "hellaswag/hellaswag_val_full.txt.bz2";
    let all = load(&root, Template::Hellaswag, Layout::HellaswagText, rel);
    assert_eq!(all.len(), 10042);
    let (context, choices, gold) = mc(&all[0]);
    assert_eq!(
        context,
        "Roof shingle removal: A man is sitting on a roof. He"
    );
    assert_eq!(
        choices,
        [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof."
        ]
    );
    assert_eq!(gold, 3);
    assert_eq!(
        mc(&all[1]).0,
        "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady"
    );
    // A WikiHow item: ends a sentence (no ctx_b), its `[...]` link is dropped as lm-eval does.
    let wiki = all.iter().find(|e| e.id == format!("{rel}:21031")).unwrap();
    assert_eq!(mc(wiki).0, "Family Life: How to entertain a toddler. Ask the toddler what he or she would like to do instead of doing what you would like to do.. Visit a site like to find loads of creative activities for toddlers and preschoolers.. Choose small, simple games like candy land or chutes and ladders.");
    assert_eq!(mc(wiki).1[0], "Make sure you get a computer or tablet in case the toddler wants to do some general stuff. And maybe ask to go get a snack or an xbox or wii.");
}

#[test]
fn official_gsm8k() {
    let Some(root) = data_root() else { return };
    assert_eq!(
        load(&root, Template::Gsm8k, Layout::Hf, "gsm8k/train.jsonl").len(),
        7473
    );
    let test = load(&root, Template::Gsm8k, Layout::Hf, "gsm8k/test.jsonl");
    assert_eq!(test.len(), 1319);
    let Body::Generative {
        context,
        answer,
        target,
        ..
    } = &test[0].body
    else {
        panic!()
    };
    assert!(context.starts_with("Question: Janet\u{2019}s ducks lay 16 eggs per day."));
    assert!(context.ends_with("at the farmers' market?\nAnswer:"));
    assert_eq!(answer, "18");
    assert!(target.ends_with("#### 18"));
    // The Gauntlet copy (question, chain_of_thought, answer) gives the same answers.
    let gauntlet = load(
        &root,
        Template::Gsm8k,
        Layout::GauntletGen,
        "gauntlet/symbolic_problem_solving/gsm8k.jsonl",
    );
    assert_eq!(gauntlet.len(), test.len());
    let answers = |v: &[Example]| -> Vec<String> {
        v.iter()
            .map(|e| match &e.body {
                Body::Generative { answer, .. } => answer.clone(),
                _ => panic!(),
            })
            .collect()
    };
    assert_eq!(answers(&gauntlet), answers(&test));
}

#[test]
fn humaneval_plain_and_gzip() {
    let Some(root) = data_root() else { return };
    let rel = "gauntlet/programming/human_eval.jsonl";
    let all = load(&root, Template::HumanEval, Layout::HumanEval, rel);
    assert_eq!(all.len(), 164);
    let Body::Code {
        task_id,
        entry_point,
        prompt,
        test,
        ..
    } = &all[0].body
    else {
        panic!()
    };
    assert_eq!(
        (task_id.as_str(), entry_point.as_str()),
        ("HumanEval/1", "separate_paren_groups")
    );
    assert!(prompt.starts_with("from typing import List\n\n\ndef separate_paren_groups("));
    assert!(test.contains("def check(candidate)"));
    // The human-eval package ships the same layout gzipped.
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("HumanEval.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    std::io::copy(&mut std::fs::File::open(root.join(rel)).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let from_gz = import(Template::HumanEval, Layout::HumanEval, &gz, rel).unwrap();
    assert_eq!(from_gz, all);
    // The real package file, when a developer points at it.
    if let Some(path) = std::env::var_os("DND_HUMANEVAL") {
        let real = import(
            Template::HumanEval,
            Layout::HumanEval,
            Path::new(&path),
            "HumanEval",
        )
        .unwrap();
        assert_eq!(real.len(), 164);
    }
}

/// The layout of a Gauntlet file, from the keys of its first record.
fn gauntlet_layout(first: &serde_json::Value) -> Layout {
    let has = |k: &str| first.get(k).is_some();
    if has("query") {
        Layout::GauntletMc
    } else if has("context_options") {
        Layout::GauntletSchema
    } else if has("task_id") {
        Layout::HumanEval
    } else if has("answer") {
        Layout::GauntletGen
    } else {
        Layout::GauntletLm
    }
}

#[test]
fn every_gauntlet_file_imports_whole() {
    let Some(root) = data_root() else { return };
    let mut seen = std::collections::HashSet::new();
    for cat in std::fs::read_dir(root.join("gauntlet")).unwrap() {
        let cat = cat.unwrap().path();
        if !cat.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&cat).unwrap() {
            let path = f.unwrap().path();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let lines = raw_lines(&root, &rel);
            let layout = gauntlet_layout(&lines[0]);
            seen.insert(layout);
            assert_eq!(
                load(&root, Template::Gauntlet, layout, &rel).len(),
                lines.len(),
                "{rel}"
            );
        }
    }
    assert_eq!(
        seen.len(),
        5,
        "all five Gauntlet layouts were exercised: {seen:?}"
    );
}
