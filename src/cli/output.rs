//! Writing results: JSON lines or human-readable text on stdout; warnings on stderr.

use std::io::{self, IsTerminal, Write};

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

/// stdout, buffered; one record per line.
pub struct RecordWriter {
    out: io::BufWriter<io::Stdout>,
    json: bool,
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    index: usize,
    error: &'a str,
}

impl RecordWriter {
    pub fn new(json: bool) -> Self {
        RecordWriter {
            out: io::BufWriter::new(io::stdout()),
            json,
        }
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
