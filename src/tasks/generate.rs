//! Causal text generation (`llmx generate`) with GPT-2-family checkpoints.

use std::sync::OnceLock;

use candle_core::{DType, Device};

use super::LoadOptions;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::generation::{self, FinishReason, Flow, GenerationConfig, Overrides, RowLimits};
use crate::hub::{self, ModelRepo};
use crate::models::gpt2::{Gpt2, Gpt2Config, Gpt2Session};
use crate::models::{self, ModelConfig, Quantization, Task};
use crate::tokenize::{DecodeStream, Side, TextEncoder};

pub const DEFAULT_MODEL: &str = "openai-community/gpt2";

/// Tokens the int8 draft proposes per pass of the model in speculative decoding.
pub const DEFAULT_DRAFT_TOKENS: usize = 4;

/// One prompt's continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The new text only (a stop string and what follows it are cut off).
    pub text: String,
    /// The new tokens only (EOS included when it ended generation, as transformers returns it).
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// The prompt was longer than the window and lost its beginning.
    pub prompt_truncated: bool,
    /// Generation stopped at the model window before the token limit.
    pub hit_window: bool,
}

pub struct TextGenerator {
    model: Gpt2,
    /// Where speculative decoding can run: an f32 model on a CPU with the int8 kernels.
    draft: Option<Draft>,
    draft_tokens: usize,
    text: TextEncoder,
    defaults: GenerationConfig,
    device: Device,
    dtype: DType,
}

