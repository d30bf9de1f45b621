//! Inputs (arguments, files, stdin) → ordered records → results, one per record.
//!
//! Lines are read as bytes, so a line that is not UTF-8 becomes a failed record instead of
//! ending the run; input is streamed, never read whole.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// One input and its 0-based position among all inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub index: usize,
    /// The text, or why there is none (e.g. the line is not UTF-8).
    pub text: std::result::Result<String, String>,
}

/// Where inputs come from.
#[derive(Debug, Clone)]
pub enum InputSource {
    /// Command-line arguments, one input each.
    Args(Vec<OsString>),
    /// Files read one input per line, in order; `-` is stdin.
    Files(Vec<PathBuf>),
}

/// Streams records from an [`InputSource`].
pub struct Records {
    args: std::vec::IntoIter<OsString>,
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, Box<dyn BufRead + Send>)>,
    next_index: usize,
    line: Vec<u8>,
    field: Option<String>,
    bytes_read: Arc<AtomicU64>,
}

impl Records {
    pub fn new(source: InputSource) -> Self {
        let (args, files) = match source {
            InputSource::Args(args) => (args, Vec::new()),
            InputSource::Files(files) => (Vec::new(), files),
        };
        Records {
            args: args.into_iter(),
            files: files.into_iter(),
            current: None,
            next_index: 0,
            line: Vec::new(),
            field: None,
            bytes_read: Arc::default(),
        }
    }

    /// Reads each line as a JSON object and takes the text from its string field `name`.
    pub fn with_field(mut self, name: Option<String>) -> Self {
        self.field = name;
        self
    }

    /// Bytes of input files read so far, for progress.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_read)
    }

    fn record(&mut self, text: std::result::Result<String, String>) -> Record {
        let index = self.next_index;
        self.next_index += 1;
        let text = match &self.field {
            Some(field) => text.and_then(|line| json_field(&line, field)),
            None => text,
        };
        Record { index, text }
    }
}

/// The string field `field` of a JSON object line.
pub fn json_field(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("input is not a JSON object: {e}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(format!("field `{field}` is not a string")),
        None => Err(format!("input has no field `{field}`")),
    }
}

/// Which records this process handles: `K/N` takes those whose index is K modulo N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => Err(format!("`{s}` is not a shard K/N with 0 <= K < N")),
        }
    }
}

impl Shard {
    pub fn takes(&self, index: usize) -> bool {
        index % self.count == self.index
    }
}

fn open(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(BufReader::new(io::stdin())));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(Box::new(BufReader::with_capacity(1 << 16, file)))
}

fn not_utf8(bytes: &[u8]) -> String {
    let valid = std::str::from_utf8(bytes)
        .err()
        .map_or(bytes.len(), |e| e.valid_up_to());
    format!("input is not valid UTF-8 (invalid byte at offset {valid})")
}

impl Iterator for Records {
    /// An `Err` is an unreadable input file: fatal, since the records in it are unknown.
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(arg) = self.args.next() {
            let text = arg
                .into_string()
                .map_err(|arg| not_utf8(arg.as_encoded_bytes()));
            return Some(Ok(self.record(text)));
        }
        loop {
            if self.current.is_none() {
                let path = self.files.next()?;
                match open(&path) {
                    Ok(reader) => self.current = Some((path, reader)),
                    Err(e) => return Some(Err(e)),
                }
            }
            let (path, reader) = self.current.as_mut()?;
            self.line.clear();
            match reader.read_until(b'\n', &mut self.line) {
                Ok(0) => self.current = None,
                Ok(n) => {
                    self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    let text = String::from_utf8(line).map_err(|e| not_utf8(e.as_bytes()));
                    return Some(Ok(self.record(text)));
                }
                Err(e) => {
                    let path = path.clone();
                    self.current = None;
                    return Some(Err(Error::io(path, e)));
                }
            }
        }
    }
}

/// Counts of a finished run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub records: usize,
    pub failed: usize,
    /// A stop was requested (SIGINT, SIGTERM) and the run ended between records.
    pub interrupted: bool,
}

/// What the reading stage hands the model stage: a chunk of records with its prepared
/// (tokenized) texts, or the end of the input.
enum Stage<P> {
    Chunk(Vec<Record>, P),
    /// Reading stopped early because a stop was requested.
    Stopped,
}

