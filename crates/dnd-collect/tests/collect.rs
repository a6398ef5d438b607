//! End to end on the tiny model and a synthetic BoolQ: a collection's layout, manifests, spread and
//! index; finetune's PEFT output; encoding; the base-model hash cache; clear errors for bad input.

use dnd_collect::{
    collect, encode, finetune, model_sha256, prepare_task, prepare_tasks, task_checkpoints,
    CollectError, CollectionIndex, Event, Manifest, INDEX_FILE, SPREAD_FILE, STD_FILE,
};
use dnd_tasks::SplitConfig;
use dnd_testkit::{
    boolq_root, files, test_base_model, tiny_collect_config, tiny_collect_plan, tiny_llm,
};

/// Mean negative log-likelihood of a sequence's answer tokens, from the full logits.
fn answer_loss(
    model: &dnd_llm::Transformer,
    lora: Option<&dnd_llm::Lora>,
    s: &dnd_collect::Sequence,
) -> f64 {
    let ids = candle_core::Tensor::new(s.ids.as_slice(), &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&ids, lora).unwrap().squeeze(0).unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    let answer = s.context_len..s.ids.len();
    let total: f64 = answer
        .clone()
        .map(|i| {
            let row = &rows[i - 1];
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            lse - row[s.ids[i] as usize] as f64
        })
        .sum();
    total / answer.len() as f64
}

