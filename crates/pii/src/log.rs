//! A `tracing-subscriber` writer that redacts every log line.
//!
//! Redacting at the writer, after formatting, catches everything: message
//! text, every field value, span fields and error chains, whatever layer or
//! format produced them, so a careless `info!(?record)` somewhere in the
//! server cannot leak. A line that is a JSON object (the JSON formatter) is
//! parsed and its string values redacted with field-name context; any other
//! line is redacted as text. Lines are buffered until their newline so a
//! value split across `write` calls is still seen whole.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::{Redactor, default_redactor};

/// Wraps a [`MakeWriter`] so that each formatted line is redacted with the
/// default engine ([`default_redactor`]) before it is written.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    /// Redacts what `inner` would write.
    pub fn new(inner: M) -> RedactingMakeWriter<M> {
        RedactingMakeWriter { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer_for(meta))
    }
}

/// The writer handed out by [`RedactingMakeWriter`]: buffers bytes and
/// writes each complete line redacted; the rest is flushed on `flush` or
/// drop.
#[derive(Debug)]
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    redactor: &'static Redactor,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W) -> RedactingWriter<W> {
        RedactingWriter {
            inner,
            buf: Vec::new(),
            redactor: default_redactor(),
        }
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(line);
        let (body, newline) = match text.strip_suffix('\n') {
            Some(b) => (b, true),
            None => (text.as_ref(), false),
        };
        let mut out = redact_line(self.redactor, body);
        if newline {
            out.push('\n');
        }
        // One write per line: with several threads logging to an
        // unbuffered stream, a separate write of the newline lets another
        // thread's line land between a line and its end.
        self.inner.write_all(out.as_bytes())
    }

    fn drain_lines(&mut self) -> io::Result<()> {
        while let Some(pos) = memchr::memchr(b'\n', &self.buf) {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.write_line(&line)?;
        }
        Ok(())
    }
}

/// Redacts one log line: JSON objects value by value, anything else as
/// text.
pub fn redact_line(redactor: &Redactor, line: &str) -> String {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{')
        && let Ok(mut value) = serde_json::from_str::<serde_json::Value>(trimmed)
    {
        redactor.redact_record(&mut value);
        if let Ok(s) = serde_json::to_string(&value) {
            return s;
        }
    }
    redactor.redact_text(line).into_owned()
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.drain_lines()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain_lines()?;
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.write_line(&rest)?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; the line is lost rather than
        // written unredacted.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lines_are_redacted_whole_even_when_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out);
            w.write_all(b"user bob@exa").unwrap();
            w.write_all(b"mple.com logged in\n{\"password\":\"hunter2\",\"n\":1}\npartial 4539 1488 0343 6467").unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "user [EMAIL] logged in");
        let json: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(json, serde_json::json!({"password": "[SECRET]", "n": 1}));
        assert_eq!(lines[2], "partial [CREDIT_CARD]");
    }

    /// Records each `write` call, to check a line is written whole.
    struct Calls(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl std::io::Write for Calls {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(data.to_vec());
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_line_is_written_in_one_call_with_its_newline() {
        use std::io::Write;
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut w = RedactingWriter::new(Calls(calls.clone()));
        w.write_all(b"{\"fields\":{\"message\":\"one\"}}\n{\"fields\":{\"message\":\"two\"}}\n")
            .unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert!(
            calls
                .iter()
                .all(|c| c.ends_with(b"\n") && c.iter().filter(|b| **b == b'\n').count() == 1)
        );
    }
}
