//! MAT v4 signal files as shipped by the PhysioNet/CinC challenges (2017-2021).
//!
//! Such a `.mat` file is named from a WFDB header line like `E07500.mat 16x1+24 ...`: a 20-byte
//! MAT v4 matrix header (type, rows, columns, imaginary flag, name length), the matrix name
//! (`val\0`), then the int16 matrix stored column-major with one row per lead. Column-major with
//! leads as rows is exactly WFDB's interleaved format 16, so after this module has checked the
//! matrix header against the WFDB header the samples decode like any format-16 file starting at
//! the data offset.

use std::path::Path;

use crate::error::DataError;

/// Size of the fixed part of a MAT v4 matrix header: five 32-bit integers.
const FIXED_HEADER_BYTES: usize = 20;
/// Longest matrix name accepted, including its trailing NUL.
const MAX_NAME_BYTES: usize = 4096;
/// Most bytes a matrix header (fixed part and name) can span.
pub const MAX_HEADER_BYTES: usize = FIXED_HEADER_BYTES + MAX_NAME_BYTES;

/// Element type of a MAT v4 matrix (the `P` digit of the `MOPT` type code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatPrecision {
    F64,
    F32,
    I32,
    I16,
    U16,
    U8,
}

impl MatPrecision {
    fn from_digit(digit: i32) -> Option<Self> {
        Some(match digit {
            0 => Self::F64,
            1 => Self::F32,
            2 => Self::I32,
            3 => Self::I16,
            4 => Self::U16,
            5 => Self::U8,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::I16 | Self::U16 => 2,
            Self::U8 => 1,
        }
    }
}

/// The header of the first matrix in a MAT v4 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatV4Header {
    /// `true` for the little-endian (IEEE, `M = 0`) layout.
    pub little_endian: bool,
    pub precision: MatPrecision,
    /// `T` digit of the type code: 0 numeric full matrix, 1 text, 2 sparse.
    pub matrix_kind: u8,
    pub rows: usize,
    pub cols: usize,
    pub has_imaginary: bool,
    pub name: String,
    /// Byte offset of the first element.
    pub data_offset: usize,
}

impl MatV4Header {
    /// Bytes the real part of the matrix occupies.
    pub fn data_bytes(&self) -> Option<usize> {
        self.rows
            .checked_mul(self.cols)?
            .checked_mul(self.precision.size())
    }
}

/// Parses the MAT v4 matrix header at the start of `bytes`. `record` and `path` only label errors.
pub fn parse_header(bytes: &[u8], record: &str, path: &Path) -> Result<MatV4Header, DataError> {
    let fail = |message: String| DataError::Mat {
        record: record.to_string(),
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < FIXED_HEADER_BYTES {
        return Err(fail(format!(
            "file is {} bytes, shorter than the {FIXED_HEADER_BYTES}-byte MAT v4 header",
            bytes.len()
        )));
    }
    let word = |i: usize, little: bool| {
        let b = [
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ];
        if little {
            i32::from_le_bytes(b)
        } else {
            i32::from_be_bytes(b)
        }
    };
    // The type code MOPT is < 5000 and its thousands digit M says the byte order; read it both
    // ways and keep the reading that is self-consistent.
    let little_endian = match (word(0, true), word(0, false)) {
        (t, _) if (0..1000).contains(&t) => true,
        (_, t) if (1000..2000).contains(&t) => false,
        (t, _) => {
            return Err(fail(format!(
                "type code {t} is not a MAT v4 type (expected MOPT < 5000, e.g. 30 for int16)"
            )));
        }
    };
    let type_code = word(0, little_endian);
    let digit = |d: i32| (type_code / d) % 10;
    if digit(100) != 0 {
        return Err(fail(format!(
            "type code {type_code}: the O digit must be 0, found {}",
            digit(100)
        )));
    }
    let precision = MatPrecision::from_digit(digit(10)).ok_or_else(|| {
        fail(format!(
            "type code {type_code}: precision digit {} is not one of 0-5",
            digit(10)
        ))
    })?;
    let matrix_kind = digit(1) as u8;
    let rows = word(1, little_endian);
    let cols = word(2, little_endian);
    let imaginary = word(3, little_endian);
    let name_len = word(4, little_endian);
    if rows < 0 || cols < 0 {
        return Err(fail(format!(
            "negative matrix size {rows} x {cols} in the header"
        )));
    }
    if !(0..=1).contains(&imaginary) {
        return Err(fail(format!(
            "imaginary flag is {imaginary}, expected 0 or 1"
        )));
    }
    if !(1..=MAX_NAME_BYTES as i32).contains(&name_len) {
        return Err(fail(format!(
            "matrix name length is {name_len}, expected 1 to 4096 (including the trailing NUL)"
        )));
    }
    let name_len = name_len as usize;
    let data_offset = FIXED_HEADER_BYTES + name_len;
    let name_bytes = bytes.get(FIXED_HEADER_BYTES..data_offset).ok_or_else(|| {
        fail(format!(
            "file ends inside the matrix name ({} bytes, name needs {data_offset})",
            bytes.len()
        ))
    })?;
    let name = String::from_utf8_lossy(name_bytes)
        .trim_end_matches('\0')
        .to_string();
    Ok(MatV4Header {
        little_endian,
        precision,
        matrix_kind,
        rows: rows as usize,
        cols: cols as usize,
        has_imaginary: imaginary == 1,
        name,
        data_offset,
    })
}

/// Checks that a MAT v4 header describes what a WFDB header line expects: a real little-endian
/// int16 full matrix with one row per signal of the file, `samples` columns when the WFDB header
/// gives a sample count, starting at `byte_offset` when the WFDB header gives one. Whether the
/// file really holds that many bytes is left to the signal decoder, which reports truncation
/// the same way for every format.
pub(crate) fn check_matches_wfdb(
    mat: &MatV4Header,
    signals_in_file: usize,
    samples: Option<usize>,
    byte_offset: Option<u64>,
    record: &str,
    path: &Path,
) -> Result<(), DataError> {
    let fail = |message: String| DataError::Mat {
        record: record.to_string(),
        path: path.to_path_buf(),
        message,
    };
    if !mat.little_endian || mat.precision != MatPrecision::I16 {
        return Err(fail(format!(
            "matrix is {:?} {}-endian; the WFDB header's format 16 needs little-endian int16",
            mat.precision,
            if mat.little_endian { "little" } else { "big" }
        )));
    }
    if mat.matrix_kind != 0 || mat.has_imaginary {
        return Err(fail(
            "matrix is not a real full numeric matrix (text, sparse or complex)".to_string(),
        ));
    }
    if mat.rows != signals_in_file {
        return Err(fail(format!(
            "matrix has {} rows, expected one per signal stored in this file ({signals_in_file})",
            mat.rows
        )));
    }
    if let Some(samples) = samples
        && mat.cols != samples
    {
        return Err(fail(format!(
            "matrix has {} columns, the WFDB header says {samples} samples",
            mat.cols
        )));
    }
    if let Some(offset) = byte_offset
        && offset != mat.data_offset as u64
    {
        return Err(fail(format!(
            "matrix data starts at byte {}, the WFDB header says +{offset}",
            mat.data_offset
        )));
    }
    Ok(())
}
