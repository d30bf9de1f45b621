//! The command-line edge: parse, validate into library calls, write records, map outcomes
//! to exit codes.

mod args;
mod info;
mod output;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{CommandFactory, Parser};
use serde::Serialize;

pub use args::Cli;
use args::{
    ClassifyArgs, Command, DeviceArgs, DownloadArgs, EmbedArgs, FillMaskArgs, GenerateArgs,
    InputArgs, ModelArgs, NerArgs, OutputArgs, QaArgs, SamplingArgs, Seq2SeqArgs, Text2TextArgs,
};
use output::{RecordWriter, RepeatedWarning, Reporter};

use crate::batch::{self, InputSource, Record, Records, Summary};
use crate::generation::{FinishReason, Overrides};
use crate::hub::{self, HubOptions, ModelRepo};
use crate::tasks::classify::{self, Classification, Classifier, LabelScore};
use crate::tasks::embed::{self, EmbedChoices, Embedder, Embedding};
use crate::tasks::fill_mask::{self, Filled, MaskFiller, Prediction};
use crate::tasks::generate::{self as text_generation, Completion, TextGenerator};
use crate::tasks::ner::{self, Entity, Tagged, TokenTagger};
use crate::tasks::qa::{self, Answer, QaSettings, QuestionAnswerer};
use crate::tasks::text2text::{self, Output, Seq2Seq, Seq2SeqTask};
use crate::tasks::LoadOptions;
use crate::tokenize::Batching;

/// A result that may come from an input cut to fit the model, which the batch engine warns
/// about once and then counts.
trait Truncation {
    fn truncated(&self) -> bool;
}

macro_rules! truncation_field {
    ($($result:ty => $field:ident),* $(,)?) => {$(
        impl Truncation for $result {
            fn truncated(&self) -> bool {
                self.$field
            }
        }
    )*};
}

truncation_field!(
    Classification => truncated,
    Embedding => truncated,
    Filled => truncated,
    Tagged => truncated,
    Output => truncated,
    Completion => prompt_truncated,
);

/// How a run ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input succeeded (exit 0).
    Success,
    /// Some inputs failed, each reported (exit 1).
    SomeFailed,
    /// SIGINT or SIGTERM ended a batch job between records (exit 130).
    Interrupted,
}

/// Parses the process arguments and runs the command.
pub fn main() -> anyhow::Result<Outcome> {
    run(Cli::parse())
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Classify(args) => classify(args),
        Command::Generate(args) => generate(args),
        Command::Embed(args) => embed(args),
        Command::FillMask(args) => fill_mask(args),
        Command::Ner(args) => ner(args),
        Command::Qa(args) => question_answering(args),
        Command::Translate(args) => {
            let task = Seq2SeqTask::Translate {
                from: args.from,
                to: args.to,
            };
            seq2seq(args.common, task)
        }
        Command::Summarize(args) => seq2seq(args, Seq2SeqTask::Summarize),
        Command::Text2Text(args) => seq2seq(args, Seq2SeqTask::Text2Text),
        Command::Download(args) => download(args),
        Command::Info(args) => {
            let reporter = Reporter::new(false);
            info::info(
                &args.model,
                &hub_options(&args.revision, args.offline, &reporter),
                args.json,
            )?;
            Ok(Outcome::Success)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "llmx", &mut std::io::stdout());
            Ok(Outcome::Success)
        }
    }
}

fn hub_options(revision: &str, offline: bool, reporter: &Reporter) -> HubOptions {
    let mut options = HubOptions::from_env();
    options.revision = revision.to_string();
    options.offline |= offline;
    options.progress = reporter.wants_progress();
    options
}

fn load_options(model: &ModelArgs, device: &DeviceArgs, reporter: &Reporter) -> LoadOptions {
    LoadOptions {
        hub: hub_options(&model.revision, model.offline, reporter),
        device: device.device,
        dtype: device.dtype,
        quantization: device.quantize,
        weight_cache: crate::tasks::weight_cache_from_env(),
    }
}

/// TEXT arguments, else --input files, else stdin when it is not a terminal.
fn input_source(input: &InputArgs) -> anyhow::Result<InputSource> {
    if !input.texts.is_empty() {
        return Ok(InputSource::Args(input.texts.clone()));
    }
    if !input.input.is_empty() {
        return Ok(InputSource::Files(input.input.clone()));
    }
    if std::io::stdin().is_terminal() {
        bail!("no input: give TEXT arguments, --input FILE, or pipe lines on stdin");
    }
    Ok(InputSource::Files(vec!["-".into()]))
}

