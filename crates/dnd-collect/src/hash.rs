//! The base model's sha256, recorded in every manifest. Reading a 0.1-2.5 GB file takes seconds, so
//! hashes are cached in `$DND_CACHE/hashes.json` under the file's canonical path, size and
//! modification time; a changed file is hashed again.

use crate::error::{io_err, CollectError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// sha256 of a model file; for a Hugging Face directory, sha256 over the sorted `name sha256` lines of
/// its files. `cache` is the JSON file the hashes are kept in.
pub fn model_sha256(path: &Path, cache: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path, cache);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut lines = String::new();
    for f in files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        lines.push_str(&format!("{name} {}\n", file_sha256(&f, cache)?));
    }
    Ok(hex::encode(Sha256::digest(lines.as_bytes())))
}

fn file_sha256(path: &Path, cache: &Path) -> Result<String> {
    let canonical = std::fs::canonicalize(path).map_err(io_err(path))?;
    let meta = std::fs::metadata(&canonical).map_err(io_err(path))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = canonical.to_string_lossy().into_owned();
    let mut entries: BTreeMap<String, Entry> = std::fs::read_to_string(cache)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(e) = entries.get(&key) {
        if e.size == meta.len() && e.mtime_ns == mtime_ns {
            return Ok(e.sha256.clone());
        }
    }
    let sha256 = dnd_assets::sha256_file(&canonical).map_err(|e| CollectError::Io {
        path: canonical.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    entries.insert(
        key,
        Entry {
            size: meta.len(),
            mtime_ns,
            sha256: sha256.clone(),
        },
    );
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    // A unique temporary name: two processes may refresh the cache at once; the last rename wins
    // and both entries stay valid.
    let tmp = cache.with_extension(format!("{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(&entries).expect("hash entries serialise");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, cache).map_err(io_err(cache))?;
    Ok(sha256)
}
