//! Encoder-decoder generation with T5 checkpoints: `llmx text2text`, `translate` and
//! `summarize`, with the settings transformers' pipelines would use.

use candle_core::{DType, Device, Tensor};

use super::LoadOptions;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::generation::{self, FinishReason, Flow, GenerationConfig, Overrides, RowLimits};
use crate::hub::{self, ModelRepo};
use crate::models::t5::{T5Config, T5Session, T5};
use crate::models::{ModelConfig, Task};
use crate::tokenize::{low_padding_groups, Batch, Encoding, Side, TextEncoder};

pub const DEFAULT_MODEL: &str = "google-t5/t5-small";

/// How much padding (as a fraction of real tokens) an encoder group may carry.
const MAX_ENCODER_PADDING: f64 = 0.25;

/// Which pipeline's defaults apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seq2SeqTask {
    /// The input as given.
    Text2Text,
    /// `task_specific_params["translation_{from}_to_{to}"]`.
    Translate { from: String, to: String },
    /// `task_specific_params["summarization"]`.
    Summarize,
}

impl Seq2SeqTask {
    fn key(&self) -> String {
        match self {
            Seq2SeqTask::Text2Text => "text2text-generation".to_string(),
            Seq2SeqTask::Translate { from, to } => format!("translation_{from}_to_{to}"),
            Seq2SeqTask::Summarize => "summarization".to_string(),
        }
    }
}

/// One input's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub text: String,
    /// The generated tokens, without the decoder start token (EOS included when it ended
    /// the output).
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// The input was longer than the tokenizer's limit and was cut.
    pub truncated: bool,
}

pub struct Seq2Seq {
    model: T5,
    text: TextEncoder,
    config: ModelConfig,
    generation_config: Option<std::path::PathBuf>,
    device: Device,
}