impl TextGenerator {
    /// Loads a GPT-2-family checkpoint; its generation settings (generation_config.json,
    /// config.json, `task_specific_params["text-generation"]`) become the defaults.
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::Generate)?;
        let gpt2: Gpt2Config = config.parse()?;
        // transformers' text-generation pipeline defaults.
        let pipeline = Overrides {
            max_new_tokens: Some(256),
            do_sample: Some(true),
            temperature: Some(0.7),
            ..Overrides::default()
        };
        let defaults = GenerationConfig::for_checkpoint(
            repo.optional("generation_config.json")?.as_deref(),
            &config.json,
            &config.path,
            Some("text-generation"),
            pipeline,
        )?;
        let pad_id = defaults
            .pad_token_id
            .or_else(|| defaults.eos_token_ids.first().copied());
        // Keep room for at least one new token; a longer prompt keeps its end.
        let window = gpt2.n_positions.saturating_sub(1).max(1);
        let tokenizer = repo.required(hub::TOKENIZER)?;
        let text = move || TextEncoder::load(&tokenizer, window, pad_id, Side::Left);
        let (device, dtype) = options.placement(Precision::HalfSafe)?;
        let (text, model) = super::beside_weights(text, || {
            options.load_weights(&repo, (&device, dtype), |vb| {
                Gpt2::load(vb, &gpt2, options.quantization).map_err(Error::WeightLayout)
            })
        })?;
        // A draft pays only where its layers are int8: Conv1D inputs are n_embd and n_inner.
        let in_dims = [gpt2.n_embd, gpt2.n_inner.unwrap_or(4 * gpt2.n_embd)];
        let drafts = options.quantization == Quantization::None
            && models::fast_int8(&in_dims, dtype, &device);
        let draft = drafts.then(|| Draft {
            repo,
            options: LoadOptions {
                quantization: Quantization::Q8,
                ..options.clone()
            },
            config: gpt2,
            model: OnceLock::new(),
        });
        Ok(TextGenerator {
            model,
            draft,
            draft_tokens: DEFAULT_DRAFT_TOKENS,
            text,
            defaults,
            device,
            dtype,
        })
    }

    /// Sets how many tokens the int8 draft proposes per pass of the model when one prompt is
    /// decoded on the CPU in f32 (0: no speculative decoding). Greedy output stays the
    /// model's own choice, and sampled tokens follow the model's own distribution, whatever
    /// the draft proposes.
    pub fn set_draft_tokens(&mut self, tokens: usize) {
        self.draft_tokens = tokens;
    }

    /// The checkpoint's own generation settings, to be overridden by the caller.
    pub fn defaults(&self) -> &GenerationConfig {
        &self.defaults
    }

    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    pub fn model(&self) -> &Gpt2 {
        &self.model
    }

    /// Starts a decoding session on `prompts` with room for `max_new` tokens; returns it with
    /// the next-token logits `(rows, vocab)`.
    pub fn start(
        &self,
        prompts: &[&[u32]],
        max_new: usize,
    ) -> Result<(Gpt2Session<'_>, candle_core::Tensor)> {
        self.start_on(&self.model, prompts, max_new)
    }

    fn start_on<'a>(
        &self,
        model: &'a Gpt2,
        prompts: &[&[u32]],
        max_new: usize,
    ) -> Result<(Gpt2Session<'a>, candle_core::Tensor)> {
        Ok(Gpt2Session::start(
            model,
            prompts,
            max_new,
            self.text.pad_id(),
            self.dtype,
            &self.device,
        )?)
    }

    /// The most positions (prompt and new tokens) the model can see.
    pub fn window(&self) -> usize {
        self.model.config().n_positions
    }

    /// Continues each prompt as one left-padded batch. `stops` end a continuation where they
    /// appear; `on_text(row, piece)` receives each row's text as it is made (never half a
    /// character, never part of a stop string). One prompt decodes speculatively where it
    /// can ([`TextGenerator::set_draft_tokens`]).
    pub fn generate(
        &self,
        prompts: &[&str],
        settings: &GenerationConfig,
        stops: &[String],
        mut on_text: impl FnMut(usize, &str),
    ) -> Result<Vec<Result<Completion>>> {
        settings.validate().map_err(Error::Generation)?;
        let encoded = self.text.encode_all(prompts);
        let mut jobs: Vec<Job> = Vec::new();
        for (index, encoding) in encoded.iter().enumerate() {
            if let Ok(encoding) = encoding {
                jobs.push(self.job(index, encoding.ids.clone(), encoding.truncated, settings));
            }
        }
        let finished = if jobs.is_empty() {
            Vec::new()
        } else {
            self.run(&mut jobs, settings, stops, &mut on_text)?
        };
        let mut finished = jobs.into_iter().zip(finished);
        Ok(encoded
            .into_iter()
            .map(|encoding| {
                encoding?;
                let (job, generated) = finished
                    .next()
                    .ok_or_else(|| Error::Generation("a prompt got no result".into()))?;
                Ok(Completion {
                    text: job.text,
                    tokens: generated.tokens,
                    finish: generated.finish,
                    prompt_truncated: job.truncated,
                    hit_window: generated.finish == FinishReason::Length && job.limits.window_bound,
                })
            })
            .collect())
    }

    fn job(
        &self,
        row: usize,
        mut ids: Vec<u32>,
        truncated: bool,
        settings: &GenerationConfig,
    ) -> Job {
        // An empty prompt starts from the beginning-of-text token, as transformers does.
        if ids.is_empty() {
            let start = settings
                .bos_token_id
                .or_else(|| settings.eos_token_ids.first().copied())
                .unwrap_or(0);
            ids.push(start);
        }
        let wanted = settings.new_token_limit(ids.len());
        let room = self.window().saturating_sub(ids.len()).max(1);
        Job {
            row,
            limits: RowLimits {
                max_new: wanted.min(room),
                min_new: settings.new_token_minimum(ids.len()),
                window_bound: room < wanted,
            },
            ids,
            truncated,
            stream: DecodeStream::default(),
            text: String::new(),
            released: 0,
            stopped: false,
        }
    }

    fn run(
        &self,
        jobs: &mut [Job],
        settings: &GenerationConfig,
        stops: &[String],
        on_text: &mut impl FnMut(usize, &str),
    ) -> Result<Vec<generation::Generated>> {
        let prompts: Vec<&[u32]> = jobs.iter().map(|job| job.ids.as_slice()).collect();
        let max_new = jobs.iter().map(|job| job.limits.max_new).max().unwrap_or(1);
        let (mut session, logits) = self.start(&prompts, max_new)?;
        let context: Vec<Vec<u32>> = jobs.iter().map(|job| job.ids.clone()).collect();
        let limits: Vec<RowLimits> = jobs.iter().map(|job| job.limits).collect();
        let mut draft = match self.draft_for(&limits)? {
            Some(draft) => Some(self.start_on(draft, &prompts, max_new)?.0),
            None => None,
        };
        let mut failure = None;
        let mut on_token = |row: usize, token| {
            let job = &mut jobs[row];
            match job.accept(&self.text, token, stops, on_text) {
                Ok(flow) => flow,
                Err(e) => {
                    failure.get_or_insert(e);
                    Flow::Stop
                }
            }
        };
        let generated = match &mut draft {
            Some(draft) => vec![generation::generate_with_draft(
                &mut session,
                draft,
                logits,
                &context[0],
                limits[0],
                settings,
                self.draft_tokens,
                |token| on_token(0, token),
            )?],
            None => {
                generation::generate(&mut session, logits, &context, &limits, settings, on_token)?
            }
        };
        if let Some(e) = failure {
            return Err(e);
        }
        for job in jobs.iter_mut() {
            job.finish(&self.text, on_text)?;
        }
        Ok(generated)
    }

    /// The int8 draft when speculative decoding applies: one prompt, more than one token to
    /// make, and a draft possible here. It is loaded on first use.
    fn draft_for(&self, limits: &[RowLimits]) -> Result<Option<&Gpt2>> {
        let Some(draft) = &self.draft else {
            return Ok(None);
        };
        let one_prompt = matches!(limits, [limits] if limits.max_new > 1);
        if self.draft_tokens == 0 || !one_prompt {
            return Ok(None);
        }
        draft.model().map(Some)
    }
}

