//! `dnd fetch`: make the pinned assets available in the cache.

use anyhow::Result;
use dnd_assets::{Cache, ASSETS};

#[derive(clap::Args)]
pub struct Args {
    /// Asset names (default: every default asset). Known: smollm2, minilm, humaneval, qwen2.
    names: Vec<String>,
    /// Also fetch the optional assets (the 490 MB Qwen2.5-Coder-0.5B GGUF).
    #[arg(long)]
    all: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cache = Cache::new();
    let chosen: Vec<_> = if args.names.is_empty() {
        ASSETS.iter().filter(|a| a.default || args.all).collect()
    } else {
        args.names
            .iter()
            .map(|n| dnd_assets::asset(n))
            .collect::<Result<_, _>>()?
    };
    for asset in chosen {
        let path = cache.ensure(asset)?;
        println!("{:10} {}", asset.name, path.display());
    }
    Ok(())
}