#[test]
fn a_collection_has_checkpoints_manifests_spread_and_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let root = tmp.path().join("data");
    boolq_root(&root, 80);
    let dir = tmp.path().join("coll");
    let mut events = Vec::new();
    let index = collect(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &tiny_collect_plan(&dir, &root, &["boolq"]),
        &mut |e| {
            events.push(match e {
                Event::TaskStart { task, steps } => format!("start {task} {steps}"),
                Event::Step(r) => format!("step {}", r.step),
                Event::TaskDone(m) => format!("done {}", m.spec.task),
            })
        },
    )
    .unwrap();
    assert_eq!(events.first().unwrap(), "start boolq 6");
    assert_eq!(events.last().unwrap(), "done boolq");
    assert_eq!(events.len(), 8);
    let on_disk: CollectionIndex =
        serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk.tasks.len(), 1);
    assert_eq!(index.tasks[0].checkpoints, 3);
    let e = &index.tasks[0];
    assert!(e.mean_std_lora_a > 0.0 && e.mean_std_lora_b > 0.0, "{e:?}");
    let m = Manifest::read(&dir.join("boolq/manifest.json")).unwrap();
    assert!(m.complete);
    assert_eq!(m.spec.base_model, test_base_model("tiny"));
    assert_eq!(m.spec.data.part, "adapter-train");
    assert!(m.spec.data.encoded.sequences > 0);
    assert_eq!(m.steps.len(), 6);
    assert!(m.wall_time_s > 0.0);
    let ckpts = task_checkpoints(&dir, "boolq").unwrap();
    assert_eq!(ckpts.len(), 3);
    for c in &ckpts {
        let lora = dnd_llm::peft::load(c, llm.model.config(), llm.model.dtype()).unwrap();
        assert_eq!(lora.config().targets.len(), 3);
    }
    // The spread's two means are cached, not its elements; they are those of the checkpoints.
    let std = dnd_collect::checkpoint_std(&ckpts).unwrap();
    assert_eq!(std.len(), 2 * 3 * 2, "A and B of 3 targets in 2 layers");
    assert!(!dir.join("boolq").join(STD_FILE).exists());
    let cached: dnd_collect::Spread = serde_json::from_str(
        &std::fs::read_to_string(dir.join("boolq").join(SPREAD_FILE)).unwrap(),
    )
    .unwrap();
    let (a, b) = dnd_collect::mean_spread(&std).unwrap();
    assert_eq!((cached.mean_std_lora_a, cached.mean_std_lora_b), (a, b));
    assert_eq!((e.mean_std_lora_a, e.mean_std_lora_b), (a, b));
    assert!(dir.join("boolq/loss.png").is_file());

    // The held-out losses, checked against the logits of a plain forward pass.
    let h = e.heldout.as_ref().expect("boolq has validation items");
    let val = dnd_tasks::find_task("boolq")
        .unwrap()
        .splits(&root, &SplitConfig::default())
        .unwrap()
        .validation;
    assert_eq!(h.items, val.len().min(dnd_collect::HELDOUT_ITEMS));
    let pairs: Vec<(String, String)> = val
        .iter()
        .take(h.items)
        .map(|e| e.training_pair())
        .collect();
    let (seqs, _) = encode(&llm.tokenizer, "boolq", &pairs, 64).unwrap();
    let last =
        dnd_llm::peft::load(ckpts.last().unwrap(), llm.model.config(), llm.model.dtype()).unwrap();
    for (lora, want) in [(None, h.base_loss), (Some(&last), h.lora_loss)] {
        let mean = seqs
            .iter()
            .map(|s| answer_loss(&llm.model, lora, s))
            .sum::<f64>()
            / seqs.len() as f64;
        assert!(
            (mean - want).abs() < 1e-4 * want.abs().max(1.0),
            "{mean} vs {want}"
        );
    }
    assert!(dir.join("boolq").join(dnd_collect::HELDOUT_FILE).is_file());

    // Collecting again resumes nothing and rewrites nothing but the index; the same seed gives the
    // same bytes in another directory.
    let before = files(&dir.join("boolq/checkpoints"));
    let again = collect(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &tiny_collect_plan(&dir, &root, &["boolq"]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(again.tasks, index.tasks);
    let other = tmp.path().join("coll2");
    collect(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &tiny_collect_plan(&other, &root, &["boolq"]),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(before, files(&other.join("boolq/checkpoints")));
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let root = tmp.path().join("data");
    boolq_root(&root, 80);
    let dir = tmp.path().join("coll");
    let mut plan = tiny_collect_plan(&dir, &root, &["boolq"]);
    plan.tasks.push(dnd_tasks::Task::custom(
        "nope",
        dnd_tasks::Template::Gauntlet,
        dnd_tasks::Layout::GauntletMc,
        &tmp.path().join("missing.jsonl"),
    ));
    let err = collect(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &plan,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, CollectError::Task(_)) && err.to_string().contains("missing.jsonl"),
        "{err}"
    );
    assert!(
        !dir.join("boolq").exists(),
        "tasks are checked before any work"
    );
    let err = collect(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &tiny_collect_plan(&dir, &root, &["piqa"]),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("piqa"),
        "a missing data file names itself: {err}"
    );
    // A schedule leaving fewer than the 2 checkpoints a spread needs is refused before training.
    for (first, left) in [(6, 0), (5, 1)] {
        let mut p = tiny_collect_plan(&dir, &root, &["boolq"]);
        p.first_phase = first;
        let err = collect(
            &llm.model,
            &llm.tokenizer,
            &test_base_model("tiny"),
            &p,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("leaves {left} checkpoint(s) within 6 steps")),
            "{err}"
        );
        assert!(!dir.join("boolq").exists());
    }
    let err = encode(&llm.tokenizer, "t", &[], 16).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn finetune_writes_a_peft_adapter_with_its_manifest_and_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let root = tmp.path().join("data");
    boolq_root(&root, 80);
    let out = tmp.path().join("adapter");
    let mut steps = 0;
    let m = finetune(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &[dnd_tasks::find_task("boolq").unwrap()],
        &tiny_collect_config(4),
        &root,
        &SplitConfig::default(),
        &out,
        &mut |_| steps += 1,
    )
    .unwrap();
    assert_eq!((steps, m.steps.len()), (4, 4));
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "loss.png",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    dnd_llm::peft::load(&out, llm.model.config(), llm.model.dtype()).unwrap();
}

