//! Deterministic, seeded, disjoint splits. Each example's part is decided by a hash of
//! (seed, task, normalised key) alone, so the assignment is reproducible across machines, adding
//! examples never moves existing ones, and items with the same key always land in the same part.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::example::Example;

/// The default split seed: the paper's arXiv number (2506.16406), fixed so splits never drift.
pub const DEFAULT_SEED: u64 = 250_616_406;

/// What a source file is for, as the registry declares it (lower case in task files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An official test split: everything scored.
    Test,
    /// An official validation split (ARC Dev): model selection only.
    Validation,
    /// An official train split: cut into adapter-train and prompts (and validation when the task
    /// has no validation file).
    Train,
    /// The only labelled file of a task: cut into all four parts.
    Pool,
}

/// The disjoint parts of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// Labelled examples LoRA adapters are fine-tuned on.
    AdapterTrain,
    /// The pool DnD's unlabeled conditioning prompts are drawn from.
    Prompts,
    /// Model and checkpoint selection.
    Validation,
    /// Scored, and used for nothing else.
    Test,
}

impl Part {
    pub const ALL: [Part; 4] = [
        Part::AdapterTrain,
        Part::Prompts,
        Part::Validation,
        Part::Test,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::AdapterTrain => "adapter-train",
            Part::Prompts => "prompts",
            Part::Validation => "validation",
            Part::Test => "test",
        }
    }
}

/// Shares of a pool-only file, taken in this order along the hash line; any rest is unused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shares {
    pub test: f64,
    pub adapter_train: f64,
    pub prompts: f64,
    pub validation: f64,
}

/// Split sizes. Caps keep a 2-core CPU budget; they take the lowest-hash examples of a part, so a
/// capped part is a uniform random subset that stays stable as caps grow.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitConfig {
    pub seed: u64,
    pub pool: Shares,
    /// Share of an official train file kept for prompts.
    pub train_prompts: f64,
    /// Share of an official train file kept for validation when the task has no validation file.
    pub train_validation: f64,
    pub max_test: Option<usize>,
    pub max_validation: Option<usize>,
    pub max_adapter_train: Option<usize>,
    pub max_prompts: Option<usize>,
}

impl Default for SplitConfig {
    /// Half of a pool is scored; adapters get up to the paper's 5000 samples; a few hundred
    /// prompts and validation items.
    fn default() -> Self {
        SplitConfig {
            seed: DEFAULT_SEED,
            pool: Shares {
                test: 0.5,
                adapter_train: 0.3,
                prompts: 0.1,
                validation: 0.1,
            },
            train_prompts: 0.2,
            train_validation: 0.1,
            max_test: None,
            max_validation: Some(300),
            max_adapter_train: Some(5000),
            max_prompts: Some(500),
        }
    }
}

impl SplitConfig {
    fn cap(&self, part: Part) -> Option<usize> {
        match part {
            Part::AdapterTrain => self.max_adapter_train,
            Part::Prompts => self.max_prompts,
            Part::Validation => self.max_validation,
            Part::Test => self.max_test,
        }
    }
}

/// A task cut into its four disjoint parts, each in hash order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Splits {
    pub adapter_train: Vec<Example>,
    pub prompts: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
    /// Examples dropped because the same key belongs to a higher-priority source
    /// (test > validation > train > pool), e.g. an ARC train question that is also in Test.
    pub dropped_overlap: usize,
    /// Examples beyond a part's cap or outside every share.
    pub unused: usize,
}

impl Splits {
    pub fn part(&self, part: Part) -> &[Example] {
        match part {
            Part::AdapterTrain => &self.adapter_train,
            Part::Prompts => &self.prompts,
            Part::Validation => &self.validation,
            Part::Test => &self.test,
        }
    }

    fn part_mut(&mut self, part: Part) -> &mut Vec<Example> {
        match part {
            Part::AdapterTrain => &mut self.adapter_train,
            Part::Prompts => &mut self.prompts,
            Part::Validation => &mut self.validation,
            Part::Test => &mut self.test,
        }
    }
}