/// Batches' worth of inputs that encoder tasks sort by length together.
const BUCKETING_WINDOW: usize = 16;

/// The batching flags.
fn batching(input: &InputArgs) -> Batching {
    Batching {
        max_inputs: input.batch_size as usize,
        max_tokens: input.max_batch_tokens as usize,
    }
}

/// Set by SIGINT or SIGTERM: batch jobs end after the records at hand.
static STOP: AtomicBool = AtomicBool::new(false);

/// A bar over the input's bytes when its size is known, else a record counter; on a
/// terminal only.
fn progress(reporter: &Reporter, source: &InputSource) -> indicatif::ProgressBar {
    if !reporter.wants_progress() {
        return indicatif::ProgressBar::hidden();
    }
    let total: Option<u64> = match source {
        InputSource::Files(files) => files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
            })
            .sum(),
        InputSource::Args(_) => None,
    };
    let (bar, template) = match total {
        Some(bytes) => (
            indicatif::ProgressBar::new(bytes),
            "{bar:30} {percent:>3}%  {msg}  {elapsed} (ETA {eta})",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{spinner} {msg}  {elapsed}",
        ),
    };
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The shared batch engine of every task: reads records (arguments, files, stdin; JSONL
/// fields; a shard), skips what an --output file being resumed already holds, runs
/// `process` over chunks, writes each result with `write` in input order, shows progress,
/// and ends between records on SIGINT/SIGTERM.
fn run_batch<T: Truncation + Send, Prepared: Send>(
    input: &InputArgs,
    output: &OutputArgs,
    reporter: &Reporter,
    bucketed: bool,
    prepare: impl Fn(&[&str]) -> Prepared + Sync,
    process: impl FnMut(&[&str], Prepared) -> crate::Result<Vec<crate::Result<T>>> + Send,
    mut write: impl FnMut(&mut RecordWriter, &Record, &T) -> std::io::Result<()>,
) -> anyhow::Result<Outcome> {
    let source = input_source(input)?;
    let (mut writer, resume_after) = match &output.output {
        Some(path) => RecordWriter::file(path, output.json, output.resume)?,
        None => (RecordWriter::stdout(output.json), None),
    };
    if let Err(e) = ctrlc::set_handler(|| STOP.store(true, Ordering::Relaxed)) {
        reporter.warn(format!("interrupts will not stop cleanly: {e}"));
    }
    let bar = progress(reporter, &source);
    let from_files = matches!(source, InputSource::Files(_));
    let records = Records::new(source).with_field(input.field.clone());
    let bytes_read = records.bytes_read();
    let shard = input.shard;
    let mut records = records
        .filter(|record| match record {
            Ok(record) => shard.is_none_or(|shard| shard.takes(record.index)),
            Err(_) => true,
        })
        .peekable();
    // Bucketing tasks get a window of inputs to sort by length; the others a batch.
    let window = input.batch_size as usize * if bucketed { BUCKETING_WINDOW } else { 1 };
    // Skip what the file being resumed holds, but replay the start of the window the
    // resume point falls in, so every batch matches the first run's.
    let mut skipped = std::collections::VecDeque::with_capacity(window);
    let mut done_before = 0;
    if let Some(last) = resume_after {
        while let Some(record) = records.next_if(|r| r.as_ref().is_ok_and(|r| r.index <= last)) {
            done_before += 1;
            if skipped.len() == window {
                skipped.pop_front();
            }
            skipped.push_back(record);
        }
    }
    let replay = done_before % window;
    let replayed = skipped.len() - replay;
    let records = skipped.into_iter().skip(replayed).chain(records);
    let started = Instant::now();
    let mut done = 0u64;
    let mut truncated = RepeatedWarning::new("were truncated to the model window");
    let summary = batch::run(
        records,
        window,
        replay,
        &STOP,
        prepare,
        process,
        |record, result| {
            done += 1;
            bar.set_position(bytes_read.load(Ordering::Relaxed));
            bar.set_message(format!(
                "{done} records, {:.1}/s",
                done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            ));
            match result {
                Ok(value) => {
                    if value.truncated() {
                        truncated.note(reporter, || {
                            format!(
                                "input {} is longer than the model window and was truncated",
                                record.index
                            )
                        });
                    }
                    write(&mut writer, record, &value)
                }
                Err(error) => writer.error(record.index, &error),
            }
        },
    );
    bar.finish_and_clear();
    truncated.finish(reporter);
    let Summary {
        records,
        failed,
        interrupted,
    } = summary?;
    if from_files {
        reporter.summary(format!(
            "{records} records, {failed} failed, {:.1} s{}",
            started.elapsed().as_secs_f64(),
            if interrupted { " (interrupted)" } else { "" }
        ));
    } else if failed > 0 {
        reporter.warn(format!("{failed} of {records} inputs failed"));
    }
    Ok(if interrupted {
        Outcome::Interrupted
    } else if failed > 0 {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}

#[derive(Serialize)]
struct ClassifyRecord<'a> {
    index: usize,
    text: &'a str,
    label: &'a str,
    score: f32,
    labels: &'a [LabelScore],
}

fn classify(args: ClassifyArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    let model = args
        .model
        .model
        .as_deref()
        .unwrap_or(classify::DEFAULT_MODEL);
    let classifier = Classifier::load(model, &load_options(&args.model, &args.device, &reporter))?
        .with_batching(batching(&args.input));
    let keep = if args.all {
        usize::MAX
    } else {
        args.top_k as usize
    };
    run_batch(
        &args.input,
        &args.output,
        &reporter,
        true,
        |texts| classifier.encode(texts),
        |_, encoded| classifier.classify_encoded(encoded),
        |writer, record, result: &Classification| {
            let labels = &result.labels[..keep.min(result.labels.len())];
            let Some(best) = labels.first() else {
                return writer.error(record.index, "the model has no labels");
            };
            let json = ClassifyRecord {
                index: record.index,
                text: record.text.as_deref().unwrap_or_default(),
                label: &best.label,
                score: best.score,
                labels,
            };
            writer.ok(&json, || {
                labels
                    .iter()
                    .map(|l| format!("{}\t{:.4}", l.label, l.score))
                    .collect::<Vec<_>>()
                    .join("\t")
            })
        },
    )
}

/// The sampling flags as a settings layer. Asking for a temperature, top-k or top-p means
/// sampling; `--greedy` or a temperature of 0 means greedy.
fn sampling_overrides(args: &SamplingArgs) -> Overrides {
    let do_sample = if args.greedy || args.temperature == Some(0.0) {
        Some(false)
    } else if args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some() {
        Some(true)
    } else {
        None
    };
    Overrides {
        do_sample,
        temperature: args.temperature.filter(|&t| t > 0.0),
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..Overrides::default()
    }
}

#[derive(Serialize)]
struct GenerateRecord<'a> {
    index: usize,
    prompt: &'a str,
    completion: &'a str,
    token_ids: &'a [u32],
    finish_reason: FinishReason,
}

fn generate(args: GenerateArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    let model = args
        .model
        .model
        .as_deref()
        .unwrap_or(text_generation::DEFAULT_MODEL);
    let options = load_options(&args.model, &args.device, &reporter);
    let mut generator = TextGenerator::load(model, &options)?;
    if let Some(tokens) = args.draft_tokens {
        generator.set_draft_tokens(tokens);
    }
    let mut settings = generator.defaults().clone();
    settings.apply(Overrides {
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        ..sampling_overrides(&args.sampling)
    });
    if let Err(problem) = settings.validate() {
        bail!(problem);
    }
    // Streamed text goes straight to stdout, one prompt at a time.
    let stream = !args.output.json
        && args.output.output.is_none()
        && (args.stream || std::io::stdout().is_terminal());
    let mut input = args.input;
    if stream {
        input.batch_size = 1;
    }
    let window = generator.window();
    let mut hit_window = RepeatedWarning::new("stopped at the model window");
    let outcome = run_batch(
        &input,
        &args.output,
        &reporter,
        false,
        |_| (),
        |prompts, ()| {
            if !stream {
                return generator.generate(prompts, &settings, &args.stop, |_, _| {});
            }
            let mut out = std::io::stdout().lock();
            let mut broken = None;
            let mut print = |text: &str| {
                if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    broken.get_or_insert(e);
                }
            };
            prompts.iter().for_each(|prompt| print(prompt));
            let results =
                generator.generate(prompts, &settings, &args.stop, |_, piece| print(piece));
            match broken {
                Some(e) => Err(crate::Error::io("<stdout>", e)),
                None => results,
            }
        },
        |writer, record, completion: &Completion| {
            if completion.hit_window {
                hit_window.note(&reporter, || {
                    format!(
                        "input {}: generation stopped at the model window of {window} tokens",
                        record.index
                    )
                });
            }
            let prompt = record.text.as_deref().unwrap_or_default();
            let json = GenerateRecord {
                index: record.index,
                prompt,
                completion: &completion.text,
                token_ids: &completion.tokens,
                finish_reason: completion.finish,
            };
            writer.ok(&json, || {
                if stream {
                    String::new()
                } else {
                    format!("{prompt}{}", completion.text)
                }
            })
        },
    )?;
    hit_window.finish(&reporter);
    Ok(outcome)
}