/// The int8 copy of the checkpoint that proposes tokens in speculative decoding.
struct Draft {
    repo: ModelRepo,
    /// The model's options with q8 quantization.
    options: LoadOptions,
    config: Gpt2Config,
    model: OnceLock<Gpt2>,
}

impl Draft {
    fn model(&self) -> Result<&Gpt2> {
        if let Some(model) = self.model.get() {
            return Ok(model);
        }
        let model = self
            .options
            .load_weights(&self.repo, (&Device::Cpu, DType::F32), |vb| {
                Gpt2::load(vb, &self.config, Quantization::Q8).map_err(Error::WeightLayout)
            })?;
        Ok(self.model.get_or_init(|| model))
    }
}

/// One prompt's progress through generation.
struct Job {
    row: usize,
    ids: Vec<u32>,
    truncated: bool,
    limits: RowLimits,
    stream: DecodeStream,
    /// The completion so far.
    text: String,
    /// Bytes of `text` already handed to the caller.
    released: usize,
    /// A stop string ended the text.
    stopped: bool,
}

impl Job {
    fn accept(
        &mut self,
        encoder: &TextEncoder,
        token: u32,
        stops: &[String],
        on_text: &mut impl FnMut(usize, &str),
    ) -> Result<Flow> {
        let Some(piece) = self.stream.push(encoder, token)? else {
            return Ok(Flow::Continue);
        };
        let searched_from = self.text.len();
        self.text.push_str(&piece);
        if let Some(end) = find_stop(&self.text, searched_from, stops) {
            self.text.truncate(end);
            self.stopped = true;
            self.release(self.text.len(), on_text);
            return Ok(Flow::Stop);
        }
        // Hold back a tail that could still grow into a stop string.
        self.release(
            self.text.len() - pending_stop_prefix(&self.text, stops),
            on_text,
        );
        Ok(Flow::Continue)
    }

    /// Releases what is left once generation ended.
    fn finish(
        &mut self,
        encoder: &TextEncoder,
        on_text: &mut impl FnMut(usize, &str),
    ) -> Result<()> {
        if !self.stopped {
            if let Some(rest) = self.stream.finish(encoder)? {
                self.text.push_str(&rest);
            }
        }
        self.release(self.text.len(), on_text);
        Ok(())
    }

    fn release(&mut self, upto: usize, on_text: &mut impl FnMut(usize, &str)) {
        if upto > self.released {
            on_text(self.row, &self.text[self.released..upto]);
            self.released = upto;
        }
    }
}

/// Where the earliest stop string ends the text, looking only at what `searched_from` added.
fn find_stop(text: &str, searched_from: usize, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|stop| !stop.is_empty())
        .filter_map(|stop| {
            let mut from = searched_from.saturating_sub(stop.len() - 1);
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            text[from..].find(stop.as_str()).map(|at| from + at)
        })
        .min()
}

/// The length of the longest tail of `text` that begins some stop string.
fn pending_stop_prefix(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len())
                .filter(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
                .max()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_are_found_across_pieces() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc\n", 3, &stops), None);
        assert_eq!(find_stop("abc\n\nmore", 4, &stops), Some(3));
        assert_eq!(find_stop("xEN", 2, &stops), None);
        assert_eq!(find_stop("xEND", 3, &stops), Some(1));
        assert_eq!(pending_stop_prefix("xEN", &stops), 2);
        assert_eq!(pending_stop_prefix("abc\n", &stops), 1);
        assert_eq!(pending_stop_prefix("abc", &stops), 0);
    }
}
