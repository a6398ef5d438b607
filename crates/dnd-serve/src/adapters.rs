//! Generated adapters on disk, content-addressed: the id is a hash of the generator and the prompts, so
//! the same request gives the same adapter, and an id from a URL is checked against that exact shape
//! before it names any path. Each adapter is a PEFT directory written under a temporary name and renamed
//! into place, so one that is listed is complete.

use crate::error::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What the server records beside each adapter (`adapter.json`) and returns for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub id: String,
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// How many prompts conditioned it (1 for a description).
    pub prompts: usize,
    pub base_model: String,
    /// sha256 of the generator's files.
    pub generator: String,
}

const META_FILE: &str = "adapter.json";
const PREFIX: &str = "dnd-";
const HEX: usize = 16;

/// The adapter directory.
pub struct AdapterStore {
    dir: PathBuf,
}

impl AdapterStore {
    /// Open (creating) `dir`, removing temporary directories a killed server left behind.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if dnd_io::is_temp(&p) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        Ok(Self { dir: dir.into() })
    }

    /// The id of the adapter `generator` makes from `prompts`.
    pub fn id_for(generator: &str, prompts: &[String]) -> String {
        let mut h = Sha256::new();
        h.update(generator.as_bytes());
        for p in prompts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        format!("{PREFIX}{}", &hex::encode(h.finalize())[..HEX])
    }

    /// Whether `id` has the exact shape of an id (`dnd-` and 16 lowercase hex digits): nothing else
    /// reaches the file system.
    pub fn valid_id(id: &str) -> bool {
        id.strip_prefix(PREFIX).is_some_and(|h| {
            h.len() == HEX
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }

    /// The directory of adapter `id`, if the id is well formed and the adapter exists.
    pub fn path(&self, id: &str) -> ApiResult<PathBuf> {
        if !Self::valid_id(id) {
            return Err(ApiError::bad_request(format!(
                "`{}` is not an adapter id (expected dnd- and 16 hex digits)",
                id.chars().take(80).collect::<String>()
            )));
        }
        let p = self.dir.join(id);
        if p.join(META_FILE).is_file() {
            Ok(p)
        } else {
            Err(ApiError::not_found(format!("no adapter `{id}`")))
        }
    }

    pub fn meta(&self, id: &str) -> ApiResult<AdapterMeta> {
        let p = self.path(id)?.join(META_FILE);
        dnd_io::read_json::<_, ApiError>(&p)
    }

    /// Every stored adapter, oldest first.
    pub fn list(&self) -> Vec<AdapterMeta> {
        let mut out: Vec<AdapterMeta> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| Self::valid_id(n))
            .filter_map(|id| self.meta(&id).ok())
            .collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }

    /// Write `lora` as adapter `meta.id` (atomically: complete or absent).
    pub fn write(&self, lora: &dnd_llm::Lora, meta: &AdapterMeta) -> ApiResult<()> {
        let dir = self.dir.join(&meta.id);
        let text = serde_json::to_string_pretty(meta).expect("adapter metadata serialises");
        dnd_generate::save_adapter(lora, &meta.base_model, &dir, &[(META_FILE, text)])
            .map_err(|e| ApiError::internal(format!("writing adapter {}: {e}", meta.id)))
    }

    /// Remove adapter `id`: renamed away first, so it disappears at once and whole.
    pub fn delete(&self, id: &str) -> ApiResult<()> {
        let p = self.path(id)?;
        let gone = dnd_io::temp_path(&p);
        std::fs::rename(&p, &gone)
            .and_then(|_| std::fs::remove_dir_all(&gone))
            .map_err(|e| ApiError::internal(format!("deleting adapter {id}: {e}")))
    }
}

/// sha256 over the generator directory's weights and settings (its top-level `.json` and
/// `.safetensors` files except the training log), the generator half of every adapter id.
pub fn generator_hash(dir: &Path) -> std::io::Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".json") || name.ends_with(".safetensors")) && name != "train.json"
        })
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(std::fs::read(&f)?);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server killed while writing leaves a temporary directory: never listed, removed at the next start.
    #[test]
    fn half_written_adapters_are_never_visible() {
        let dir = tempfile::tempdir().unwrap();
        let id = AdapterStore::id_for("g", &["p".into()]);
        let half = dnd_io::temp_path(&dir.path().join(&id));
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join(META_FILE), "{}").unwrap();
        let store = AdapterStore::open(dir.path()).unwrap();
        assert!(!half.exists(), "cleaned at start");
        assert!(store.list().is_empty());
        assert!(store.path(&id).is_err());
    }

    #[test]
    fn ids_are_checked_exactly() {
        let id = AdapterStore::id_for("g", &["a".into(), "b".into()]);
        assert!(AdapterStore::valid_id(&id), "{id}");
        assert_ne!(id, AdapterStore::id_for("g", &["ab".into()]));
        assert_ne!(id, AdapterStore::id_for("h", &["a".into(), "b".into()]));
        for bad in [
            "../etc",
            "dnd-../../../etc/pa",
            "/etc/passwd",
            "dnd-0123456789ABCDEF",
            "dnd-0123456789abcde",
            "dnd-0123456789abcdef0",
            "",
        ] {
            assert!(!AdapterStore::valid_id(bad), "{bad}");
        }
    }
}
