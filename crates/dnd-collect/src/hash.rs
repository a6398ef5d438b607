//! The base model's sha256, recorded in every manifest. Reading a 0.1-2.5 GB file takes seconds, so
//! hashes are remembered (by [`dnd_assets::sha256_file_memo`], in `$DND_CACHE/hashes.json`) under the
//! file's canonical path, size and modification time; a changed file is hashed again.

use crate::error::{io_err, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

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
    dnd_assets::sha256_file_memo(path, cache)
        .map_err(|e| io_err(path)(std::io::Error::other(e.to_string())))
}