/// The encoder-decoder flags as a settings layer. `--max-length` alone means that limit,
/// so it clears a default `max_new_tokens` that would otherwise win.
fn search_overrides(args: &Seq2SeqArgs, sampling: &SamplingArgs) -> Overrides {
    Overrides {
        num_beams: args.num_beams,
        max_length: args.max_length,
        max_new_tokens: args.max_new_tokens,
        min_length: args.min_length,
        min_new_tokens: args.min_new_tokens,
        length_penalty: args.length_penalty,
        no_repeat_ngram_size: args.no_repeat_ngram_size,
        early_stopping: args.early_stopping,
        ..sampling_overrides(sampling)
    }
}

#[derive(Serialize)]
struct Text2TextRecord<'a> {
    index: usize,
    text: &'a str,
    output: &'a str,
    token_ids: &'a [u32],
}

fn seq2seq(args: Text2TextArgs, task: Seq2SeqTask) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    let model = args
        .model
        .model
        .as_deref()
        .unwrap_or(text2text::DEFAULT_MODEL);
    let options = load_options(&args.model, &args.device, &reporter);
    let seq2seq = Seq2Seq::load(model, &options)?;
    let (mut settings, prefix) = seq2seq.settings_for(&task)?;
    if args.search.max_length.is_some() && args.search.max_new_tokens.is_none() {
        settings.max_new_tokens = None;
    }
    settings.apply(search_overrides(&args.search, &args.sampling));
    if let Err(problem) = settings.validate() {
        bail!(problem);
    }
    run_batch(
        &args.input,
        &args.output,
        &reporter,
        false,
        |_| (),
        |texts, ()| seq2seq.generate(texts, &settings, &prefix),
        |writer, record, output: &Output| {
            let json = Text2TextRecord {
                index: record.index,
                text: record.text.as_deref().unwrap_or_default(),
                output: &output.text,
                token_ids: &output.tokens,
            };
            writer.ok(&json, || output.text.clone())
        },
    )
}

