//! Progress of long byte copies (`backup create`, `backup restore`) on stderr: an indicatif bar
//! (or a spinner while the size is unknown) when stderr is a terminal, else one plain line when
//! a step starts and one when it ends, so logs and pipes get no escape codes.

use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::human_bytes;

/// One command's progress, in steps. Clones share it (the copy may run on another thread).
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    step: Arc<Mutex<Option<Step>>>,
    bytes: Arc<AtomicU64>,
}

struct Step {
    what: String,
    started: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn on_stderr() -> Self {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, step: Arc::new(Mutex::new(None)), bytes: Arc::new(AtomicU64::new(0)) }
    }

    /// Ends the current step (if any) and starts `what`, of `total` bytes when known.
    pub fn step(&self, what: &str, total: Option<u64>) {
        self.end_step();
        self.bytes.store(0, Ordering::Relaxed);
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Step { what: what.to_owned(), started: Instant::now() });
        match &self.bar {
            Some(bar) => {
                bar.reset();
                let style = match total {
                    Some(n) => {
                        bar.set_length(n);
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                             {binary_bytes_per_sec} eta {eta}",
                        )
                    }
                    None => {
                        bar.unset_length();
                        ProgressStyle::with_template(
                            "{spinner} {msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}",
                        )
                    }
                };
                if let Ok(style) = style {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(what.to_owned());
            }
            None => match total {
                Some(n) => eprintln!("{what} ({})", human_bytes(n)),
                None => eprintln!("{what}"),
            },
        }
    }

    /// Counts `n` bytes of the current step.
    pub fn inc(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// `reader`, counting what is read from it.
    pub fn reader<R: Read>(&self, reader: R) -> Counted<R> {
        Counted { inner: reader, progress: self.clone() }
    }

    /// `writer`, counting what is written to it.
    pub fn writer<W: Write>(&self, writer: W) -> Counted<W> {
        Counted { inner: writer, progress: self.clone() }
    }

    fn end_step(&self) {
        let Some(step) = self.step.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let secs = step.started.elapsed().as_secs_f64();
        let bytes = self.bytes.load(Ordering::Relaxed);
        let line = if bytes > 0 {
            format!("{}: {} in {secs:.1} s", step.what, human_bytes(bytes))
        } else {
            format!("{}: done in {secs:.1} s", step.what)
        };
        match &self.bar {
            // The finished step stays on screen above the next one.
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Ends the last step and removes the bar.
    pub fn finish(&self) {
        self.end_step();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The last clone gone (an error path): no bar left behind on the terminal.
        if Arc::strong_count(&self.step) == 1 {
            if let Some(bar) = &self.bar {
                bar.finish_and_clear();
            }
        }
    }
}

/// A reader or writer that counts its bytes into a [`Progress`].
pub struct Counted<T> {
    inner: T,
    progress: Progress,
}

impl<T> Counted<T> {
    /// The wrapped reader or writer.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_readers_and_writers_count_every_byte() {
        let p = Progress { bar: None, step: Arc::new(Mutex::new(None)), bytes: Arc::default() };
        let mut out = Vec::new();
        let mut w = p.writer(&mut out);
        w.write_all(&[7u8; 5000]).unwrap();
        assert_eq!(p.bytes.load(Ordering::Relaxed), 5000);
        let mut r = p.reader(&[1u8; 300][..]);
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).unwrap();
        assert_eq!(p.bytes.load(Ordering::Relaxed), 5300);
    }
}
