use std::path::PathBuf;

/// Why a benchmark stopped. The messages name the CLI's flags where the fix is one.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark settings: {0}")]
    Config(String),
    #[error(
        "reference script {} not found; point --scripts (or DND_REFERENCE_SCRIPTS) at the \
         repository's scripts/reference directory",
        .0.display()
    )]
    MissingScript(PathBuf),
    #[error("running {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("{}: unexpected output: {reason}", script.display())]
    ReferenceOutput { script: PathBuf, reason: String },
    #[error("task `{task}` has no prompts under {}", data.display())]
    NoPrompts { task: String, data: PathBuf },
    #[error("loading {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: dnd_llm::LlmError,
    },
    #[error("a decoder weight has no gradient")]
    NoGradient,
    #[error(transparent)]
    Io(#[from] dnd_io::PathIoError),
    #[error(transparent)]
    Json(#[from] dnd_io::JsonError),
    #[error(transparent)]
    Llm(#[from] dnd_llm::LlmError),
    #[error(transparent)]
    Collect(#[from] dnd_collect::CollectError),
    #[error(transparent)]
    Decode(#[from] dnd_decode::DecodeError),
    #[error(transparent)]
    Encode(#[from] dnd_encode::EncodeError),
    #[error(transparent)]
    Generate(#[from] dnd_generate::GenerateError),
    #[error(transparent)]
    Tokenize(#[from] dnd_tokenize::TokenizeError),
    #[error(transparent)]
    Optim(#[from] dnd_optim::OptimError),
    #[error(transparent)]
    Task(#[from] dnd_tasks::Error),
    #[error(transparent)]
    Asset(#[from] dnd_assets::AssetError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, BenchError>;
