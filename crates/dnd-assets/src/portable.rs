//! How reports name the files they used, so that a report reads the same on every machine: a pinned
//! asset by its name and pin, the cache as `$DND_CACHE`, the home directory as `~`.

use crate::{cache_root, ASSETS};
use std::path::Path;

/// `path` as a report shows it: a pinned asset in the cache as `smollm2 (sha256 b179c952...)` (the
/// pin is what the cache verified it against), anything else under the cache as `$DND_CACHE/...`,
/// under the home directory as `~/...`, any other path as given.
pub fn portable_name(path: &Path) -> String {
    portable_name_under(
        path,
        &cache_root(),
        std::env::var_os("HOME").as_deref().map(Path::new),
    )
}

fn portable_name_under(path: &Path, cache: &Path, home: Option<&Path>) -> String {
    if let Some(a) = ASSETS.iter().find(|a| cache.join(a.file) == path) {
        return format!("{} (sha256 {})", a.name, &a.sha256[..16]);
    }
    if let Ok(rest) = path.strip_prefix(cache) {
        return format!("$DND_CACHE/{}", rest.display());
    }
    match home.and_then(|h| path.strip_prefix(h).ok()) {
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_cache_and_home_are_named_alike_on_every_machine() {
        let cache = Path::new("/h/u/.cache/dnd");
        let home = Some(Path::new("/h/u"));
        let name = |p: &str| portable_name_under(Path::new(p), cache, home);
        assert_eq!(
            name("/h/u/.cache/dnd/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2 (sha256 b179c9523d0e6a0f)"
        );
        assert_eq!(
            name("/h/u/.cache/dnd/collections/commonsense"),
            "$DND_CACHE/collections/commonsense"
        );
        assert_eq!(name("/h/u/models/x.gguf"), "~/models/x.gguf");
        assert_eq!(name("/data/x.gguf"), "/data/x.gguf");
        assert_eq!(name("rel/x.gguf"), "rel/x.gguf");
    }
}