#[derive(Serialize)]
struct EmbedRecord<'a> {
    index: usize,
    text: &'a str,
    embedding: &'a [f32],
}

fn embed(args: EmbedArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    let model = args.model.model.as_deref().unwrap_or(embed::DEFAULT_MODEL);
    let choices = EmbedChoices {
        pooling: args.pooling,
        normalize: args.normalize.then_some(true),
    };
    let embedder = Embedder::load(
        model,
        &load_options(&args.model, &args.device, &reporter),
        &choices,
    )?
    .with_batching(batching(&args.input));
    run_batch(
        &args.input,
        &args.output,
        &reporter,
        true,
        |texts| embedder.encode(texts),
        |_, encoded| embedder.embed_encoded(encoded),
        |writer, record, embedding: &Embedding| {
            let json = EmbedRecord {
                index: record.index,
                text: record.text.as_deref().unwrap_or_default(),
                embedding: &embedding.vector,
            };
            writer.ok(&json, || {
                let values: Vec<String> = embedding.vector.iter().map(|v| v.to_string()).collect();
                values.join(" ")
            })
        },
    )
}

/// One mask's candidates as a flat list, several masks' as a list per mask (as transformers).
#[derive(Serialize)]
#[serde(untagged)]
enum Predictions<'a> {
    One(&'a [Prediction]),
    PerMask(&'a [Vec<Prediction>]),
}

#[derive(Serialize)]
struct FillMaskRecord<'a> {
    index: usize,
    text: &'a str,
    predictions: Predictions<'a>,
}

