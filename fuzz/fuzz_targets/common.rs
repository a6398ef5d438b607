//! The parsers under test read paths, so each input is written to one scratch file per process (in
//! /dev/shm when it exists: no disk I/O per execution).

use std::path::PathBuf;

pub fn scratch(data: &[u8], ext: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("dnd-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, data).expect("writing the scratch file");
    path
}
