//! Bounded reads of regular files: the only way this crate opens a data file (writes go through
//! `beatlab_fsio`).
//!
//! A data folder is untrusted input. A header may name `/dev/zero`, a FIFO or `../../etc/x` as
//! its signal file, and a `.hea` may itself be a symlink to a device. Every open here therefore
//! checks the file type first (without opening: opening a FIFO blocks), opens without blocking
//! and without following a final symlink, checks the type again on the open handle (the path
//! may have changed in between), and never reads more than the caller's bound: a regular file's
//! size is known before reading, so a file larger than the bound is refused without reading it.
//!
//! [`resolve_in_folder`] adds the rule for files a record refers to: a plain relative name whose
//! real location (symlinks resolved) is inside the record's own folder.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::error::DataError;

/// The most bytes [`read_regular`] reads from a text or table file (headers, annotation files,
/// CSV tables) unless a caller gives its own bound.
pub const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Why a path was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path exists but is not a regular file (a directory, device, FIFO or socket).
    NotRegular(&'static str),
    /// The file is larger than the reader's bound.
    TooLarge { size: u64, limit: u64 },
    /// A name that leaves the record's folder (absolute, `..`, or a symlink pointing outside).
    OutsideFolder(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotRegular(kind) => write!(f, "not a regular file (it is a {kind})"),
            Refusal::TooLarge { size, limit } => {
                write!(
                    f,
                    "{size} bytes, more than the {limit}-byte limit for this file"
                )
            }
            Refusal::OutsideFolder(why) => write!(f, "{why}"),
        }
    }
}

/// An open regular file and its size at the time it was opened.
#[derive(Debug)]
pub struct RegularFile {
    pub file: File,
    pub size: u64,
}

/// What went wrong opening a file: an I/O error or a refusal.
#[derive(Debug)]
pub enum OpenError {
    Io(std::io::Error),
    Refused(Refusal),
}

impl OpenError {
    /// The error as a [`DataError`] naming `path`.
    pub fn into_data_error(self, path: &Path) -> DataError {
        match self {
            OpenError::Io(source) => DataError::io(path, source),
            OpenError::Refused(refusal) => DataError::FileRefused {
                path: path.to_path_buf(),
                reason: refusal.to_string(),
            },
        }
    }
}