fn fill_mask(args: FillMaskArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    let model = args
        .model
        .model
        .as_deref()
        .unwrap_or(fill_mask::DEFAULT_MODEL);
    let filler = MaskFiller::load(model, &load_options(&args.model, &args.device, &reporter))?
        .with_batching(batching(&args.input));
    let targets = if args.targets.is_empty() {
        None
    } else {
        let (ids, warnings) = filler.target_ids(&args.targets)?;
        warnings.iter().for_each(|w| reporter.warn(w));
        Some(ids)
    };
    run_batch(
        &args.input,
        &args.output,
        &reporter,
        true,
        |texts| filler.encode(texts),
        |_, encoded| filler.fill_encoded(encoded, args.top_k as usize, targets.as_deref()),
        |writer, record, filled: &Filled| {
            let predictions = match filled.masks.as_slice() {
                [one] => Predictions::One(one),
                many => Predictions::PerMask(many),
            };
            let json = FillMaskRecord {
                index: record.index,
                text: record.text.as_deref().unwrap_or_default(),
                predictions,
            };
            writer.ok(&json, || {
                filled
                    .masks
                    .iter()
                    .map(|mask| {
                        mask.iter()
                            .map(|p| format!("{}\t{:.4}", p.token_str, p.score))
                            .collect::<Vec<_>>()
                            .join("\t")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        },
    )
}

#[derive(Serialize)]
struct NerRecord<'a> {
    index: usize,
    text: &'a str,
    entities: &'a [Entity],
}

fn ner(args: NerArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    let model = args.model.model.as_deref().unwrap_or(ner::DEFAULT_MODEL);
    let tagger = TokenTagger::load(model, &load_options(&args.model, &args.device, &reporter))?
        .with_batching(batching(&args.input));
    run_batch(
        &args.input,
        &args.output,
        &reporter,
        true,
        |texts| tagger.encode(texts),
        |texts, encoded| tagger.tag_encoded(texts, encoded, args.aggregation),
        |writer, record, tagged: &Tagged| {
            let json = NerRecord {
                index: record.index,
                text: record.text.as_deref().unwrap_or_default(),
                entities: &tagged.entities,
            };
            writer.ok(&json, || {
                tagged
                    .entities
                    .iter()
                    .map(|e| {
                        let label = e
                            .entity_group
                            .as_deref()
                            .or(e.entity.as_deref())
                            .unwrap_or_default();
                        format!(
                            "{}\t{label}\t{:.4}\t{}-{}",
                            e.word.trim(),
                            e.score,
                            e.start,
                            e.end
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        },
    )
}

#[derive(Serialize)]
struct QaRecord<'a> {
    index: usize,
    question: &'a str,
    answer: &'a str,
    score: f64,
    start: usize,
    end: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    answers: Option<&'a [Answer]>,
}

/// One QA input: the question and the answers found.
struct Answered {
    question: String,
    answers: Vec<Answer>,
}

/// Long contexts are split into windows, never cut.
impl Truncation for Answered {
    fn truncated(&self) -> bool {
        false
    }
}

fn question_answering(mut args: QaArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.output.quiet);
    if let (Some(question), Some(context)) = (&args.question, &args.context) {
        let record = serde_json::json!({"question": question, "context": context});
        args.input.texts = vec![record.to_string().into()];
    }
    let model = args.model.model.as_deref().unwrap_or(qa::DEFAULT_MODEL);
    let answerer =
        QuestionAnswerer::load(model, &load_options(&args.model, &args.device, &reporter))?;
    let settings = QaSettings {
        max_seq_len: Some(args.max_seq_len),
        doc_stride: args.doc_stride,
        max_answer_len: args.max_answer_len as usize,
        top_k: args.top_k as usize,
        handle_impossible_answer: args.handle_impossible_answer,
    };
    let answer = |line: &str| -> crate::Result<Answered> {
        let field = |name| batch::json_field(line, name).map_err(crate::Error::Input);
        let (question, context) = (field("question")?, field("context")?);
        let answers = answerer.answer(&question, &context, &settings)?;
        Ok(Answered { question, answers })
    };
    run_batch(
        &args.input,
        &args.output,
        &reporter,
        false,
        |_| (),
        |lines, ()| Ok(lines.iter().map(|line| answer(line)).collect()),
        |writer, record, answered: &Answered| {
            let best = answered.answers.first();
            let json = QaRecord {
                index: record.index,
                question: &answered.question,
                answer: best.map_or("", |a| a.answer.as_str()),
                score: best.map_or(0.0, |a| a.score),
                start: best.map_or(0, |a| a.start),
                end: best.map_or(0, |a| a.end),
                answers: (settings.top_k > 1).then_some(answered.answers.as_slice()),
            };
            writer.ok(&json, || {
                answered
                    .answers
                    .iter()
                    .map(|a| format!("{}\t{:.4}\t{}-{}", a.answer, a.score, a.start, a.end))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        },
    )
}

fn download(args: DownloadArgs) -> anyhow::Result<Outcome> {
    let reporter = Reporter::new(args.quiet);
    let options = hub_options(&args.revision, false, &reporter);
    if options.offline {
        bail!("cannot download while offline (HF_HUB_OFFLINE is set)");
    }
    let repo = ModelRepo::open(&args.model, &options)?;
    let config = repo.required(hub::CONFIG)?;
    repo.required(hub::TOKENIZER)?;
    for optional in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        repo.optional(optional)?;
    }
    repo.weights()?;
    let folder = config.parent().unwrap_or(&config);
    println!("{}", folder.display());
    Ok(Outcome::Success)
}
