//! The library's error type. Every variant says what went wrong and, where the user can act,
//! what to do about it; sources are kept so the CLI can print the whole chain.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("{model} has no {file}{hint}")]
    MissingFile {
        model: String,
        file: String,
        hint: String,
    },

    #[error(
        "{model}: {file} is not in the Hugging Face cache at {} (offline mode); \
         run `llmx download {model}` while online, or pass --model DIR for a local folder",
        cache.display()
    )]
    NotInCache {
        model: String,
        file: String,
        cache: PathBuf,
    },

    #[error("could not fetch {model} from the Hugging Face hub: {problem}")]
    Hub {
        model: String,
        problem: &'static str,
        #[source]
        source: Box<hf_hub::api::sync::ApiError>,
    },

    #[error(
        "{model} has only PyTorch pickle weights (pytorch_model.bin), which llmx does not load \
         because unpickling can run arbitrary code; convert them to model.safetensors first"
    )]
    PickleOnly { model: String },

    #[error("cannot load the weights in {}; the file may be truncated or corrupt, download it again", path.display())]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    #[error("weights do not match config.json: {0}")]
    WeightLayout(#[source] candle_core::Error),

    #[error("cannot load the tokenizer {}", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("tokenization failed: {0}")]
    Encode(String),

    /// An input the task cannot take (no mask token, a malformed record).
    #[error("{0}")]
    Input(String),

    #[error("unsupported architecture {architecture}; llmx supports {supported}")]
    UnsupportedArchitecture {
        architecture: String,
        supported: String,
    },

    #[error("this checkpoint is a {architecture}, which `llmx {wanted}` cannot run{suggestion}")]
    WrongTask {
        architecture: String,
        wanted: &'static str,
        suggestion: String,
    },

    #[error("{0}")]
    Device(String),

    #[error("{0}")]
    Generation(String),

    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
