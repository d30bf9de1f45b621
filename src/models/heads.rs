//! Task heads that sit on an encoder's hidden states.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::encoder::Encoder;
use super::layers::{self, Activation};
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
    fn load(vb: VarBuilder, names: &HeadNames, hidden: usize, outputs: usize) -> Result<Self> {
        Ok(FirstTokenHead {
            dense: layers::linear(hidden, hidden, vb.pp(names.dense))?,
            activation: names.activation,
            out: layers::linear(hidden, outputs, vb.pp(names.out))?,
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
        vb: VarBuilder,
        names: &HeadNames,
        hidden: usize,
        num_labels: usize,
    ) -> Result<Self> {
        Ok(SequenceClassifier {
            encoder,
            head: FirstTokenHead::load(vb, names, hidden, num_labels)?,
        })
    }

    /// `(batch, num_labels)` logits.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        self.head.forward(&self.encoder.forward(batch)?)
    }
}
