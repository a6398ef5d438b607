//! Shared test helper: where the real data is.

use std::path::PathBuf;

/// `DND_DATA`, else `../shared/data` beside the workspace. `None` (tests skip) when absent.
pub fn data_root() -> Option<PathBuf> {
    let root = std::env::var_os("DND_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if root.is_dir() {
        Some(root)
    } else {
        eprintln!("skipping: no data at {}", root.display());
        None
    }
}
