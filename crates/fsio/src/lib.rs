//! beatlab's one way to write a file.
//!
//! Every file beatlab writes goes through this crate, so that the same three promises hold
//! everywhere (checkpoints, resolved specs, rendered images, instruction files, cached windows,
//! exported models):
//! - **Atomic**: readers see the old content or the new, never a mix. The bytes go to a temporary
//!   sibling (same folder, so the rename cannot cross file systems), which is fsynced, renamed over
//!   the target, and the folder fsynced so that the rename itself survives a crash.
//! - **Nothing left behind**: if any step fails (a full disk, a closed pipe in the producer), the
//!   temporary file is removed, so a failed write does not keep the disk full.
//! - **Never over what is not ours**: a symlink, a device, a FIFO, a socket or a folder at the
//!   target is refused ([`NotRegular`]) instead of being replaced by the rename (as root,
//!   renaming over `/dev/null` breaks the machine). For paths a user names on the command line,
//!   [`write_output`] behaves as a shell redirection would: it writes through a character device
//!   or FIFO (`-o /dev/stdout`) and through a symlink to the file it points at, and still
//!   refuses folders, block devices and sockets.
//!
//! Files that grow while a run goes (logs, TensorBoard events) are opened with
//! [`open_append`] and [`create_new`], which refuse the same non-regular targets and never
//! follow a symlink.
//!
//! The crate depends on nothing of beatlab's, so every other crate can use it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A write target that is not a regular file (or absent), which beatlab refuses to replace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is {what}; refusing to replace it (only a regular file or a new path can be written there)", path.display())]
pub struct NotRegular {
    /// The path that was to be written.
    pub path: PathBuf,
    /// What is there instead (`a symlink`, `a character device`, ...).
    pub what: &'static str,
}

impl NotRegular {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, self)
    }
}

/// The [`NotRegular`] inside an error returned by this crate, if that is why it failed.
pub fn not_regular(e: &io::Error) -> Option<&NotRegular> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotRegular>())
}

/// What an existing path is, in words, for a file type that is not a regular file.
fn describe(ft: &fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a folder"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Ok when `path` is absent or a regular file (what [`write_atomically`] may replace);
/// a [`NotRegular`] error otherwise. Symlinks are not followed.
pub fn check_replaceable(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(NotRegular {
            path: path.to_path_buf(),
            what: describe(&m.file_type()),
        }
        .into_io()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` atomically (see the crate docs). A non-regular `path` is refused.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomically`], with the content produced by `fill` into a buffered writer (for
/// content too large to hold twice, such as item files).
pub fn write_atomically_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    check_replaceable(path)?;
    let dir = parent_dir(path);
    let tmp = TempFile::create(path, dir)?;
    let mut out = BufWriter::new(&tmp.file);
    fill(&mut out)?;
    out.flush()?;
    drop(out);
    tmp.file.sync_all()?;
    // The target may have changed while we wrote; never rename over a non-regular one.
    check_replaceable(path)?;
    fs::rename(&tmp.path, path)?;
    tmp.disarm();
    sync_dir(dir)
}

/// Writes `bytes` to a path the user named, as a shell redirection would, but atomically where
/// it can: an absent path or regular file is replaced atomically; a symlink is followed to the
/// file it points at (the link stays); a character device or FIFO (`/dev/stdout`, `/dev/null`,
/// a pipe) is written through; a folder, block device or socket is refused.
pub fn write_output(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match output_target(path)? {
        Output::Replace(target) => write_atomically(&target, bytes),
        Output::Through(target) => {
            let mut f = OpenOptions::new().write(true).open(&target)?;
            f.write_all(bytes)?;
            f.flush()
        }
    }
}

/// Checks, before any work is done, that [`write_output`] would accept `path`.
pub fn check_output(path: &Path) -> io::Result<()> {
    output_target(path).map(|_| ())
}

/// How [`write_output`] writes a path.
enum Output {
    /// Atomically replace this (absent or regular) path.
    Replace(PathBuf),
    /// Open this stream-like file for writing and write through it.
    Through(PathBuf),
}

fn output_target(path: &Path) -> io::Result<Output> {
    let mut current = path.to_path_buf();
    // As the kernel does, give up on a chain of more than 40 links.
    for _ in 0..40 {
        let meta = match fs::symlink_metadata(&current) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Output::Replace(current)),
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_file() {
            return Ok(Output::Replace(current));
        }
        if ft.is_char_device() || ft.is_fifo() {
            return Ok(Output::Through(current));
        }
        if ft.is_symlink() {
            let link = fs::read_link(&current)?;
            current = parent_dir(&current).join(link);
            continue;
        }
        return Err(NotRegular {
            path: path.to_path_buf(),
            what: describe(&ft),
        }
        .into_io());
    }
    Err(io::Error::other(format!(
        "{}: too many levels of symbolic links",
        path.display()
    )))
}

/// Opens `path` for appending, creating it if absent. A symlink or any other non-regular file
/// at `path` is refused (the open does not follow links).
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        // No link is followed, and a FIFO without a reader fails at once instead of blocking.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refine(path, e))?;
    ensure_regular(path, &file)?;
    Ok(file)
}

/// Creates `path`, which must not exist yet (a file of a new name, such as a TensorBoard event
/// file). Existing files, symlinks and devices are all refused.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| refine(path, e))
}

/// fsyncs a folder, making renames and creations inside it durable. Where the platform does
/// not allow opening or syncing a folder, there is nothing more to do and this succeeds.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir) {
        Ok(f) => match f.sync_all() {
            Ok(()) => Ok(()),
            // Some file systems refuse fsync on folders; the data itself was synced.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
            Err(e) => Err(e),
        },
        Err(_) => Ok(()),
    }
}

/// The folder a path lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces the "too many links" error of an `O_NOFOLLOW` open of a symlink by [`NotRegular`].
fn refine(path: &Path, e: io::Error) -> io::Error {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => NotRegular {
            path: path.to_path_buf(),
            what: describe(&m.file_type()),
        }
        .into_io(),
        _ => e,
    }
}

fn ensure_regular(path: &Path, file: &File) -> io::Result<()> {
    let ft = file.metadata()?.file_type();
    if ft.is_file() {
        Ok(())
    } else {
        Err(NotRegular {
            path: path.to_path_buf(),
            what: describe(&ft),
        }
        .into_io())
    }
}

/// Removes the temporary files in `dir` (not below it) that a write of a process no longer
/// running left behind: a process killed (`kill -9`, power loss) between creating its temporary
/// sibling and renaming it cannot remove it itself. Returns how many were removed. Temporary
/// files of live processes (another writer at work) are left alone.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = temp_writer_pid(&name.to_string_lossy()) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The writer's process id in a temporary file name `.NAME.tmp-PID-N` made by [`TempFile`].
fn temp_writer_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, suffix) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = suffix.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary sibling of a target; removed when dropped unless [`TempFile::disarm`]ed after the
/// rename.
struct TempFile {
    path: PathBuf,
    file: File,
    armed: bool,
}

impl TempFile {
    fn create(target: &Path, dir: &Path) -> io::Result<Self> {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        // Unique per process and per call: worker threads of one process may write at once.
        let path = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            path,
            file,
            armed: true,
        })
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests;