#[test]
fn a_multi_task_adapter_trains_on_an_equal_share_of_each_task() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let root = tmp.path().join("data");
    boolq_root(&root, 80);
    let mine = dnd_testkit::mc_task("mine", &tmp.path().join("small.jsonl"), 20);
    let boolq = dnd_tasks::find_task("boolq").unwrap();
    let split = SplitConfig::default();
    let one = |t: &dnd_tasks::Task| prepare_task(&llm.tokenizer, t, &root, &split, 64).unwrap();
    let (b, m) = (one(&boolq), one(&mine));
    assert!(b.seqs.len() > m.seqs.len());
    let both = [boolq.clone(), mine.clone()];
    let union = prepare_tasks(&llm.tokenizer, &both, &root, &split, 64).unwrap();
    assert_eq!(
        union.seqs.len(),
        2 * m.seqs.len(),
        "each task gives the smaller share"
    );
    assert_eq!(union.seqs[..m.seqs.len()], b.seqs[..m.seqs.len()]);
    assert_eq!(union.seqs[m.seqs.len()..], m.seqs[..]);

    let out = tmp.path().join("union");
    let cfg = tiny_collect_config(2);
    let manifest = finetune(
        &llm.model,
        &llm.tokenizer,
        &test_base_model("tiny"),
        &both,
        &cfg,
        &root,
        &split,
        &out,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(manifest.spec.task, "boolq+mine");
    assert_eq!(manifest.spec.data.tokens_sha256, union.info.tokens_sha256);
}

#[test]
fn a_collection_grows_over_invocations_but_keeps_one_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let root = tmp.path().join("data");
    boolq_root(&root, 80);
    let mine = dnd_testkit::mc_task("mine", &tmp.path().join("small.jsonl"), 40);
    let dir = tmp.path().join("coll");
    let base = test_base_model("tiny");
    let run = |plan: &dnd_collect::CollectPlan| {
        collect(&llm.model, &llm.tokenizer, &base, plan, &mut |_| {})
    };
    run(&tiny_collect_plan(&dir, &root, &["boolq"])).unwrap();
    let mut second = tiny_collect_plan(&dir, &root, &[]);
    second.tasks = vec![mine];
    assert_eq!(run(&second).unwrap().tasks.len(), 1);
    let index = CollectionIndex::read(&dir).unwrap();
    let names: Vec<&str> = index.tasks.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(names, ["boolq", "mine"], "earlier tasks stay in the index");
    run(&tiny_collect_plan(&dir, &root, &["boolq"])).unwrap();
    let again = CollectionIndex::read(&dir).unwrap();
    assert_eq!(
        again.tasks, index.tasks,
        "collecting a task again keeps the index as it was"
    );

    // An f16 collection averages its spread rounded to f16, as the element file it used to write
    // held it, and reads back the index it wrote. A collection that has that older file uses it.
    let half = tmp.path().join("half");
    let mut plan = tiny_collect_plan(&half, &root, &["boolq"]);
    plan.storage = dnd_collect::Storage::F16;
    let first = run(&plan).unwrap();
    let half_ckpts = task_checkpoints(&half, "boolq").unwrap();
    let rounded: std::collections::HashMap<_, _> = dnd_collect::checkpoint_std(&half_ckpts)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(candle_core::DType::F16).unwrap()))
        .collect();
    let (a, _) = dnd_collect::mean_spread(&rounded).unwrap();
    assert_eq!(first.tasks[0].mean_std_lora_a, a);
    assert_eq!(run(&plan).unwrap().tasks, first.tasks);
    std::fs::remove_file(half.join("boolq").join(SPREAD_FILE)).unwrap();
    let doubled: std::collections::HashMap<_, _> = rounded
        .iter()
        .map(|(k, t)| (k.clone(), (t * 2.0).unwrap()))
        .collect();
    candle_core::safetensors::save(&doubled, half.join("boolq").join(STD_FILE)).unwrap();
    let spread =
        dnd_collect::task_spread(&half.join("boolq"), &half_ckpts, candle_core::DType::F16)
            .unwrap();
    assert_eq!(
        spread.mean_std_lora_a,
        dnd_collect::mean_spread(&doubled).unwrap().0
    );

    let before = files(&dir);
    let mut other = tiny_collect_plan(&dir, &root, &["boolq"]);
    other.train.lr *= 2.0;
    let err = run(&other).unwrap_err();
    assert!(
        err.to_string().contains("another base model or schedule"),
        "{err}"
    );
    assert_eq!(files(&dir), before, "nothing is touched");
}

