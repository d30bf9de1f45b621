//! Task heads that sit on an encoder's hidden states.

use super::Weights;
use candle_core::{Module, Result, Tensor};

use super::encoder::Encoder;
use super::layers::{self, Activation, Linear, Quantization};
use crate::tokenize::Batch;

/// Where a first-token classification head's weights live.
pub struct HeadNames {
    pub dense: &'static str,
    pub activation: Activation,
    pub out: &'static str,
}

/// dense → activation → projection on the first token: the shape of BERT's pooler +
/// classifier, DistilBERT's pre_classifier + classifier and RoBERTa's classification head.
struct FirstTokenHead {
    dense: Linear,
    activation: Activation,
    out: Linear,
}

impl FirstTokenHead {
    fn load(
        vb: Weights,
        names: &HeadNames,
        hidden: usize,
        outputs: usize,
        quantization: Quantization,
    ) -> Result<Self> {
        Ok(FirstTokenHead {
            dense: layers::linear(hidden, hidden, vb.pp(names.dense), quantization)?,
            activation: names.activation,
            out: layers::linear(hidden, outputs, vb.pp(names.out), quantization)?,
        })
    }

    fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let first = hidden_states.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.activation.forward(&self.dense.forward(&first)?)?;
        self.out.forward(&pooled)
    }
}

/// An encoder with a sequence-classification head.
pub struct SequenceClassifier {
    encoder: Encoder,
    head: FirstTokenHead,
}

impl SequenceClassifier {
    pub(super) fn new(
        encoder: Encoder,
        vb: Weights,
        names: &HeadNames,
        hidden: usize,
        num_labels: usize,
        quantization: Quantization,
    ) -> Result<Self> {
        Ok(SequenceClassifier {
            encoder,
            head: FirstTokenHead::load(vb, names, hidden, num_labels, quantization)?,
        })
    }

    /// `(batch, num_labels)` logits.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        self.head.forward(&self.encoder.forward_first_token(batch)?)
    }
}

/// A projection of every token's hidden state: token classification (`classifier`, one
/// output per label) and extractive QA (`qa_outputs`, start and end logits).
pub struct TokenClassifier {
    encoder: Encoder,
    out: Linear,
}

impl TokenClassifier {
    pub(super) fn new(
        encoder: Encoder,
        vb: Weights,
        hidden: usize,
        outputs: usize,
        quantization: Quantization,
    ) -> Result<Self> {
        Ok(TokenClassifier {
            encoder,
            out: layers::linear(hidden, outputs, vb, quantization)?,
        })
    }

    /// `(batch, seq, outputs)` logits.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        self.out.forward(&self.encoder.forward(batch)?)
    }
}

/// Where a masked-LM head's weights live; the decoder is tied to the word embeddings.
pub struct MlmNames {
    pub dense: &'static str,
    pub norm: &'static str,
    pub bias: &'static str,
    /// An untied decoder weight, used when the checkpoint stores one.
    pub decoder: &'static str,
}

/// An encoder with a masked-LM head: dense → activation → LayerNorm → vocabulary.
pub struct MaskedLm {
    encoder: Encoder,
    dense: Linear,
    activation: Activation,
    norm: candle_nn::LayerNorm,
    decoder: Linear,
}

impl MaskedLm {
    pub(super) fn new(
        encoder: Encoder,
        vb: Weights,
        names: &MlmNames,
        cfg: &super::EncoderConfig,
        activation: Activation,
        norm_eps: f64,
        quantization: Quantization,
    ) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let decoder_weight = if vb.contains_tensor(&format!("{}.weight", names.decoder)) {
            vb.get(
                (cfg.vocab_size, hidden),
                &format!("{}.weight", names.decoder),
            )?
        } else {
            encoder.word_embeddings().clone()
        };
        Ok(MaskedLm {
            dense: layers::linear(hidden, hidden, vb.pp(names.dense), quantization)?,
            activation,
            norm: layers::layer_norm(hidden, norm_eps, vb.pp(names.norm))?,
            decoder: Linear::new(
                decoder_weight,
                Some(vb.get(cfg.vocab_size, names.bias)?),
                quantization,
            )?,
            encoder,
        })
    }

    /// Final hidden states `(batch, seq, hidden)`.
    pub fn hidden(&self, batch: &Batch) -> Result<Tensor> {
        self.encoder.forward(batch)
    }

    /// Vocabulary logits for hidden states `(rows, hidden)` → `(rows, vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let transformed = self.activation.forward(&self.dense.forward(hidden)?)?;
        self.decoder.forward(&self.norm.forward(&transformed)?)
    }
}
