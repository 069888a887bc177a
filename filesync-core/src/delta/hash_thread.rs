//! A whole-file BLAKE3 on a thread of its own, for the receiver of a delta.
//!
//! Rebuilding a file reads the old copy, writes the new one and hashes every byte: on
//! one thread the hash is about a third of that work, and the rest has to wait for it.
//! Here the bytes are handed over in order, either in owned buffers (which come back for
//! reuse) or, for bytes copied inside the kernel, as a range of the output file that the
//! thread reads back itself: hashing one chunk overlaps writing the next, on another
//! core when there is one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Buffers in circulation at most: one being filled, the rest queued or being hashed.
const BUFFERS: usize = 4;

/// What the thread reads back at a time from the output file, in bytes.
const READ_BACK: usize = 1 << 20;

/// The next bytes to hash.
enum Chunk {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` bytes of the output file at `offset`, already written.
    Written { offset: u64, len: u64 },
}

/// A BLAKE3 hasher running on its own thread, fed in order ([`HashThread::update`],
/// [`HashThread::update_written`]).
#[derive(Debug)]
pub(super) struct HashThread {
    /// Chunks to hash, in order; `None` once finished.
    todo: Option<SyncSender<Chunk>>,
    /// Buffers hashed, to be filled again.
    spent: Receiver<Vec<u8>>,
    /// Buffers handed out so far (at most [`BUFFERS`]).
    made: usize,
    /// Whether the thread can read back the output ([`HashThread::update_written`]).
    reads_back: bool,
    thread: Option<JoinHandle<io::Result<blake3::Hasher>>>,
}

impl HashThread {
    /// Starts the thread, which continues from `hasher`'s state; with `written`, the
    /// output file open for reading, it can hash ranges of it. Errors: the thread could
    /// not be started.
    pub(super) fn spawn(mut hasher: blake3::Hasher, written: Option<File>) -> io::Result<Self> {
        let (todo, rx) = mpsc::sync_channel::<Chunk>(BUFFERS);
        let (back, spent) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let reads_back = written.is_some();
        let thread = std::thread::Builder::new()
            .name("delta-hash".into())
            .spawn(move || {
                let mut read_buf = Vec::new();
                for chunk in rx {
                    match chunk {
                        Chunk::Bytes(b) => {
                            hasher.update(&b);
                            // The owner may be gone or no longer want buffers: then it
                            // is freed.
                            let _ = back.try_send(b);
                        }
                        Chunk::Written { offset, len } => {
                            let file = written.as_ref().expect("only given a file to read");
                            read_buf.resize(READ_BACK, 0);
                            let mut done = 0;
                            while done < len {
                                let n = (len - done).min(READ_BACK as u64) as usize;
                                file.read_exact_at(&mut read_buf[..n], offset + done)?;
                                hasher.update(&read_buf[..n]);
                                done += n as u64;
                            }
                        }
                    }
                }
                Ok(hasher)
            })?;
        Ok(HashThread {
            todo: Some(todo),
            spent,
            made: 0,
            reads_back,
            thread: Some(thread),
        })
    }

    /// Whether [`HashThread::update_written`] may be used.
    pub(super) fn reads_back(&self) -> bool {
        self.reads_back
    }

    /// A buffer to fill and pass to [`HashThread::update`], with room for `capacity`
    /// bytes: a spent one if any (its old content left in place, so that refilling it
    /// costs no zeroing), a new one while fewer than [`BUFFERS`] exist, otherwise the
    /// next one the thread is done with (waiting for it).
    pub(super) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        let mut buf = match self.spent.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < BUFFERS => {
                self.made += 1;
                Vec::new()
            }
            // Disconnected only if the thread ended early; `finish` reports why.
            Err(_) => self.spent.recv().unwrap_or_default(),
        };
        buf.reserve(capacity.saturating_sub(buf.len()));
        buf
    }

    /// Hashes `chunk` after everything passed before it.
    pub(super) fn update(&mut self, chunk: Vec<u8>) {
        self.send(Chunk::Bytes(chunk));
    }

    /// Hashes `len` bytes of the output file at `offset`, written by now, after
    /// everything passed before them. Only if [`HashThread::reads_back`].
    pub(super) fn update_written(&mut self, offset: u64, len: u64) {
        debug_assert!(self.reads_back);
        self.send(Chunk::Written { offset, len });
    }

    fn send(&mut self, chunk: Chunk) {
        if let Some(todo) = &self.todo {
            // A send fails only if the thread ended early; `finish` reports why.
            let _ = todo.send(chunk);
        }
    }

    /// Waits for the thread to hash everything passed to it and returns the hasher.
    /// Errors: reading the output back failed, or the thread panicked.
    pub(super) fn finish(mut self) -> io::Result<blake3::Hasher> {
        self.todo = None;
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?
    }
}

impl Drop for HashThread {
    fn drop(&mut self) {
        // Abandoned (an error while applying): let the thread drain and end on its own.
        self.todo = None;
    }
}
