//! Fine-tuning one task, and collecting checkpoints for many: task data in, adapters and manifests out.

use crate::data::{encode, Sequence};
use crate::error::{io_err, CollectError, Result};
use crate::heldout::{heldout, Heldout};
use crate::run::{
    run, BaseModel, DataInfo, Manifest, RunOptions, RunOutcome, RunSpec, Saves, Storage,
};
use crate::stats::task_spread;
use crate::trainer::{LoraTrainConfig, StepRecord};
use dnd_llm::{Tokenizer, Transformer};
use dnd_tasks::{find_task, Part, SplitConfig, Task};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const INDEX_FILE: &str = "collection.json";
/// The directory of unit completion markers (`<task>.json`, each the task's index entry).
pub const UNITS_DIR: &str = "units";

/// A task's adapter-train part as training sequences.
pub struct TaskSequences {
    pub seqs: Vec<Sequence>,
    pub info: DataInfo,
}

/// Load a task's adapter-train part from `root` and encode it (see [`encode`]).
pub fn prepare_task(
    tok: &Tokenizer,
    task: &Task,
    root: &Path,
    split: &SplitConfig,
    max_len: usize,
) -> Result<TaskSequences> {
    prepare_tasks(tok, std::slice::from_ref(task), root, split, max_len)
}

