//! Log lines held back on one thread while the runner takes a message in.
//!
//! Every line written to the supervisor's log wakes the thread that writes the file
//! (`tracing-appender`'s worker). On a small machine the woken thread runs at once, on the
//! core the runner is on, so a line logged on the way to a restart ("exited unexpectedly")
//! used to delay the new process by the appender's whole write (0.1–0.5 ms measured here).
//! While a [`Hold`] lives, lines made on its thread are kept in a thread-local buffer and go to
//! their writers together when it drops: after the turn's node processes have started, and
//! in one wake-up instead of one per line.
//!
//! The hold is per thread and the runner's turn never awaits, so no other task's lines are
//! caught in it; a panic drops the hold while unwinding, which still writes what it kept.

use std::cell::RefCell;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

/// Where held lines go when the hold ends: one per wrapped writer.
type Flush = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The lines a hold keeps: per writer, in order.
type Kept = Vec<(Flush, Vec<u8>)>;

thread_local! {
    /// `Some` while a hold lives on this thread.
    static HELD: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Keeps this thread's log lines until dropped. Not `Send`: it must drop on its thread.
#[must_use = "lines are held only while the hold lives"]
#[derive(Debug)]
pub struct Hold {
    _thread_bound: PhantomData<*const ()>,
}

/// Holds this thread's log lines until the returned hold drops; `None` when a hold already
/// lives on this thread (the outer one writes them).
pub fn hold() -> Option<Hold> {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_some() {
            return None;
        }
        *h = Some(Vec::new());
        Some(Hold { _thread_bound: PhantomData })
    })
}

impl Drop for Hold {
    fn drop(&mut self) {
        let kept = HELD.with(|h| h.borrow_mut().take()).unwrap_or_default();
        for (flush, bytes) in kept {
            flush(&bytes);
        }
    }
}

/// A [`MakeWriter`] whose lines wait while a [`Hold`] lives on the writing thread.
pub struct Holding {
    inner: Flush,
}

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holding")
    }
}

impl Holding {
    /// Wraps `inner`, which gets each line (or each hold's lines) in one `write_all`.
    pub fn new<M>(inner: M) -> Self
    where
        M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        let inner: Flush = Arc::new(move |bytes: &[u8]| {
            // As tracing-subscriber does with a writer's error: nowhere to report it.
            let _ = inner.make_writer().write_all(bytes);
        });
        Self { inner }
    }
}

impl<'a> MakeWriter<'a> for Holding {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { to: &self.inner, buf: Vec::new() }
    }
}

/// One event's line: written (or held) whole when dropped.
pub struct Line<'a> {
    to: &'a Flush,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        let line = HELD.with(|h| {
            let mut h = h.borrow_mut();
            let Some(kept) = h.as_mut() else { return Some(line) };
            match kept.iter_mut().find(|(f, _)| Arc::ptr_eq(f, self.to)) {
                Some((_, bytes)) => bytes.extend_from_slice(&line),
                None => kept.push((Arc::clone(self.to), line)),
            }
            None
        });
        if let Some(line) = line {
            (self.to)(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    fn line(h: &Holding, s: &str) {
        let mut w = h.make_writer();
        w.write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn lines_wait_for_the_hold_and_go_in_one_write_in_order() {
        let sink = Sink::default();
        let h = Holding::new(sink.clone());
        line(&h, "before\n");
        assert_eq!(sink.0.lock().unwrap().len(), 1, "no hold: written at once");
        {
            let _hold = hold().expect("no hold yet");
            assert!(hold().is_none(), "one hold per thread");
            line(&h, "a\n");
            line(&h, "b\n");
            // Another thread is not held.
            let h2 = Holding::new(sink.clone());
            std::thread::scope(|s| {
                s.spawn(|| line(&h2, "other thread\n"));
            });
            let got = sink.0.lock().unwrap().clone();
            assert_eq!(got, vec![b"before\n".to_vec(), b"other thread\n".to_vec()]);
        }
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2], b"a\nb\n");
        line(&h, "after\n");
        assert_eq!(sink.0.lock().unwrap().last().unwrap(), b"after\n");
    }

    #[test]
    fn a_panic_while_held_still_writes_the_held_lines() {
        let sink = Sink::default();
        let h = Arc::new(Holding::new(sink.clone()));
        let h2 = Arc::clone(&h);
        let r = std::thread::spawn(move || {
            let _hold = hold();
            line(&h2, "last words\n");
            panic!("the runner fails");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(sink.0.lock().unwrap().clone(), vec![b"last words\n".to_vec()]);
    }
}
