//! A task file, TOML or JSON (the first byte picks which), and the catalog built from it.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let path = common::scratch(rest, if kind & 1 == 0 { "toml" } else { "json" });
    let _ = dnd_tasks::Catalog::new(&[path]);
});
