//! `dnd info`: what a model is, without running it.

use crate::common::ModelArg;
use anyhow::Result;
use dnd_llm::gguf::GgufFile;
use dnd_llm::{ModelConfig, Target};
use std::collections::BTreeMap;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
}

pub fn run(args: Args) -> Result<()> {
    let path = args.model.path()?;
    let (cfg, types) = if path.is_dir() {
        let cfg = ModelConfig::from_hf_file(&path.join("config.json"))?;
        (cfg, BTreeMap::from([("(safetensors)".to_string(), 0usize)]))
    } else {
        let file = GgufFile::open(&path)?;
        let mut types = BTreeMap::new();
        for info in file.content.tensor_infos.values() {
            *types.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        (file.config()?, types)
    };
    println!("file:            {}", path.display());
    println!("architecture:    {:?}", cfg.arch);
    println!(
        "parameters:      {:.1} M",
        cfg.num_parameters() as f64 / 1e6
    );
    println!("layers:          {}", cfg.num_layers);
    println!(
        "hidden / ffn:    {} / {}",
        cfg.hidden_size, cfg.intermediate_size
    );
    println!(
        "heads:           {} query, {} key/value, head dim {}",
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    );
    println!("vocabulary:      {}", cfg.vocab_size);
    println!("rope theta:      {}", cfg.rope_theta);
    println!("rms-norm eps:    {:e}", cfg.rms_norm_eps);
    println!("tied embeddings: {}", cfg.tie_word_embeddings);
    println!("q/k/v biases:    {}", cfg.qkv_bias);
    println!("context length:  {}", cfg.max_position_embeddings);
    let lora: usize = Target::ALL
        .iter()
        .map(|&t| {
            let (i, o) = cfg.module_shape(t);
            8 * (i + o)
        })
        .sum::<usize>()
        * cfg.num_layers;
    println!("LoRA r=8, all 7: {lora} parameters");
    if !path.is_dir() {
        let list: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        println!("tensor types:    {}", list.join(", "));
    }
    Ok(())
}