/// Runs the records through two stages in chunks of `batch_size`: a reading thread reads
/// each chunk and runs `prepare` on its texts (tokenization) while a worker of rayon's pool
/// runs `process` on the chunk before it (the model). Every result goes to `emit` in input
/// order. Records that failed before processing, and whole chunks whose processing failed, are
/// emitted as errors; the run goes on. When `stop` is set, reading ends and the chunks
/// already read are finished, so every record emitted is whole.
///
/// The first `replay` records were already written by the run being resumed: they are
/// processed again, so that every batch holds the same inputs as in that run and gives the
/// same bits, but not emitted.
pub fn run<T: Send, Prepared, R, F, P, E>(
    records: R,
    batch_size: usize,
    mut replay: usize,
    stop: &AtomicBool,
    prepare: F,
    mut process: P,
    mut emit: E,
) -> Result<Summary>
where
    R: Iterator<Item = Result<Record>> + Send,
    Prepared: Send,
    F: Fn(&[&str]) -> Prepared + Sync,
    P: FnMut(&[&str], Prepared) -> Result<Vec<Result<T>>> + Send,
    E: FnMut(&Record, std::result::Result<T, String>) -> io::Result<()>,
{
    fn texts_of(chunk: &[Record]) -> Vec<&str> {
        chunk
            .iter()
            .filter_map(|r| r.text.as_deref().ok())
            .collect()
    }
    std::thread::scope(|scope| {
        // One chunk in flight while the next is read: memory stays bounded.
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Result<Stage<Prepared>>>(1);
        let prepare = &prepare;
        scope.spawn(move || {
            let mut records = records.peekable();
            while records.peek().is_some() {
                if stop.load(Ordering::Relaxed) {
                    let _ = sender.send(Ok(Stage::Stopped));
                    return;
                }
                let mut chunk = Vec::with_capacity(batch_size);
                while chunk.len() < batch_size {
                    match records.next() {
                        Some(Ok(record)) => chunk.push(record),
                        Some(Err(e)) => {
                            let _ = sender.send(Err(e));
                            return;
                        }
                        None => break,
                    }
                }
                let prepared = prepare(&texts_of(&chunk));
                if sender.send(Ok(Stage::Chunk(chunk, prepared))).is_err() {
                    return; // The model stage ended (an output error).
                }
            }
        });

        let mut summary = Summary::default();
        for stage in receiver {
            let (chunk, prepared) = match stage? {
                Stage::Chunk(chunk, prepared) => (chunk, prepared),
                Stage::Stopped => {
                    summary.interrupted = true;
                    break;
                }
            };
            let texts = texts_of(&chunk);
            // On a worker of the thread pool: the model's parallel steps then start on this
            // thread at once, where from outside the pool each waited for a hand-off and a
            // wake-up (~50 per generated token; q8 GPT-2 decoding 8% faster).
            let processed = rayon::scope(|_| process(&texts, prepared));
            let results: Vec<std::result::Result<T, String>> = match processed {
                Ok(results) => results
                    .into_iter()
                    .map(|r| r.map_err(|e| error_chain(&e)))
                    .collect(),
                Err(e) => {
                    let message = error_chain(&e);
                    texts.iter().map(|_| Err(message.clone())).collect()
                }
            };
            let mut results = results.into_iter();
            for record in &chunk {
                let result = match &record.text {
                    Ok(_) => results
                        .next()
                        .unwrap_or_else(|| Err("no result was produced".to_string())),
                    Err(reason) => Err(reason.clone()),
                };
                if replay > 0 {
                    replay -= 1;
                    continue;
                }
                summary.records += 1;
                summary.failed += usize::from(result.is_err());
                emit(record, result).map_err(|e| Error::io("<stdout>", e))?;
            }
        }
        Ok(summary)
    })
}

/// An error and its causes on one line. A cause whose text an outer message already
/// includes is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn preparation_runs_on_its_own_thread_ahead_of_processing() {
        let source = InputSource::Args((0..6).map(|i| i.to_string().into()).collect());
        let main = std::thread::current().id();
        let mut emitted = Vec::new();
        run(
            Records::new(source),
            2,
            0,
            &AtomicBool::new(false),
            |texts| (std::thread::current().id(), texts.len()),
            |texts, (thread, prepared)| {
                assert_ne!(thread, main, "tokenization must not wait for the model");
                assert_eq!(prepared, texts.len());
                Ok(texts.iter().map(|t| Ok(t.to_string())).collect())
            },
            |record, result| {
                emitted.push((record.index, result.unwrap()));
                Ok(())
            },
        )
        .unwrap();
        let expected: Vec<(usize, String)> = (0..6).map(|i| (i, i.to_string())).collect();
        assert_eq!(emitted, expected);
    }

    #[test]
    fn shards_split_by_index() {
        let shard: Shard = "1/3".parse().unwrap();
        let taken: Vec<usize> = (0..7).filter(|&i| shard.takes(i)).collect();
        assert_eq!(taken, [1, 4]);
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn jsonl_fields_are_read_or_reported() {
        assert_eq!(
            json_field(r#"{"text": "hi"}"#, "text"),
            Ok("hi".to_string())
        );
        assert!(json_field(r#"{"other": 1}"#, "text")
            .unwrap_err()
            .contains("no field"));
        assert!(json_field("not json", "text").unwrap_err().contains("JSON"));
    }

    fn texts(source: InputSource) -> Vec<std::result::Result<String, String>> {
        Records::new(source).map(|r| r.unwrap().text).collect()
    }

    #[test]
    fn lines_keep_empty_ones_and_flag_bad_utf8() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"one\r\n\ntwo \xff\nlast").unwrap();
        let got = texts(InputSource::Files(vec![file.path().to_path_buf()]));
        assert_eq!(got[0].as_deref(), Ok("one"));
        assert_eq!(got[1].as_deref(), Ok(""));
        assert!(got[2].as_ref().unwrap_err().contains("UTF-8"));
        assert_eq!(got[3].as_deref(), Ok("last"));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn results_come_back_in_order_with_failures_in_place() {
        let source = InputSource::Args(vec!["a".into(), "bb".into(), "ccc".into()]);
        let mut seen = Vec::new();
        let summary = run(
            Records::new(source),
            2,
            0,
            &AtomicBool::new(false),
            |_| (),
            |texts, ()| {
                Ok(texts
                    .iter()
                    .map(|t| match t.len() {
                        2 => Err(Error::Encode("too even".into())),
                        n => Ok(n),
                    })
                    .collect())
            },
            |record, result| {
                seen.push((record.index, result));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            summary,
            Summary {
                records: 3,
                failed: 1,
                interrupted: false,
            }
        );
        assert_eq!(seen[0], (0, Ok(1)));
        assert!(seen[1].1.is_err());
        assert_eq!(seen[2], (2, Ok(3)));
    }
}
