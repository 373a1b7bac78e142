//! Where log lines go: the subscriber's set-up (filter, format) and the buffer that takes
//! lines off the request path. What is logged, and at which level, is each module's.
//!
//! A line is appended to a buffer in memory under a short lock; a writer thread writes the
//! buffer out every `FLUSH_EVERY` (or sooner once it holds `FLUSH_AT` bytes), one write for
//! every line gathered meanwhile. Under load that is a few writes a second where a channel of
//! lines cost a write, a wake-up and a spin of the writer thread per line. No line is
//! dropped: a buffer that reaches `LIMIT` is written out by the thread adding to it (the
//! request waits, as it does for a full disk). Lines leave in the order they were added.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest a line waits in memory.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// The writer thread is woken early once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;
/// Past this, the thread adding a line writes the buffer itself.
const LIMIT: usize = 4 * 1024 * 1024;

/// Logs go to stderr (stdout carries the listening line), coloured only on a terminal;
/// `RUST_LOG` filters, `PAYGATE_LOG_FORMAT=json` switches to JSON lines. Lines are written
/// until the returned guard is dropped, which writes out what is left.
pub fn init() -> Flusher {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (lines, flusher) = LineBuffer::start(Box::new(std::io::stderr()));
    // Colours only for a person at a terminal: a file, a pipe or journald gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(lines);
    if std::env::var("PAYGATE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
    flusher
}

type Output = Box<dyn Write + Send>;

struct Shared {
    pending: Mutex<Pending>,
    woken: Condvar,
    /// Held while bytes taken from `pending` are written, and taken before `pending` is let
    /// go: what was taken first is written first.
    output: Mutex<Written>,
}

/// Where lines go, and the buffer last written to it: the two buffers trade places at each
/// write and keep their capacity, so no thread allocates (or frees another thread's) buffer
/// as the log flows.
struct Written {
    to: Output,
    spare: Vec<u8>,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes out what `pending` holds, keeping the order of lines.
    fn write_out(&self, mut pending: MutexGuard<'_, Pending>) {
        if pending.bytes.is_empty() {
            return;
        }
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Written { to, spare } = &mut *output;
        std::mem::swap(&mut pending.bytes, spare);
        drop(pending);
        // Nowhere left to report a failed write of the log itself.
        let _ = to.write_all(spare).and_then(|()| to.flush());
        spare.clear();
    }
}

/// The subscriber's writer: each line goes to the shared buffer.
#[derive(Clone)]
pub struct LineBuffer(Arc<Shared>);

impl LineBuffer {
    /// A buffer in front of `output`, and the guard of its writer thread.
    pub fn start(output: Output) -> (Self, Flusher) {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            woken: Condvar::new(),
            output: Mutex::new(Written {
                to: output,
                spare: Vec::new(),
            }),
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_forever(&writer))
            .ok();
        (Self(shared.clone()), Flusher { shared, thread })
    }
}

fn write_forever(shared: &Shared) {
    let mut pending = shared.pending();
    loop {
        let closed = pending.closed;
        shared.write_out(pending);
        if closed {
            return;
        }
        pending = shared.pending();
        if pending.bytes.len() < FLUSH_AT && !pending.closed {
            pending = match shared.woken.wait_timeout(pending, FLUSH_EVERY) {
                Ok((pending, _)) => pending,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.pending();
        pending.bytes.extend_from_slice(bytes);
        let held = pending.bytes.len();
        if held >= LIMIT {
            self.0.write_out(pending);
        } else if held >= FLUSH_AT && held - bytes.len() < FLUSH_AT {
            self.0.woken.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineBuffer {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Dropped, writes out every line added before and stops the writer thread.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.pending().closed = true;
        self.shared.woken.notify_one();
        match self.thread.take() {
            Some(thread) => {
                let _ = thread.join();
            }
            // No writer thread could be started: write out here.
            None => self.shared.write_out(self.shared.pending()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_once_in_order_in_few_writes() {
        let sink = Sink::default();
        let (lines, flusher) = LineBuffer::start(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut lines = lines.clone();
                std::thread::spawn(move || {
                    for n in 0..5_000 {
                        lines.write_all(format!("{t} {n}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(flusher);
        let writes = sink.0.lock().unwrap();
        let text: Vec<u8> = writes.concat();
        let text = String::from_utf8(text).unwrap();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, n) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(
                n.parse::<usize>().unwrap(),
                next[t],
                "thread {t}'s lines in order"
            );
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line, once");
        assert!(
            writes.len() < 200,
            "{} writes for 20,000 lines",
            writes.len()
        );
    }

    #[test]
    fn a_full_buffer_is_written_by_the_thread_adding_to_it() {
        let sink = Sink::default();
        let (mut lines, flusher) = LineBuffer::start(Box::new(sink.clone()));
        let line = vec![b'x'; LIMIT];
        lines.write_all(&line).unwrap();
        assert_eq!(
            sink.0.lock().unwrap().concat().len(),
            LIMIT,
            "written at once"
        );
        drop(flusher);
    }
}