/// The name of a run over several tasks: their names joined by `+`.
pub fn union_name(tasks: &[Task]) -> String {
    tasks
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

/// The union of several tasks' adapter-train parts, encoded (one task: exactly [`prepare_task`]).
/// Each task gives at most as many examples as the smallest one, in its split order, so no task
/// dominates a multi-task adapter by its size.
pub fn prepare_tasks(
    tok: &Tokenizer,
    tasks: &[Task],
    root: &Path,
    split: &SplitConfig,
    max_len: usize,
) -> Result<TaskSequences> {
    if tasks.is_empty() {
        return Err(CollectError::Config("no tasks to train on".into()));
    }
    let parts = tasks
        .iter()
        .map(|t| {
            let part = t.splits(root, split)?.adapter_train;
            if part.is_empty() {
                return Err(CollectError::Data {
                    task: t.name.clone(),
                    reason: "the adapter-train split is empty".into(),
                });
            }
            Ok(part)
        })
        .collect::<Result<Vec<_>>>()?;
    let share = parts.iter().map(Vec::len).min().unwrap_or(0);
    let pairs: Vec<(String, String)> = parts
        .iter()
        .flat_map(|p| p.iter().take(share).map(|e| e.training_pair()))
        .collect();
    let (seqs, encoded) = encode(tok, &union_name(tasks), &pairs, max_len)?;
    let info = DataInfo {
        root: root.display().to_string(),
        part: Part::AdapterTrain.name().into(),
        split_seed: split.seed,
        encoded,
        tokens_sha256: DataInfo::tokens_hash(&seqs),
    };
    Ok(TaskSequences { seqs, info })
}

/// What a collection reports as it goes.
pub enum Event<'a> {
    /// A task begins (or resumes); `steps` updates in all.
    TaskStart {
        task: &'a str,
        steps: usize,
    },
    Step(&'a StepRecord),
    TaskDone(&'a Manifest),
}

/// A collection: the same schedule, seed and base model for every task.
pub struct CollectPlan {
    pub dir: PathBuf,
    pub tasks: Vec<Task>,
    pub train: LoraTrainConfig,
    /// Updates before the first saved checkpoint; every later update (up to `train.steps`) is saved.
    pub first_phase: usize,
    pub data_root: PathBuf,
    pub split: SplitConfig,
    pub state_every: usize,
    /// The float type checkpoints are saved in.
    pub storage: Storage,
}

/// `collection.json`: the tasks collected so far, with what the generator needs to find them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionIndex {
    pub base_model: BaseModel,
    pub train: LoraTrainConfig,
    pub first_phase: usize,
    pub tasks: Vec<TaskEntry>,
    /// Sum of the tasks' manifest wall times.
    pub wall_time_s: f64,
}

impl CollectionIndex {
    /// The index of the collection directory `collection` (its `collection.json`).
    pub fn read(collection: &Path) -> Result<Self> {
        dnd_io::read_json(&collection.join(INDEX_FILE))
    }

    /// The collected task `name` as it was defined when collected, its source files checked against
    /// the recorded hashes (a collection from before definitions were recorded names a built-in task).
    pub fn task(&self, name: &str, root: &Path) -> Result<Task> {
        let entry =
            self.tasks.iter().find(|t| t.task == name).ok_or_else(|| {
                CollectError::Config(format!("task {name} is not in the collection"))
            })?;
        match &entry.definition {
            Some(task) => {
                task.check_sources(root, &entry.sources_sha256)?;
                Ok(task.clone())
            }
            None => Ok(find_task(name)?),
        }
    }

    /// [`CollectionIndex::task`] for each name; every task of the collection when `names` is empty.
    pub fn resolve(&self, names: &[String], root: &Path) -> Result<Vec<Task>> {
        if names.is_empty() {
            return self
                .tasks
                .iter()
                .map(|t| self.task(&t.task, root))
                .collect();
        }
        names.iter().map(|n| self.task(n, root)).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEntry {
    pub task: String,
    /// The task's full definition when collected (absent in collections made before task files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Task>,
    /// sha256 of each of the definition's source files when collected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources_sha256: Vec<String>,
    /// Relative to the collection directory.
    pub dir: String,
    pub checkpoints: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub wall_time_s: f64,
    /// Mean element-wise spread across the checkpoints of all A and of all B matrices.
    pub mean_std_lora_a: f64,
    pub mean_std_lora_b: f64,
    /// Whether the task's LoRA learned: held-out loss of the base model and the last checkpoint
    /// (absent for tasks without validation items and in collections made before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<Heldout>,
}

/// Collect every task of `plan` in turn, skipping finished ones and resuming a half-done one. Returns
/// the index of the plan's tasks; `collection.json` also keeps the tasks collected there before.
pub fn collect(
    model: &Transformer,
    tok: &Tokenizer,
    base: &BaseModel,
    plan: &CollectPlan,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<CollectionIndex> {
    let existing = check_plan(plan, base)?;
    // Every task's sources are read before any work: a missing file fails at once, not hours in.
    let mut hashes = Vec::with_capacity(plan.tasks.len());
    for t in &plan.tasks {
        hashes.push(t.source_hashes(&plan.data_root)?);
    }
    let mut done = Vec::new();
    for (task, sha256) in plan.tasks.iter().zip(hashes) {
        done.push(collect_task(
            model, tok, base, plan, task, sha256, on_event,
        )?);
        write_index(plan, base, &existing, &done)?;
    }
    Ok(index_of(plan, base, done))
}

/// Collect task `unit` of `plan` (numbered from 0 in plan order) as one independent job: the task's
/// files, then its index entry in `units/<task>.json`, written atomically last, which marks the unit
/// done. `collection.json` is not touched (units may run at once on a cluster): [`merge_units`] builds
/// it. A unit already done is skipped; a half-done one resumes.
pub fn collect_unit(
    model: &Transformer,
    tok: &Tokenizer,
    base: &BaseModel,
    plan: &CollectPlan,
    unit: usize,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TaskEntry> {
    check_plan(plan, base)?;
    let task = plan.tasks.get(unit).ok_or_else(|| {
        CollectError::Config(format!(
            "unit {unit}: the plan has {} units (0 to {})",
            plan.tasks.len(),
            plan.tasks.len().saturating_sub(1)
        ))
    })?;
    let marker = unit_file(plan, task);
    if let Some(entry) = read_unit(&marker, task)? {
        return Ok(entry);
    }
    let sha256 = task.source_hashes(&plan.data_root)?;
    let entry = collect_task(model, tok, base, plan, task, sha256, on_event)?;
    dnd_io::write_json::<_, CollectError>(&marker, &entry)?;
    Ok(entry)
}

/// Build `collection.json` from the units of every task of `plan`, in plan order (after the tasks the
/// collection held before), as [`collect`] would have written it. Refuses while any unit is missing,
/// naming them.
pub fn merge_units(plan: &CollectPlan, base: &BaseModel) -> Result<CollectionIndex> {
    let existing = check_plan(plan, base)?;
    let mut done = Vec::new();
    let mut missing = Vec::new();
    for (i, task) in plan.tasks.iter().enumerate() {
        match read_unit(&unit_file(plan, task), task)? {
            Some(entry) => done.push(entry),
            None => missing.push(format!("{i} ({})", task.name)),
        }
    }
    if !missing.is_empty() {
        return Err(CollectError::Config(format!(
            "{} of {} units are not done: {}",
            missing.len(),
            plan.tasks.len(),
            missing.join(", ")
        )));
    }
    write_index(plan, base, &existing, &done)?;
    Ok(index_of(plan, base, done))
}

/// Where unit `task` of a plan records that it is done.
fn unit_file(plan: &CollectPlan, task: &Task) -> PathBuf {
    plan.dir.join(UNITS_DIR).join(format!("{}.json", task.name))
}

/// A unit's entry if it is done, refusing one recorded for other data under the same task name.
fn read_unit(path: &Path, task: &Task) -> Result<Option<TaskEntry>> {
    if !path.is_file() {
        return Ok(None);
    }
    let entry: TaskEntry = dnd_io::read_json::<_, CollectError>(path)?;
    if entry
        .definition
        .as_ref()
        .is_some_and(|d| !d.same_data(task))
    {
        return Err(CollectError::Mismatch {
            dir: path.into(),
            reason: format!("unit {} was collected from other data", task.name),
        });
    }
    Ok(Some(entry))
}

/// The checks every way of collecting starts with; the index the directory already has.
fn check_plan(plan: &CollectPlan, base: &BaseModel) -> Result<Vec<TaskEntry>> {
    if plan.tasks.is_empty() {
        return Err(CollectError::Config("no tasks to collect".into()));
    }
    // Checked here, before any training: each task's spread (spread.json) needs two checkpoints.
    if plan.first_phase + 2 > plan.train.steps {
        return Err(CollectError::Config(format!(
            "the first phase ({} steps) leaves {} checkpoint(s) within {} steps; a task's spread \
             needs at least 2",
            plan.first_phase,
            plan.train.steps.saturating_sub(plan.first_phase),
            plan.train.steps
        )));
    }
    Ok(existing_index(plan, base)?.map_or(Vec::new(), |i| i.tasks))
}

fn index_of(plan: &CollectPlan, base: &BaseModel, tasks: Vec<TaskEntry>) -> CollectionIndex {
    CollectionIndex {
        base_model: base.clone(),
        train: plan.train.clone(),
        first_phase: plan.first_phase,
        wall_time_s: tasks.iter().map(|t| t.wall_time_s).sum(),
        tasks,
    }
}

/// Write `collection.json`: the entries it had, with `done` replacing or added after them.
fn write_index(
    plan: &CollectPlan,
    base: &BaseModel,
    existing: &[TaskEntry],
    done: &[TaskEntry],
) -> Result<()> {
    let on_disk = index_of(plan, base, merged(existing, done));
    std::fs::create_dir_all(&plan.dir).map_err(io_err(&plan.dir))?;
    dnd_io::write_json::<_, CollectError>(&plan.dir.join(INDEX_FILE), &on_disk)
}

/// One task of the plan, from its data (whose files hashed to `sha256`) to its index entry, with the
/// held-out check.
#[allow(clippy::too_many_arguments)]
fn collect_task(
    model: &Transformer,
    tok: &Tokenizer,
    base: &BaseModel,
    plan: &CollectPlan,
    task: &Task,
    sha256: Vec<String>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TaskEntry> {
    let started = Instant::now();
    on_event(Event::TaskStart {
        task: &task.name,
        steps: plan.train.steps,
    });
    let data = prepare_task(tok, task, &plan.data_root, &plan.split, plan.train.max_len)?;
    let spec = RunSpec {
        task: task.name.clone(),
        base_model: base.clone(),
        data: data.info,
        train: plan.train.clone(),
        saves: Saves::EveryStepFrom(plan.first_phase + 1),
        storage: plan.storage,
    };
    let dir = plan.dir.join(&task.name);
    let mut on_step = |r: &StepRecord| on_event(Event::Step(r));
    let mut opts = RunOptions {
        state_every: plan.state_every,
        stop_after: None,
        started,
        on_step: &mut on_step,
    };
    let RunOutcome::Complete(manifest) = run(model, &data.seqs, &spec, &dir, &mut opts)? else {
        unreachable!("runs without stop_after complete");
    };
    let mut entry = task_entry(&dir, task, sha256, &manifest)?;
    if let Some(last) = manifest.checkpoints.last() {
        let at = (plan.data_root.as_path(), &plan.split, plan.train.max_len);
        entry.heldout = heldout(model, tok, task, &dir.join(last), at, &dir)?;
    }
    on_event(Event::TaskDone(&manifest));
    Ok(entry)
}

/// The collection directory's index, if it has one, checked against the plan: one base model and
/// schedule per collection, and a task already collected must keep its data (definition and source
/// files). A collection is made in one or several invocations (or units) of a few tasks each.
fn existing_index(plan: &CollectPlan, base: &BaseModel) -> Result<Option<CollectionIndex>> {
    if !plan.dir.join(INDEX_FILE).is_file() {
        return Ok(None);
    }
    let existing = CollectionIndex::read(&plan.dir)?;
    if existing.base_model.sha256 != base.sha256
        || existing.train != plan.train
        || existing.first_phase != plan.first_phase
    {
        return Err(CollectError::Mismatch {
            dir: plan.dir.clone(),
            reason: "the collection holds tasks made with another base model or schedule".into(),
        });
    }
    for task in &plan.tasks {
        let Some(entry) = existing.tasks.iter().find(|e| e.task == task.name) else {
            continue;
        };
        if entry
            .definition
            .as_ref()
            .is_some_and(|d| !d.same_data(task))
        {
            return Err(CollectError::Mismatch {
                dir: plan.dir.join(&task.name),
                reason: format!("task {} was collected from other data", task.name),
            });
        }
        existing.task(&task.name, &plan.data_root)?;
    }
    Ok(Some(existing))
}

/// The index entries to write: the collection's, in their order, with the entries of `done`
/// replacing those of the same task; tasks new to the collection after them.
fn merged(existing: &[TaskEntry], done: &[TaskEntry]) -> Vec<TaskEntry> {
    let mut out: Vec<TaskEntry> = existing
        .iter()
        .map(|e| done.iter().find(|d| d.task == e.task).unwrap_or(e).clone())
        .collect();
    out.extend(
        done.iter()
            .filter(|d| !existing.iter().any(|e| e.task == d.task))
            .cloned(),
    );
    out
}

/// The index entry of a finished task, computing its checkpoint spread on first sight.
fn task_entry(
    dir: &Path,
    task: &Task,
    sources_sha256: Vec<String>,
    m: &Manifest,
) -> Result<TaskEntry> {
    let ckpts: Vec<PathBuf> = m.checkpoints.iter().map(|c| dir.join(c)).collect();
    let spread = task_spread(dir, &ckpts, m.spec.storage.dtype())?;
    Ok(TaskEntry {
        task: task.name.clone(),
        definition: Some(task.clone()),
        sources_sha256,
        dir: task.name.clone(),
        checkpoints: m.checkpoints.len(),
        first_loss: m.steps.first().map_or(f64::NAN, |r| r.loss),
        final_loss: m.steps.last().map_or(f64::NAN, |r| r.loss),
        wall_time_s: m.wall_time_s,
        mean_std_lora_a: spread.mean_std_lora_a,
        mean_std_lora_b: spread.mean_std_lora_b,
        heldout: None,
    })
}

/// Fine-tune one adapter on a task, or on the union of several ([`prepare_tasks`]: the multi-task
/// baseline), into `dir` (a PEFT directory with `manifest.json` and `loss.png`).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    model: &Transformer,
    tok: &Tokenizer,
    base: &BaseModel,
    tasks: &[Task],
    train: &LoraTrainConfig,
    data_root: &Path,
    split: &SplitConfig,
    dir: &Path,
    on_step: &mut dyn FnMut(&StepRecord),
) -> Result<Manifest> {
    let started = Instant::now();
    let data = prepare_tasks(tok, tasks, data_root, split, train.max_len)?;
    let spec = RunSpec {
        task: union_name(tasks),
        base_model: base.clone(),
        data: data.info,
        train: train.clone(),
        saves: Saves::Final,
        storage: Storage::F32,
    };
    let mut opts = RunOptions {
        state_every: 25,
        stop_after: None,
        started,
        on_step,
    };
    match run(model, &data.seqs, &spec, dir, &mut opts)? {
        RunOutcome::Complete(m) => Ok(*m),
        RunOutcome::Stopped(_) => unreachable!("runs without stop_after complete"),
    }
}

/// The checkpoint directories of a collected task, in step order.
pub fn task_checkpoints(collection: &Path, task: &str) -> Result<Vec<PathBuf>> {
    let m = Manifest::read(&collection.join(task).join(crate::run::RUN_MANIFEST_FILE))?;
    if !m.complete {
        return Err(CollectError::Data {
            task: task.into(),
            reason: "its collection is not finished".into(),
        });
    }
    Ok(m.checkpoints
        .iter()
        .map(|c| collection.join(task).join(c))
        .collect())
}
