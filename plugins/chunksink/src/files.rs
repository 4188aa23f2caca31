// SPDX-License-Identifier: MPL-2.0
//! The file side of chunksink: mapped chunk files and the I/O thread that creates, seals and
//! deletes them, so the streaming thread only copies samples into memory.
//!
//! The I/O thread (`chunksink-io`) owns the index file and the list of chunk files on disk. The
//! streaming thread sends it jobs through a channel and receives prepared chunks through
//! another; neither side holds a lock while waiting.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use crate::chunk::{ChunkRecord, NamePattern, SealReason};
use crate::wav::WavLayout;
use vcambridge_common::lock;

/// A chunk file's shared read-write mapping, unmapped when the last holder lets go: the chunk
/// (the streaming thread writes through it) and, briefly, a [`Job::Prefault`] on the I/O thread.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a plain address range; only the chunk's owner reads or writes the bytes, the I/O
// thread only asks the kernel to fault pages in (`madvise`), which never touches their content.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once (the last reference).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `MADV_POPULATE_WRITE` is not known to this kernel (before Linux 5.14): stop asking.
static POPULATE_WRITE_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl Mapping {
    /// Fault `[offset, offset + len)` in writable and dirty (`MADV_POPULATE_WRITE`), so the
    /// writer's first store to each page takes no write-protect fault (the filesystem's
    /// `page_mkwrite`, which may wait for its journal). The content does not change.
    /// Best effort: an old kernel or a failure leaves the pages to fault on first write.
    fn populate_write(&self, offset: usize, len: usize) {
        use std::sync::atomic::Ordering;
        const PAGE: usize = 4096;
        let start = offset / PAGE * PAGE;
        let end = (offset + len).min(self.len);
        if start >= end || POPULATE_WRITE_UNSUPPORTED.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: a range inside our live mapping (start is page aligned, end within it); the
        // kernel only faults pages in.
        let r = unsafe {
            libc::madvise(
                self.ptr.add(start).cast(),
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            POPULATE_WRITE_UNSUPPORTED.store(true, Ordering::Relaxed);
        }
    }
}

/// A chunk file created at its full length, mapped shared and read-write; the header for zero
/// samples is already written.
pub struct MappedChunk {
    pub index: u64,
    pub path: PathBuf,
    file: File,
    map: Arc<Mapping>,
    /// Bytes from the start made writable ahead of the writer ([`Self::prefault_ahead`]).
    prefaulted: usize,
    /// How far ahead of the write position to keep pages writable.
    window: usize,
}

impl MappedChunk {
    /// Create `path` (it must not exist), allocate `len` bytes on disk (so a full disk fails
    /// here, not as SIGBUS while writing), map it and write the header.
    ///
    /// `window`: bytes to make writable ahead of the writer (the first ones right here, the
    /// next as it advances: [`Self::prefault_ahead`]).
    pub fn create(
        index: u64,
        path: &Path,
        len: u64,
        layout: &WavLayout,
        window: usize,
    ) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    format!(
                        "chunk file {} already exists (chunksink never overwrites data): pick \
                         an empty directory, move the old chunks away, or keep the directory's \
                         index file so numbering continues after it",
                        path.display()
                    )
                } else {
                    format!("cannot create chunk file {}: {e}", path.display())
                }
            })?;
        let len_usize = usize::try_from(len).map_err(|_| "chunk too large to map".to_string())?;
        // SAFETY: plain posix_fallocate on our own fd.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if r != 0 {
            let e = std::io::Error::from_raw_os_error(r);
            let _ = std::fs::remove_file(path);
            return Err(if r == libc::ENOSPC {
                format!(
                    "disk full: no room for chunk file {} ({len} bytes): {e}",
                    path.display()
                )
            } else {
                format!(
                    "cannot allocate {len} bytes for chunk file {}: {e}",
                    path.display()
                )
            });
        }
        // SAFETY: mapping a regular file we just sized; MAP_POPULATE faults the pages in here,
        // on the I/O thread, instead of on the streaming thread's first write.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(format!("cannot map chunk file {}: {e}", path.display()));
        }
        let map = Arc::new(Mapping {
            ptr: ptr.cast(),
            len: len_usize,
        });
        let prefaulted = window.min(len_usize);
        map.populate_write(0, prefaulted);
        let mut chunk = MappedChunk {
            index,
            path: path.to_path_buf(),
            file,
            map,
            prefaulted,
            window,
        };
        layout.write_header(chunk.bytes_mut(), 0);
        Ok(chunk)
    }

    /// The whole file.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe our live mapping (kept alive by our Arc); &mut self makes
        // this the only borrow of its bytes (a prefault job never reads or writes them).
        unsafe { std::slice::from_raw_parts_mut(self.map.ptr, self.map.len) }
    }

    /// The writer has written up to byte `written`: once it is past half of the writable
    /// window, the job that makes the next `window` bytes writable, for the I/O thread.
    pub fn prefault_ahead(&mut self, written: usize) -> Option<Job> {
        let len = self.map.len;
        if self.prefaulted >= len || written + self.window / 2 < self.prefaulted {
            return None;
        }
        let from = self.prefaulted.max(written);
        let to = (written + self.window).min(len);
        self.prefaulted = to;
        Some(Job::Prefault {
            map: self.map.clone(),
            offset: from,
            len: to - from,
        })
    }

    /// Unmap (once no prefault job holds the mapping), and cut the file to `final_len` when it
    /// holds less than a full chunk.
    fn finish(self, final_len: u64) -> Result<(), String> {
        let MappedChunk {
            path, file, map, ..
        } = self;
        let len = map.len as u64;
        drop(map);
        if final_len < len {
            file.set_len(final_len)
                .map_err(|e| format!("cannot cut {} to {final_len} bytes: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// What the streaming thread asks of the I/O thread.
pub enum Job {
    /// Create chunk `index` (answered on the prepared channel).
    Prepare {
        index: u64,
        len: u64,
        layout: WavLayout,
        /// Bytes to keep writable ahead of the writer.
        window: usize,
    },
    /// Make these bytes of a chunk being written writable before the writer gets there
    /// ([`MappedChunk::prefault_ahead`]).
    Prefault {
        map: Arc<Mapping>,
        offset: usize,
        len: usize,
    },
    /// The chunk is complete: unmap it, cut it to `final_len`, append its index line, delete
    /// chunks that fell out of the ring.
    Seal {
        chunk: MappedChunk,
        final_len: u64,
        record: ChunkRecord,
    },
    /// A chunk that never received a sample: delete it.
    Discard(MappedChunk),
    /// Answer when every earlier job is done.
    Barrier(mpsc::Sender<()>),
}

/// Handle of the I/O thread; dropping it finishes the queued jobs and joins the thread.
pub struct IoWorker {
    jobs: Option<mpsc::Sender<Job>>,
    prepared: mpsc::Receiver<Result<MappedChunk, String>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The first error of a seal (index append, truncate, delete), for the streaming thread.
    pub failure: Arc<Mutex<Option<String>>>,
}

pub struct IoConfig {
    pub directory: PathBuf,
    pub pattern: NamePattern,
    /// Opened for appending (None: no index).
    pub index: Option<File>,
    /// Keep at most this many chunks (0: all).
    pub max_chunks: u32,
}

impl IoConfig {
    pub fn chunk_path(&self, index: u64) -> PathBuf {
        self.directory.join(self.pattern.name(index))
    }
}

impl IoWorker {
    pub fn start(mut config: IoConfig) -> Result<Self, String> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (prep_tx, prep_rx) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let fail = failure.clone();
        let thread = std::thread::Builder::new()
            .name("chunksink-io".into())
            .spawn(move || {
                let mut on_disk: VecDeque<PathBuf> = VecDeque::new();
                let set_fail = |e: String| {
                    let mut f = lock(&fail);
                    if f.is_none() {
                        *f = Some(e);
                    }
                };
                for job in jobs_rx {
                    match job {
                        Job::Prepare {
                            index,
                            len,
                            layout,
                            window,
                        } => {
                            let path = config.chunk_path(index);
                            let r = MappedChunk::create(index, &path, len, &layout, window);
                            if prep_tx.send(r).is_err() {
                                break;
                            }
                        }
                        Job::Prefault { map, offset, len } => map.populate_write(offset, len),
                        Job::Seal {
                            chunk,
                            final_len,
                            record,
                        } => {
                            let path = chunk.path.clone();
                            if let Err(e) = chunk.finish(final_len) {
                                set_fail(e);
                            }
                            if let Some(index) = config.index.as_mut()
                                && let Err(e) = index.write_all(record.to_json_line().as_bytes())
                            {
                                set_fail(format!(
                                    "cannot append to the index file in {}: {e}",
                                    config.directory.display()
                                ));
                            }
                            on_disk.push_back(path);
                            // While the stream continues, the chunk being written counts as one
                            // of the newest N.
                            let continues = matches!(
                                record.reason,
                                SealReason::Full | SealReason::FormatChange
                            );
                            let keep = config.max_chunks as usize;
                            let sealed_kept = if continues {
                                keep.saturating_sub(1)
                            } else {
                                keep
                            };
                            while keep > 0 && on_disk.len() > sealed_kept {
                                if let Some(old) = on_disk.pop_front()
                                    && let Err(e) = std::fs::remove_file(&old)
                                    && e.kind() != std::io::ErrorKind::NotFound
                                {
                                    set_fail(format!(
                                        "cannot delete old chunk {} (max-chunks): {e}",
                                        old.display()
                                    ));
                                }
                            }
                        }
                        Job::Discard(chunk) => {
                            let path = chunk.path.clone();
                            drop(chunk);
                            let _ = std::fs::remove_file(path);
                        }
                        Job::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the chunksink-io thread: {e}"))?;
        Ok(IoWorker {
            jobs: Some(jobs_tx),
            prepared: prep_rx,
            thread: Some(thread),
            failure,
        })
    }

    pub fn send(&self, job: Job) {
        if let Some(j) = &self.jobs {
            // The thread only ends when `jobs` is dropped.
            let _ = j.send(job);
        }
    }

    /// The answer to the oldest Prepare (waits for it).
    pub fn take_prepared(&self) -> Result<MappedChunk, String> {
        self.prepared
            .recv()
            .map_err(|_| "the chunksink-io thread ended".to_string())?
    }

    /// Wait until every job sent so far is done.
    pub fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Barrier(tx));
        let _ = rx.recv();
    }

    pub fn take_failure(&self) -> Option<String> {
        lock(&self.failure).take()
    }
}

impl Drop for IoWorker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A directory the sink can create files in, or what to do about it.
pub fn check_directory(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "directory {} does not exist: create it (mkdir -p {}) or set directory= to an \
                 existing folder",
                dir.display(),
                dir.display()
            ));
        }
        Err(e) => return Err(format!("cannot use directory {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => {
            return Err(format!(
                "{} is not a directory: set directory= to a folder for the chunk files",
                dir.display()
            ));
        }
        Ok(_) => {}
    }
    let probe = dir.join(format!(".chunksink-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "cannot create files in directory {}: {e}; give this user write permission there \
             (or check that it is not mounted read-only), or pick another directory",
            dir.display()
        )),
    }
}
