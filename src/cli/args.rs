//! Command-line definitions: one struct per subcommand, built from shared flattened groups.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::device::{DTypeChoice, DeviceChoice};

#[derive(Debug, Parser)]
#[command(
    name = "llmx",
    version,
    about = "Run small pretrained transformers (BERT family, T5, GPT-2) from the command line",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify texts with a sequence-classification model
    Classify(ClassifyArgs),
    /// Fetch a model into the Hugging Face cache
    Download(DownloadArgs),
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// A local folder in the Hugging Face layout, or a hub id `org/name`
    #[arg(long, value_name = "ID_OR_DIR")]
    pub model: Option<String>,
    /// Hub revision: branch, tag or commit
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// Never touch the network; hub ids resolve from the cache (also HF_HUB_OFFLINE=1)
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// auto, cpu, cuda[:N] or metal
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// auto, f32, f16 or bf16
    #[arg(long, value_name = "DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Input")]
pub struct InputArgs {
    /// Inputs; with none, --input files or stdin are read one input per line
    #[arg(value_name = "TEXT")]
    pub texts: Vec<OsString>,
    /// Read inputs one per line from FILE (`-` for stdin); repeatable
    #[arg(long, value_name = "FILE", conflicts_with = "texts")]
    pub input: Vec<PathBuf>,
    /// Inputs per forward pass
    #[arg(long, value_name = "N", default_value = "32", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// One JSON object per input on stdout, in input order
    #[arg(long)]
    pub json: bool,
    /// No progress or warnings on stderr
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// How many labels to report per input, best first
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Report every label
    #[arg(long, conflicts_with = "top_k")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Hub id `org/name`
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// Hub revision: branch, tag or commit
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// No progress on stderr
    #[arg(long, short)]
    pub quiet: bool,
}
