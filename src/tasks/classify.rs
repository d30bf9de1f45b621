//! Sequence classification (`llmx classify`), scored as transformers' text-classification
//! pipeline scores it.

use candle_core::{DType, Device};
use serde::Serialize;

use super::{HeadConfig, LoadOptions};
use crate::device::Precision;
use crate::error::Result;
use crate::hub::{self, ModelRepo};
use crate::models::{self, ModelConfig, SequenceClassifier, Task};
use crate::tokenize::{Batch, Batching, Encoding, Side, TextEncoder};

pub const DEFAULT_MODEL: &str = "distilbert/distilbert-base-uncased-finetuned-sst-2-english";

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    Softmax,
    Sigmoid,
    /// Regression: the raw values.
    None,
}

impl Scoring {
    /// transformers' rule: regression is raw; multi-label or a single label is sigmoid;
    /// otherwise softmax.
    fn for_model(problem_type: Option<&str>, num_labels: usize) -> Scoring {
        match problem_type {
            Some("regression") => Scoring::None,
            Some("multi_label_classification") => Scoring::Sigmoid,
            _ if num_labels == 1 => Scoring::Sigmoid,
            _ => Scoring::Softmax,
        }
    }

    fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Scoring::None => logits.to_vec(),
            Scoring::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Scoring::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.iter().map(|&e| e / sum).collect()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// Every label of one input, best first (ties keep label order, as transformers' sort does).
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub labels: Vec<LabelScore>,
    /// The input was longer than the model window and was cut to fit.
    pub truncated: bool,
}

pub struct Classifier {
    model: SequenceClassifier,
    text: TextEncoder,
    labels: Vec<String>,
    scoring: Scoring,
    batching: Batching,
    device: Device,
    dtype: DType,
}

impl Classifier {
    /// Loads a `*ForSequenceClassification` checkpoint from a folder or the hub. The
    /// architecture is checked before any weights are fetched.
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::Classify)?;
        let encoder_config = models::encoder_config(&config)?;
        let head: HeadConfig = config.parse()?;
        let labels = head.labels(&config)?;
        let scoring = Scoring::for_model(head.problem_type.as_deref(), labels.len());

        let text = super::encoder_text(&repo, &encoder_config, None)?;
        let (device, dtype) = options.placement(Precision::HalfSafe)?;
        let (text, model) = super::beside_weights(text, || {
            options.load_weights(&repo, (&device, dtype), |vb| {
                models::load_sequence_classifier(
                    &config,
                    &encoder_config,
                    labels.len(),
                    vb,
                    options.quantization,
                )
            })
        })?;
        Ok(Classifier {
            model,
            text,
            labels,
            scoring,
            batching: Batching::default(),
            device,
            dtype,
        })
    }

    /// How inputs are grouped into forward passes.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// Label names by id.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn scoring(&self) -> Scoring {
        self.scoring
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The most tokens one input may have; longer inputs are truncated.
    pub fn window(&self) -> usize {
        self.text.window()
    }

    /// Classifies `texts` in length-bucketed padded batches. A text that cannot be tokenized
    /// fails alone; an error in the forward pass fails the call.
    pub fn classify(&self, texts: &[&str]) -> Result<Vec<Result<Classification>>> {
        self.classify_encoded(self.encode(texts))
    }

    /// Tokenizes `texts` for [`Classifier::classify_encoded`] (a separate step, so batch
    /// jobs can tokenize the next inputs while the model runs).
    pub fn encode(&self, texts: &[&str]) -> Vec<Result<Encoding>> {
        self.text.encode_all(texts)
    }

    /// Classifies inputs tokenized by [`Classifier::encode`].
    pub fn classify_encoded(
        &self,
        encoded: Vec<Result<Encoding>>,
    ) -> Result<Vec<Result<Classification>>> {
        Ok(
            super::run_encoded(encoded, &self.batching, |group| self.scores(group))?
                .into_iter()
                .map(|input| {
                    input.map(|(encoding, scores)| self.ranked(&scores, encoding.truncated))
                })
                .collect(),
        )
    }

    /// Raw logits for already-encoded inputs, one row per input.
    fn scores(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>> {
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Batch::new(encodings, self.text.pad_id(), Side::Right, &self.device)?;
        let logits = self
            .model
            .forward(&batch)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        Ok(logits.iter().map(|row| self.scoring.apply(row)).collect())
    }

    fn ranked(&self, scores: &[f32], truncated: bool) -> Classification {
        let mut labels: Vec<LabelScore> = self
            .labels
            .iter()
            .zip(scores)
            .map(|(label, &score)| LabelScore {
                label: label.clone(),
                score,
            })
            .collect();
        labels.sort_by(|a, b| b.score.total_cmp(&a.score));
        Classification { labels, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_follows_transformers() {
        assert_eq!(Scoring::for_model(Some("regression"), 1), Scoring::None);
        assert_eq!(Scoring::for_model(None, 1), Scoring::Sigmoid);
        assert_eq!(
            Scoring::for_model(Some("multi_label_classification"), 4),
            Scoring::Sigmoid
        );
        assert_eq!(
            Scoring::for_model(Some("single_label_classification"), 1),
            Scoring::Sigmoid
        );
        assert_eq!(Scoring::for_model(None, 3), Scoring::Softmax);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let probs = Scoring::Softmax.apply(&[1000.0, 1000.0]);
        assert_eq!(probs, [0.5, 0.5]);
    }
}
