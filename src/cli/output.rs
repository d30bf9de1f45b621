//! Writing results: JSON lines or human-readable text on stdout; warnings on stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Serialize;

/// Warnings and notes for stderr, silenced by `--quiet`.
pub struct Reporter {
    quiet: bool,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        Reporter { quiet }
    }

    pub fn warn(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("llmx: warning: {message}");
        }
    }

    /// The closing summary of a batch job: printed even with --quiet, which silences only
    /// progress and warnings, so that logs of unattended runs keep their counts.
    pub fn summary(&self, message: impl std::fmt::Display) {
        eprintln!("llmx: {message}");
    }

    /// Progress bars go to stderr only when a person is watching it.
    pub fn wants_progress(&self) -> bool {
        !self.quiet && io::stderr().is_terminal()
    }
}

/// A warning that may apply to many records: said in full the first time, counted after.
pub struct RepeatedWarning {
    count: usize,
    summary: &'static str,
}

impl RepeatedWarning {
    /// `summary` completes "N inputs ..." in the closing count.
    pub fn new(summary: &'static str) -> Self {
        RepeatedWarning { count: 0, summary }
    }

    pub fn note(&mut self, reporter: &Reporter, first: impl FnOnce() -> String) {
        if self.count == 0 {
            reporter.warn(first());
        }
        self.count += 1;
    }

    pub fn finish(&self, reporter: &Reporter) {
        if self.count > 1 {
            reporter.warn(format!("{} inputs {}", self.count, self.summary));
        }
    }
}

/// Where records go: stdout or `--output FILE`; one record per line, each written whole.
pub struct RecordWriter {
    out: io::BufWriter<Box<dyn Write>>,
    json: bool,
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    index: usize,
    error: &'a str,
}

impl RecordWriter {
    pub fn stdout(json: bool) -> Self {
        RecordWriter {
            out: io::BufWriter::new(Box::new(io::stdout())),
            json,
        }
    }

    /// Records into `path`. With `resume`, the whole records already there are kept (a
    /// partial last line from a killed run is cut off) and the index of the last one is
    /// returned; otherwise the file starts empty.
    pub fn file(path: &Path, json: bool, resume: bool) -> anyhow::Result<(Self, Option<usize>)> {
        use anyhow::Context;
        let mut options = OpenOptions::new();
        options.create(true).read(true).write(true);
        let mut file = options
            .open(path)
            .with_context(|| format!("cannot open {} for output", path.display()))?;
        let last = if resume {
            resume_point(&mut file).with_context(|| format!("cannot resume {}", path.display()))?
        } else {
            file.set_len(0)?;
            None
        };
        file.seek(SeekFrom::End(0))?;
        let writer = RecordWriter {
            out: io::BufWriter::new(Box::new(file)),
            json,
        };
        Ok((writer, last))
    }

    /// Writes one successful record: `record` as JSON, or `human` as text.
    pub fn ok<R: Serialize>(
        &mut self,
        record: &R,
        human: impl FnOnce() -> String,
    ) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, record)?;
            self.out.write_all(b"\n")?;
        } else {
            writeln!(self.out, "{}", human())?;
        }
        // Whole records reach the reader as they are made.
        self.out.flush()
    }

    /// Writes one failed record: `{"index":N,"error":"..."}`, or a line on stderr.
    pub fn error(&mut self, index: usize, error: &str) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, &ErrorRecord { index, error })?;
            self.out.write_all(b"\n")?;
            self.out.flush()
        } else {
            self.out.flush()?;
            eprintln!("llmx: input {index}: {error}");
            Ok(())
        }
    }
}

/// Cuts `file` after its last whole line and returns the `index` of the record on that line.
fn resume_point(file: &mut File) -> anyhow::Result<Option<usize>> {
    let len = file.seek(SeekFrom::End(0))?;
    // Read backwards until the last newline and the one before it are both in view.
    let mut tail = Vec::new();
    let mut start = len;
    let (cut, line_start) = loop {
        let step = (64 * 1024).min(start);
        start -= step;
        let mut block = vec![0; step as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        tail = block;
        let newlines: Vec<usize> = tail
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        match newlines.as_slice() {
            [.., before, last] => break (start + *last as u64 + 1, Some(*before + 1)),
            [last] if start == 0 => break (*last as u64 + 1, Some(0)),
            [] if start == 0 => break (0, None),
            _ => continue,
        }
    };
    file.set_len(cut)?;
    let Some(line_start) = line_start else {
        return Ok(None);
    };
    let line_end = (cut - start) as usize - 1;
    let line = &tail[line_start..line_end];
    let record: serde_json::Value = serde_json::from_slice(line).map_err(|_| {
        anyhow::anyhow!(
            "its last line is not a JSON record; --resume needs a file written with --json"
        )
    })?;
    let index = record
        .get("index")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("its last record has no index"))?;
    Ok(Some(index as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_keeps_whole_records_and_finds_the_last_index() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"{\"index\":0}\n{\"index\":2,\"error\":\"x\"}\n{\"index\":3,\"te")
            .unwrap();
        assert_eq!(resume_point(&mut file).unwrap(), Some(2));
        let mut kept = String::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_string(&mut kept).unwrap();
        assert_eq!(kept, "{\"index\":0}\n{\"index\":2,\"error\":\"x\"}\n");

        let mut empty = tempfile::tempfile().unwrap();
        assert_eq!(resume_point(&mut empty).unwrap(), None);
        let mut partial = tempfile::tempfile().unwrap();
        partial.write_all(b"{\"ind").unwrap();
        assert_eq!(resume_point(&mut partial).unwrap(), None);
        assert_eq!(partial.metadata().unwrap().len(), 0);
    }
}