impl Seq2Seq {
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::Text2Text)?;
        let t5: T5Config = config.parse()?;
        // T5 has no position table; the tokenizer's limit (512 for t5-small) is the window.
        let window = super::tokenizer_max_length(&repo)?.unwrap_or(usize::MAX);
        let tokenizer = repo.required(hub::TOKENIZER)?;
        let pad_id = t5.pad_token_id;
        let text = move || TextEncoder::load(&tokenizer, window, Some(pad_id), Side::Right);
        let generation_config = repo.optional("generation_config.json")?;
        // T5 overflows in f16: `auto` never picks it.
        let (device, dtype) = options.placement(Precision::NoF16)?;
        let (text, model) = super::beside_weights(text, || {
            options.load_weights(&repo, (&device, dtype), |vb| {
                T5::load(vb, &t5, options.quantization).map_err(Error::WeightLayout)
            })
        })?;
        Ok(Seq2Seq {
            model,
            text,
            config,
            generation_config,
            device,
        })
    }

    pub fn model(&self) -> &T5 {
        &self.model
    }

    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// The settings and input prefix transformers' pipeline for `task` would use: its
    /// defaults (`max_new_tokens=256, num_beams=4`), the checkpoint's generation settings, then
    /// `task_specific_params`. A translation pair the checkpoint lacks is an error naming
    /// the pairs it has.
    pub fn settings_for(&self, task: &Seq2SeqTask) -> Result<(GenerationConfig, String)> {
        let key = task.key();
        let params = self
            .config
            .json
            .get("task_specific_params")
            .and_then(|p| p.get(&key));
        if let Seq2SeqTask::Translate { from, to } = task {
            if params.is_none() {
                return Err(Error::Generation(format!(
                    "this checkpoint has no translation from `{from}` to `{to}`; it has {}",
                    self.translation_pairs().join(", ")
                )));
            }
        }
        let pipeline = Overrides {
            max_new_tokens: Some(256),
            num_beams: Some(4),
            ..Overrides::default()
        };
        let mut settings = GenerationConfig::for_checkpoint(
            self.generation_config.as_deref(),
            &self.config.json,
            &self.config.path,
            Some(&key),
            pipeline,
        )?;
        let cfg = self.model.config();
        if settings.eos_token_ids.is_empty() {
            settings.eos_token_ids = vec![cfg.eos_token_id];
        }
        settings.pad_token_id = settings.pad_token_id.or(Some(cfg.pad_token_id));
        settings.decoder_start_token_id = settings
            .decoder_start_token_id
            .or(Some(cfg.decoder_start()));
        let prefix = params
            .and_then(|p| p.get("prefix"))
            .and_then(|p| p.as_str())
            .unwrap_or_default()
            .to_string();
        Ok((settings, prefix))
    }

    /// The `from_to` pairs of the checkpoint's translation parameters.
    pub fn translation_pairs(&self) -> Vec<String> {
        let pairs: Vec<String> = self
            .config
            .json
            .get("task_specific_params")
            .and_then(|p| p.as_object())
            .map(|params| {
                params
                    .keys()
                    .filter_map(|key| key.strip_prefix("translation_"))
                    .map(|pair| pair.replace("_to_", " → "))
                    .collect()
            })
            .unwrap_or_default();
        if pairs.is_empty() {
            vec!["none (use `llmx text2text` with the model's own prompt)".to_string()]
        } else {
            pairs
        }
    }

    /// Generates for each text (with `prefix` put in front) as one padded batch; beam search
    /// when `settings.num_beams > 1`.
    pub fn generate(
        &self,
        texts: &[&str],
        settings: &GenerationConfig,
        prefix: &str,
    ) -> Result<Vec<Result<Output>>> {
        settings.validate().map_err(Error::Generation)?;
        let prefixed: Vec<String> = texts.iter().map(|text| format!("{prefix}{text}")).collect();
        let prefixed: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        let encoded = self.text.encode_all(&prefixed);
        let ok: Vec<&Encoding> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
        let mut generated = if ok.is_empty() {
            Vec::new()
        } else {
            self.run(&ok, settings)?
        }
        .into_iter();
        encoded
            .iter()
            .map(|encoding| {
                let encoding = match encoding {
                    Ok(encoding) => encoding,
                    Err(e) => return Ok(Err(Error::Encode(e.to_string()))),
                };
                let generated = generated
                    .next()
                    .ok_or_else(|| Error::Generation("an input got no result".into()))?;
                let text = self.text.decode(&generated.tokens)?;
                Ok(Ok(Output {
                    text,
                    tokens: generated.tokens,
                    finish: generated.finish,
                    truncated: encoding.truncated,
                }))
            })
            .collect()
    }

    fn run(
        &self,
        encodings: &[&Encoding],
        settings: &GenerationConfig,
    ) -> Result<Vec<generation::Generated>> {
        let start = settings.decoder_start_token_id.unwrap_or(0);
        let beams = settings.num_beams.max(1);
        let limits = RowLimits {
            max_new: settings.new_token_limit(1),
            min_new: settings.new_token_minimum(1),
            window_bound: false,
        };
        // The encoder (and cross-attention) run on groups of similar length, the rest of
        // the decoder on every row at once; inputs go in group order and come back after.
        let lengths: Vec<usize> = encodings.iter().map(|e| e.ids.len()).collect();
        let groups = low_padding_groups(&lengths, MAX_ENCODER_PADDING);
        let batches = groups
            .iter()
            .map(|group| {
                let members: Vec<&Encoding> = group.iter().map(|&i| encodings[i]).collect();
                let batch = Batch::new(&members, self.text.pad_id(), Side::Right, &self.device)?;
                Ok((batch.input_ids, batch.attention_mask))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut session =
            T5Session::start_bucketed(&self.model, &batches, beams, limits.max_new + 1)?;
        let rows = encodings.len() * beams;
        let first = generation::Decoder::step(&mut session, &vec![start; rows])?;
        let contexts = vec![vec![start]; encodings.len()];
        let limits = vec![limits; encodings.len()];
        let generated = if beams > 1 {
            generation::beam_search(&mut session, first, &contexts, &limits, settings)?
        } else {
            generation::generate(&mut session, first, &contexts, &limits, settings, |_, _| {
                Flow::Continue
            })?
        };
        let mut in_input_order: Vec<Option<generation::Generated>> = vec![None; encodings.len()];
        for (&input, result) in groups.iter().flatten().zip(generated) {
            in_input_order[input] = Some(result);
        }
        in_input_order
            .into_iter()
            .map(|result| result.ok_or_else(|| Error::Generation("an input got no result".into())))
            .collect()
    }

    /// Decoder logits `(rows, len, vocab)` for teacher-forced `decoder_ids` after encoding
    /// `text`, fed all at once or one token at a time (for cached == uncached checks).
    pub fn decoder_logits(
        &self,
        text: &str,
        decoder_ids: &[u32],
        one_at_a_time: bool,
    ) -> Result<Tensor> {
        let encoding = self.text.encode(text)?;
        let batch = Batch::new(&[&encoding], self.text.pad_id(), Side::Right, &self.device)?;
        let mut session = T5Session::start(
            &self.model,
            &batch.input_ids,
            &batch.attention_mask,
            1,
            decoder_ids.len(),
        )?;
        let ids = Tensor::from_slice(decoder_ids, (1, decoder_ids.len()), &self.device)?;
        if !one_at_a_time {
            return Ok(session.forward(&ids)?.to_dtype(DType::F32)?);
        }
        let steps = (0..decoder_ids.len())
            .map(|i| session.forward(&ids.narrow(1, i, 1)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&steps, 1)?.to_dtype(DType::F32)?)
    }
}