/// First 8 bytes of SHA-256(seed, task, key): a hash that no library upgrade can change.
pub fn split_hash(seed: u64, task: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(task.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

/// The hash as a point in [0, 1).
fn unit(h: u64) -> f64 {
    h as f64 / 18_446_744_073_709_551_616.0
}

/// Pick a part along cumulative shares, or none when `u` falls past them.
fn along(u: f64, shares: &[(Part, f64)]) -> Option<Part> {
    let mut edge = 0.0;
    shares.iter().find_map(|&(part, share)| {
        edge += share;
        (u < edge).then_some(part)
    })
}

fn priority(role: Role) -> u8 {
    match role {
        Role::Test => 0,
        Role::Validation => 1,
        Role::Train => 2,
        Role::Pool => 3,
    }
}

/// Cut a task's examples (tagged with their source's role) into disjoint parts.
pub fn split(task: &str, mut sourced: Vec<(Role, Example)>, cfg: &SplitConfig) -> Splits {
    let has_validation = sourced.iter().any(|(r, _)| *r == Role::Validation);
    let train_validation = if has_validation {
        0.0
    } else {
        cfg.train_validation
    };
    let pool = [
        (Part::Test, cfg.pool.test),
        (Part::AdapterTrain, cfg.pool.adapter_train),
        (Part::Prompts, cfg.pool.prompts),
        (Part::Validation, cfg.pool.validation),
    ];
    let train = [
        (Part::Prompts, cfg.train_prompts),
        (Part::Validation, train_validation),
        (Part::AdapterTrain, 1.0),
    ];
    sourced.sort_by_key(|(r, _)| priority(*r));
    let mut owner: HashMap<String, Role> = HashMap::new();
    let mut buckets: HashMap<Part, Vec<(u64, Example)>> = HashMap::new();
    let mut out = Splits::default();
    for (role, ex) in sourced {
        if *owner.entry(ex.key.clone()).or_insert(role) != role {
            out.dropped_overlap += 1;
            continue;
        }
        let h = split_hash(cfg.seed, task, &ex.key);
        let part = match role {
            Role::Test => Some(Part::Test),
            Role::Validation => Some(Part::Validation),
            Role::Train => along(unit(h), &train),
            Role::Pool => along(unit(h), &pool),
        };
        match part {
            Some(p) => buckets.entry(p).or_default().push((h, ex)),
            None => out.unused += 1,
        }
    }
    for (part, mut items) in buckets {
        items.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        if let Some(cap) = cfg.cap(part) {
            out.unused += items.len().saturating_sub(cap);
            items.truncate(cap);
        }
        *out.part_mut(part) = items.into_iter().map(|(_, ex)| ex).collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::Body;

    fn ex(i: usize, key: &str) -> Example {
        Example {
            id: format!("f:{i}"),
            prompt: key.into(),
            key: key.into(),
            body: Body::MultipleChoice {
                context: key.into(),
                choices: vec!["a".into(), "b".into()],
                gold: 0,
            },
        }
    }

    fn uncapped() -> SplitConfig {
        SplitConfig {
            max_test: None,
            max_validation: None,
            max_adapter_train: None,
            max_prompts: None,
            ..SplitConfig::default()
        }
    }

    fn part_of(s: &Splits, id: &str) -> Option<Part> {
        Part::ALL
            .into_iter()
            .find(|p| s.part(*p).iter().any(|e| e.id == id))
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing this value silently reshuffles every published split.
        assert_eq!(
            split_hash(DEFAULT_SEED, "arc_easy", "what is"),
            0xcaab_2ed0_4bce_ffbc
        );
    }

    #[test]
    fn adding_examples_moves_no_existing_one() {
        let all: Vec<_> = (0..400)
            .map(|i| (Role::Pool, ex(i, &format!("q{i}"))))
            .collect();
        let cfg = uncapped();
        let small = split("t", all[..200].to_vec(), &cfg);
        let big = split("t", all.clone(), &cfg);
        for (_, e) in &all[..200] {
            assert_eq!(part_of(&small, &e.id), part_of(&big, &e.id));
        }
        let other = split(
            "t",
            all,
            &SplitConfig {
                seed: 7,
                ..uncapped()
            },
        );
        assert_ne!(other.test, big.test, "the seed must matter");
    }

    #[test]
    fn official_roles_win_and_duplicates_stay_together() {
        let sourced = vec![
            (Role::Train, ex(1, "shared")),
            (Role::Test, ex(2, "shared")),
            (Role::Train, ex(3, "twin")),
            (Role::Train, ex(4, "twin")),
        ];
        let s = split("t", sourced, &uncapped());
        assert_eq!(s.dropped_overlap, 1);
        assert_eq!(part_of(&s, "f:2"), Some(Part::Test));
        assert_eq!(part_of(&s, "f:1"), None);
        assert_eq!(part_of(&s, "f:3"), part_of(&s, "f:4"));
    }

    #[test]
    fn caps_take_the_lowest_hashes() {
        let all: Vec<_> = (0..300)
            .map(|i| (Role::Test, ex(i, &format!("q{i}"))))
            .collect();
        let cfg = SplitConfig {
            max_test: Some(10),
            ..uncapped()
        };
        let s = split("t", all, &cfg);
        assert_eq!((s.test.len(), s.unused), (10, 290));
        let bigger = split(
            "t",
            (0..300)
                .map(|i| (Role::Test, ex(i, &format!("q{i}"))))
                .collect(),
            &SplitConfig {
                max_test: Some(20),
                ..uncapped()
            },
        );
        assert_eq!(s.test[..], bigger.test[..10]);
    }
}