#[test]
fn encoding_keeps_the_answer_and_cuts_the_context_from_the_left() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let pairs = vec![
        ("abcdefghij".to_string(), " yes".to_string()),
        ("ab".to_string(), " no".to_string()),
    ];
    let (seqs, stats) = encode(&llm.tokenizer, "t", &pairs, 6).unwrap();
    // Byte-level tokens: one id per byte.
    assert_eq!(
        seqs[0].ids,
        b"ij yes".iter().map(|&b| b as u32).collect::<Vec<_>>()
    );
    assert_eq!((seqs[0].context_len, seqs[0].answer_len()), (2, 4));
    assert_eq!(
        seqs[1].ids,
        b"ab no".iter().map(|&b| b as u32).collect::<Vec<_>>()
    );
    assert_eq!(
        (stats.sequences, stats.truncated, stats.max_tokens),
        (2, 1, 6)
    );
}

#[test]
fn the_model_hash_is_cached_and_refreshed_when_the_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.gguf");
    let cache = tmp.path().join("cache/hashes.json");
    std::fs::write(&file, b"abc").unwrap();
    let h = model_sha256(&file, &cache).unwrap();
    assert_eq!(
        h,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(cache.is_file());
    assert_eq!(model_sha256(&file, &cache).unwrap(), h);
    std::fs::write(&file, b"abcd").unwrap();
    assert_ne!(model_sha256(&file, &cache).unwrap(), h);
    // A directory hashes its files by name.
    let d = tmp.path().join("hf");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    let a = model_sha256(&d, &cache).unwrap();
    std::fs::write(d.join("model.safetensors"), b"x").unwrap();
    assert_ne!(model_sha256(&d, &cache).unwrap(), a);
}

/// A collection run as job units (in any order, one of them twice) and merged equals the same
/// collection run in one go; merging refuses while a unit is missing, naming it.
#[test]
fn units_then_merge_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let llm = tiny_llm(tmp.path());
    let root = tmp.path().join("data");
    boolq_root(&root, 80);
    let plan = |dir: &str| {
        let mut p = tiny_collect_plan(&tmp.path().join(dir), &root, &["boolq"]);
        p.tasks
            .push(dnd_testkit::mc_task("mine", &root.join("mine.jsonl"), 80));
        p
    };
    let base = test_base_model("tiny");
    let (local, units) = (plan("local"), plan("units"));
    collect(&llm.model, &llm.tokenizer, &base, &local, &mut |_| {}).unwrap();
    dnd_collect::collect_unit(&llm.model, &llm.tokenizer, &base, &units, 1, &mut |_| {}).unwrap();
    let e = dnd_collect::merge_units(&units, &base)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 of 2 units are not done: 0 (boolq)"), "{e}");
    assert!(!units.dir.join(INDEX_FILE).exists());
    dnd_collect::collect_unit(&llm.model, &llm.tokenizer, &base, &units, 0, &mut |_| {}).unwrap();
    // A finished unit run again (a requeued array element) does no work.
    let mut events = 0;
    dnd_collect::collect_unit(&llm.model, &llm.tokenizer, &base, &units, 0, &mut |_| {
        events += 1
    })
    .unwrap();
    assert_eq!(events, 0);
    let e = dnd_collect::collect_unit(&llm.model, &llm.tokenizer, &base, &units, 2, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("unit 2: the plan has 2 units"), "{e}");
    dnd_collect::merge_units(&units, &base).unwrap();
    let (a, b) = (
        dnd_testkit::collection_contents(&local.dir),
        dnd_testkit::collection_contents(&units.dir),
    );
    let differ: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    assert!(
        differ.is_empty() && a.len() == b.len(),
        "differ: {differ:?}"
    );
}