fn kind_name(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_socket() {
            return "socket";
        }
    }
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` for reading if it is a regular file (a symlink to one is followed) of at most
/// `limit` bytes.
pub fn open_regular(path: &Path, limit: u64) -> Result<RegularFile, OpenError> {
    // The open below refuses to follow a final symlink, so a path that ends in one is resolved
    // first (one `lstat` decides; `canonicalize` costs a `readlink` per component).
    let linked = std::fs::symlink_metadata(path).map_err(OpenError::Io)?;
    let (real, before) = if linked.file_type().is_symlink() {
        let real = path.canonicalize().map_err(OpenError::Io)?;
        let before = std::fs::metadata(&real).map_err(OpenError::Io)?;
        (std::borrow::Cow::Owned(real), before)
    } else {
        (std::borrow::Cow::Borrowed(path), linked)
    };
    if !before.is_file() {
        return Err(OpenError::Refused(Refusal::NotRegular(kind_name(
            before.file_type(),
        ))));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    let file = options.open(&*real).map_err(OpenError::Io)?;
    let metadata = file.metadata().map_err(OpenError::Io)?;
    if !metadata.is_file() {
        return Err(OpenError::Refused(Refusal::NotRegular(kind_name(
            metadata.file_type(),
        ))));
    }
    if metadata.len() > limit {
        return Err(OpenError::Refused(Refusal::TooLarge {
            size: metadata.len(),
            limit,
        }));
    }
    Ok(RegularFile {
        file,
        size: metadata.len(),
    })
}

/// Reads a whole regular file of at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let opened = open_regular(path, limit).map_err(|e| e.into_data_error(path))?;
    let mut file = opened.file;
    read_range(&mut file, 0, opened.size).map_err(|e| DataError::io(path, e))
}

/// Reads `len` bytes starting at byte `start`; a file that has shrunk since it was measured is
/// an `UnexpectedEof` error, one that has grown is read only up to `len`.
pub fn read_range(file: &mut File, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::new();
    read_range_into(file, start, len, &mut buffer)?;
    Ok(buffer)
}

/// Like [`read_range`], into `buffer` (cleared first; its allocation is reused).
pub fn read_range_into(
    file: &mut File,
    start: u64,
    len: u64,
    buffer: &mut Vec<u8>,
) -> std::io::Result<()> {
    let capacity = usize::try_from(len).map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    file.seek(SeekFrom::Start(start))?;
    buffer.clear();
    buffer.reserve_exact(capacity);
    file.take(len).read_to_end(buffer)?;
    if buffer.len() != capacity {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The path to open for a file a record names (`name`, relative to the record's folder `dir`), if
/// it stays inside that folder: `name` must be relative without `..`, and with every symlink
/// resolved the file must still lie under `dir` (the path comes back resolved when a symlink
/// was involved). A missing file is an I/O error.
pub fn resolve_in_folder(dir: &Path, name: &str) -> Result<PathBuf, OpenError> {
    let outside = |why: String| Err(OpenError::Refused(Refusal::OutsideFolder(why)));
    let relative = Path::new(name);
    if name.is_empty() {
        return outside("the file name is empty".to_string());
    }
    if relative.is_absolute() {
        return outside("an absolute path; only files in the record's folder are read".into());
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return outside(
            "the name leaves the record's folder (`..`); only files in it are read".into(),
        );
    }
    let folder = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    // A bare file name that is not a symlink is inside the folder whatever the folder's own
    // path resolves to: one `lstat` instead of resolving both paths.
    if relative.components().count() == 1 {
        let joined = folder.join(relative);
        let linked = std::fs::symlink_metadata(&joined).map_err(OpenError::Io)?;
        if !linked.file_type().is_symlink() {
            return Ok(joined);
        }
    }
    let real_dir = folder.canonicalize().map_err(OpenError::Io)?;
    let real = folder
        .join(relative)
        .canonicalize()
        .map_err(OpenError::Io)?;
    if !real.starts_with(&real_dir) {
        return outside(format!(
            "a symbolic link to {}, outside the record's folder",
            real.display()
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_folders_are_refused_without_reading() {
        let refused = |path: &str| match open_regular(Path::new(path), u64::MAX) {
            Err(OpenError::Refused(Refusal::NotRegular(kind))) => kind,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(refused("/dev/zero"), "character device");
        assert_eq!(refused("/"), "directory");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 10]).unwrap();
        assert_eq!(read_regular(&path, 10).unwrap().len(), 10);
        assert!(matches!(
            open_regular(&path, 9),
            Err(OpenError::Refused(Refusal::TooLarge { size: 10, limit: 9 }))
        ));
    }

    #[test]
    fn names_leaving_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("rec");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(dir.path().join("outside.dat"), [0u8; 4]).unwrap();
        std::fs::write(inner.join("in.dat"), [0u8; 4]).unwrap();
        for name in ["../outside.dat", "/etc/passwd", "", "sub/../../outside.dat"] {
            assert!(
                matches!(
                    resolve_in_folder(&inner, name),
                    Err(OpenError::Refused(Refusal::OutsideFolder(_)))
                ),
                "{name}"
            );
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("../outside.dat", inner.join("link.dat")).unwrap();
            std::os::unix::fs::symlink("in.dat", inner.join("ok.dat")).unwrap();
            assert!(matches!(
                resolve_in_folder(&inner, "link.dat"),
                Err(OpenError::Refused(Refusal::OutsideFolder(_)))
            ));
            assert!(resolve_in_folder(&inner, "ok.dat").is_ok());
        }
        assert!(resolve_in_folder(&inner, "in.dat").is_ok());
        assert!(matches!(
            resolve_in_folder(&inner, "missing.dat"),
            Err(OpenError::Io(_))
        ));
    }
}
