//! llmx: inference for small pretrained transformer checkpoints (BERT family, T5, GPT-2) in
//! the Hugging Face layout, on candle.
//!
//! ```no_run
//! use llmx::tasks::{classify::Classifier, LoadOptions};
//!
//! let classifier = Classifier::load("path/to/checkpoint", &LoadOptions::default())?;
//! for result in classifier.classify(&["Hello, my dog is cute"])? {
//!     let best = &result?.labels[0];
//!     println!("{} {:.4}", best.label, best.score);
//! }
//! # Ok::<(), llmx::Error>(())
//! ```
//!
//! The models run their parallel steps on rayon's global pool. Called from a thread outside
//! it, each step waits for the pool to pick it up; generation makes ~50 such steps per token,
//! so run it inside the pool (`rayon::scope(|_| ...)`), as the command-line tool does.

pub mod batch;
pub mod cli;
pub mod device;
mod error;
pub mod generation;
pub mod hub;
pub mod models;
pub mod tasks;
pub mod tokenize;

pub use error::{Error, Result};
