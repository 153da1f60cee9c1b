//! The error type of every reader in this crate (WFDB, MAT v4, annotations, PTB-XL, LUDB,
//! directory sources). Each variant names the file or record and, where one exists, the header
//! line, lead, column or byte offset, and says what was expected, so a user can find the fault
//! in the data without a debugger.

use std::path::PathBuf;

/// Everything that can go wrong while reading ECG data from disk.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be opened, listed or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A signal file named by a WFDB header could not be opened or read.
    #[error(
        "record {record}: lead {lead} (header line {line}): cannot read signal file {}: {source}",
        path.display()
    )]
    SignalFile {
        record: String,
        lead: String,
        line: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file was not opened because it is not a regular file or is larger than its reader's
    /// bound (a header that is a symlink to `/dev/zero`, a FIFO, a 10 GB "annotation" file).
    #[error("{}: refused: {reason}", path.display())]
    FileRefused { path: PathBuf, reason: String },

    /// A WFDB header names a signal file the reader will not open: outside the record's folder
    /// (absolute, `..`, a symlink pointing out) or not a regular file (a device, a FIFO).
    #[error(
        "record {record}: lead {lead} (header line {line}): signal file `{name}` refused: {reason}"
    )]
    SignalFileRefused {
        record: String,
        lead: String,
        line: usize,
        name: String,
        reason: String,
    },

    /// A record's samples would exceed the memory bound of a read.
    #[error(
        "record {record}: header {}: {samples} samples over all signals, more than the limit of \
         {limit} samples one record may hold",
        path.display()
    )]
    RecordTooLarge {
        record: String,
        path: PathBuf,
        samples: u64,
        limit: u64,
    },

    /// One field of a WFDB header line could not be parsed or lies outside its sane range.
    #[error(
        "record {record}: header {} line {line}: field `{field}`: expected {expected}, found `{found}`",
        path.display()
    )]
    HeaderField {
        record: String,
        path: PathBuf,
        /// 1-based line number in the header file.
        line: usize,
        field: &'static str,
        expected: String,
        found: String,
    },

    /// A WFDB header is structurally wrong (missing record line, wrong number of signal lines,
    /// an unexpected line, inconsistent signal groups).
    #[error("record {record}: header {} line {line}: {message}", path.display())]
    Header {
        record: String,
        path: PathBuf,
        /// 1-based line number in the header file the problem was found at.
        line: usize,
        message: String,
    },

    /// A header names a signal storage format this reader does not decode.
    #[error(
        "record {record}: lead {lead} (header line {line}): unsupported signal format {format} \
         (supported: 8, 16, 24, 32, 61, 80, 160, 212, 310, 311; not the FLAC formats 508, 516, \
         524)"
    )]
    UnsupportedFormat {
        record: String,
        lead: String,
        line: usize,
        format: String,
    },

    /// A signal file holds fewer bytes than the header's sample count requires, or ends in the
    /// middle of a frame.
    #[error(
        "record {record}: signal file {} is truncated: {expected} bytes needed for the header's \
         samples (lead {first_lead} and {group_size} signal(s) in this file), found {found}",
        path.display()
    )]
    TruncatedSignal {
        record: String,
        path: PathBuf,
        first_lead: String,
        group_size: usize,
        expected: u64,
        found: u64,
    },

    /// The 16-bit sum of a lead's samples differs from the header's checksum field.
    #[error(
        "record {record}: lead {lead} (header line {line}): checksum mismatch: header says \
         {expected}, samples sum to {computed} (16-bit)"
    )]
    Checksum {
        record: String,
        lead: String,
        line: usize,
        /// The header value reduced to 16 bits, as an unsigned number.
        expected: u16,
        computed: u16,
    },

    /// The first sample of a lead differs from the header's initial-value field.
    #[error(
        "record {record}: lead {lead} (header line {line}): initial value mismatch: header says \
         {expected}, first sample is {found}"
    )]
    InitialValue {
        record: String,
        lead: String,
        line: usize,
        expected: i32,
        found: i32,
    },

    /// A MAT v4 signal file has a header that does not fit the WFDB header referring to it.
    #[error("record {record}: MAT file {}: {message}", path.display())]
    Mat {
        record: String,
        path: PathBuf,
        message: String,
    },

    /// A WFDB (MIT format) annotation file is malformed.
    #[error("annotation file {}: byte {offset}: {message}", path.display())]
    Annotation {
        path: PathBuf,
        offset: usize,
        message: String,
    },

    /// A CSV file (PTB-XL database or statements, `ludb.csv`) has a malformed row or value.
    #[error("{} line {line}: column `{column}`: {message}", path.display())]
    Csv {
        path: PathBuf,
        /// 1-based line number where the row starts.
        line: u64,
        column: String,
        message: String,
    },

    /// A dataset folder lacks a file or column it must have, or its files contradict each other.
    #[error("{}: {message}", path.display())]
    Dataset { path: PathBuf, message: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Reads a whole regular file of at most [`crate::safe_read::MAX_TABLE_BYTES`], attaching the path
/// to any error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, DataError> {
    crate::safe_read::read_regular(path, crate::safe_read::MAX_TABLE_BYTES)
}

/// Reads a whole UTF-8 text file, attaching the path to any error.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    let bytes = read_file(path)?;
    String::from_utf8(bytes).map_err(|e| DataError::Dataset {
        path: path.to_path_buf(),
        message: format!(
            "not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}
