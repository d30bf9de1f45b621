//! Command-line definitions: one struct per subcommand, built from shared flattened groups.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::device::{DTypeChoice, DeviceChoice};
use crate::models::Quantization;

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
    /// Continue prompts with a causal language model (GPT-2 family)
    Generate(GenerateArgs),
    /// Translate with an encoder-decoder (T5 family) and its translation settings
    Translate(TranslateArgs),
    /// Summarize with an encoder-decoder (T5 family) and its summarization settings
    Summarize(Text2TextArgs),
    /// Run an encoder-decoder (T5 family) on the input as given
    #[command(name = "text2text")]
    Text2Text(Text2TextArgs),
    /// Embed texts as sentence vectors
    Embed(EmbedArgs),
    /// Predict masked tokens with a masked language model
    #[command(name = "fill-mask")]
    FillMask(FillMaskArgs),
    /// Tag named entities with a token-classification model
    Ner(NerArgs),
    /// Answer questions from a context with an extractive QA model
    Qa(QaArgs),
    /// Show what a checkpoint is: architecture, task, parameters, labels, files, defaults
    Info(InfoArgs),
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
    /// none, or q8: linear-layer weights as 8-bit integers made at load time; faster on
    /// CPU, outputs close to f32 but not identical (README: Performance)
    #[arg(long, value_name = "MODE", default_value = "none", value_parser = parse_quantization)]
    pub quantize: Quantization,
}

fn parse_quantization(s: &str) -> Result<Quantization, String> {
    match s {
        "none" => Ok(Quantization::None),
        "q8" | "q8_0" => Ok(Quantization::Q8),
        _ => Err(format!("unknown quantization `{s}`; use none or q8")),
    }
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
    /// Most inputs per forward pass
    #[arg(long, value_name = "N", default_value = "32", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Most tokens per forward pass, padding included; encoder tasks sort a window of inputs
    /// by length and batch under this budget
    #[arg(long, value_name = "N", default_value = "8192", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,
    /// Input lines are JSON objects; take the text from this string field
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
    /// Process only the records whose index is K modulo N (indexes stay those of the whole input)
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::batch::Shard>,
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
    /// Write records to FILE instead of stdout; a killed run leaves only whole records
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Continue an --output FILE after its last whole record (needs --json)
    #[arg(long, requires = "output", requires = "json")]
    pub resume: bool,
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

/// Token choice, shared by every generating command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// Always take the most likely token (same as --temperature 0)
    #[arg(long)]
    pub greedy: bool,
    /// Sample with this temperature; 0 is greedy
    #[arg(long, value_name = "T", conflicts_with = "greedy")]
    pub temperature: Option<f32>,
    /// Sample from the K most likely tokens (0: no limit)
    #[arg(long, value_name = "K", conflicts_with = "greedy")]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches P
    #[arg(long, value_name = "P", conflicts_with = "greedy")]
    pub top_p: Option<f32>,
    /// Penalize tokens already present (transformers' rule; 1 is off)
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f32>,
    /// Seed for sampling, so a run can be repeated exactly
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Most new tokens per prompt
    #[arg(long, value_name = "N", help_heading = "Generation")]
    pub max_new_tokens: Option<usize>,
    /// New tokens before the end-of-text token is allowed
    #[arg(long, value_name = "N", help_heading = "Generation")]
    pub min_new_tokens: Option<usize>,
    /// Stop where this text appears (repeatable); it is not included in the output
    #[arg(long, value_name = "STR", help_heading = "Generation")]
    pub stop: Vec<String>,
    /// Print tokens as they come (the default when stdout is a terminal)
    #[arg(long, help_heading = "Generation")]
    pub stream: bool,
    /// Decoding one prompt in f32 on the CPU: an int8 copy of the model proposes up to N
    /// tokens (fewer after misses) and the model checks them in one pass; output follows
    /// the model alone (default 4; 0: off)
    #[arg(long, value_name = "N", help_heading = "Generation")]
    pub draft_tokens: Option<usize>,
}

/// Encoder-decoder search settings.
#[derive(Debug, Args)]
#[command(next_help_heading = "Generation")]
pub struct Seq2SeqArgs {
    /// Beams for beam search (1: greedy or sampling)
    #[arg(long, value_name = "N")]
    pub num_beams: Option<usize>,
    /// Most decoder tokens, the start token included (as transformers counts)
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
    /// Most new tokens (wins over --max-length)
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Fewest decoder tokens, the start token included
    #[arg(long, value_name = "N")]
    pub min_length: Option<usize>,
    /// Fewest new tokens
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// Beam scores are divided by length^F (above 0 favours longer outputs)
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub length_penalty: Option<f32>,
    /// Never repeat an n-gram of this size
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// When beam search stops: true, false or never
    #[arg(long, value_name = "WHEN")]
    pub early_stopping: Option<crate::generation::EarlyStopping>,
}

#[derive(Debug, Args)]
pub struct Text2TextArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub search: Seq2SeqArgs,
}

#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// Source language code, as in the checkpoint's `translation_{from}_to_{to}` settings
    #[arg(long, value_name = "LANG", default_value = "en")]
    pub from: String,
    /// Target language code
    #[arg(long, value_name = "LANG")]
    pub to: String,
    #[command(flatten)]
    pub common: Text2TextArgs,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Pooling, replacing the checkpoint's 1_Pooling/config.json (default there, else mean)
    #[arg(long, value_name = "MODE", help_heading = "Embedding")]
    pub pooling: Option<crate::tasks::embed::Pooling>,
    /// Scale vectors to unit length (the default when the checkpoint has a Normalize module)
    #[arg(long, help_heading = "Embedding")]
    pub normalize: bool,
}

#[derive(Debug, Args)]
pub struct FillMaskArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Candidates per mask, best first
    #[arg(long, value_name = "N", default_value = "5", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Consider only these words (comma-separated)
    #[arg(long, value_name = "WORD,...", value_delimiter = ',')]
    pub targets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// How tokens become entities, as transformers' aggregation_strategy
    #[arg(long, value_name = "HOW", default_value = "simple")]
    pub aggregation: crate::tasks::ner::Aggregation,
}

#[derive(Debug, Args)]
pub struct QaArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Inputs are JSON objects {"question": ..., "context": ...}, one per argument or line
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The question (with --context: one input)
    #[arg(
        long,
        value_name = "TEXT",
        requires = "context",
        help_heading = "Question answering"
    )]
    pub question: Option<String>,
    /// The text to find the answer in
    #[arg(
        long,
        value_name = "TEXT",
        requires = "question",
        help_heading = "Question answering"
    )]
    pub context: Option<String>,
    /// Tokens per window; longer contexts are split (never past the model's positions)
    #[arg(
        long,
        value_name = "N",
        default_value = "384",
        help_heading = "Question answering"
    )]
    pub max_seq_len: usize,
    /// Context tokens shared by neighbouring windows [default: min(128, max-seq-len / 2)]
    #[arg(long, value_name = "N", help_heading = "Question answering")]
    pub doc_stride: Option<usize>,
    /// Longest answer, in tokens
    #[arg(long, value_name = "N", default_value = "15", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Question answering")]
    pub max_answer_len: u32,
    /// Answers per question, best first (listed under "answers" when above 1)
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Question answering")]
    pub top_k: u32,
    /// Also consider "no answer"
    #[arg(long, help_heading = "Question answering")]
    pub handle_impossible_answer: bool,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A local folder or a hub id `org/name`
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// Hub revision: branch, tag or commit
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// Never touch the network (also HF_HUB_OFFLINE=1)
    #[arg(long)]
    pub offline: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
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
