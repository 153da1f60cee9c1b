//! WFDB annotation files in the MIT binary format, and their delineation into P/QRS/T waves.
//!
//! The format is a stream of little-endian 16-bit words: the top 6 bits are an annotation code,
//! the low 10 bits a sample-time increment (or, for the pseudo-codes below, a value). Pseudo-code
//! 59 (SKIP) carries a 32-bit increment in the next two words (high word first), 60 (NUM),
//! 61 (SUB) and 62 (CHN) set fields of the preceding annotation (NUM and CHN persist for the ones
//! after it), 63 (AUX) is followed by that many bytes of text padded to an even length, and a
//! zero word ends the file. Code 0 only advances time and is dropped, as are notes at sample 0
//! whose text starts with `## ` (definitions such as `## time resolution: 360`).
//!
//! Delineation files (LUDB, QTDB) bracket each wave peak (`p`, a beat symbol such as `N`, or `t`)
//! with an onset `(` just before and an offset `)` just after; [`waves_from_annotations`] turns
//! those triples into [`Wave`]s.

use std::path::Path;

use crate::error::{DataError, read_file};
use crate::record::{Wave, WaveKind};

/// Code of the comment annotation `"`.
const CODE_NOTE: u8 = 22;
const CODE_SKIP: u8 = 59;
const CODE_NUM: u8 = 60;
const CODE_SUB: u8 = 61;
const CODE_CHN: u8 = 62;
const CODE_AUX: u8 = 63;
/// Highest code that denotes a real annotation (WFDB's `ACMAX`).
const MAX_ANNOTATION_CODE: u8 = 49;

/// Code of the P-wave peak symbol `p`.
pub const CODE_P_WAVE: u8 = 24;
/// Code of the T-wave peak symbol `t`.
pub const CODE_T_WAVE: u8 = 27;
/// Code of the waveform onset symbol `(`.
pub const CODE_ONSET: u8 = 39;
/// Code of the waveform offset symbol `)`.
pub const CODE_OFFSET: u8 = 40;

/// WFDB's standard symbol for each annotation code 0-41 (codes 15 and 17 are unassigned).
const SYMBOLS: [&str; 42] = [
    " ", "N", "L", "R", "a", "V", "F", "J", "A", "S", "E", "j", "/", "Q", "~", "", "|", "", "s",
    "T", "*", "D", "\"", "=", "p", "B", "^", "t", "+", "u", "?", "!", "[", "]", "e", "n", "@", "x",
    "f", "(", ")", "r",
];

/// The standard WFDB symbol of an annotation code, `None` for unassigned codes.
pub fn code_symbol(code: u8) -> Option<&'static str> {
    SYMBOLS
        .get(usize::from(code))
        .copied()
        .filter(|s| !s.is_empty())
}

/// Whether a code marks a QRS complex (a beat), following WFDB's `isqrs` table.
pub fn is_beat(code: u8) -> bool {
    matches!(code, 1..=13 | 25 | 30 | 34 | 35 | 38 | 41)
}

/// One decoded annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Absolute sample index.
    pub sample: u64,
    pub code: u8,
    pub subtype: u16,
    pub chan: u16,
    pub num: u16,
    /// Auxiliary text, when present (decoded lossily as UTF-8).
    pub aux: Option<String>,
}

impl Annotation {
    /// The standard symbol (`N`, `p`, `(`...), or `""` for an unassigned code.
    pub fn symbol(&self) -> &'static str {
        code_symbol(self.code).unwrap_or("")
    }
}

/// One beat of a beat-annotation file (MIT-BIH `.atr` style).
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    /// Sample index of the beat's fiducial point (the R peak, usually).
    pub sample: u64,
    /// The sample index in seconds.
    pub time_s: f64,
    /// The beat label (`N`, `V`, `A`, `L`, `R`, ...).
    pub symbol: &'static str,
}

/// The beats of an annotation stream (the annotations whose code is a beat, WFDB's `isqrs`),
/// with times at sampling frequency `fs`.
pub fn beats(annotations: &[Annotation], fs: f64) -> Vec<Beat> {
    annotations
        .iter()
        .filter(|a| is_beat(a.code))
        .map(|a| Beat {
            sample: a.sample,
            time_s: a.sample as f64 / fs,
            symbol: a.symbol(),
        })
        .collect()
}

/// Reads an MIT-format annotation file.
pub fn read_annotations(path: impl AsRef<Path>) -> Result<Vec<Annotation>, DataError> {
    let path = path.as_ref();
    parse_annotations(&read_file(path)?, path)
}

/// Decodes MIT-format annotation bytes; `path` only names the file in errors.
pub fn parse_annotations(bytes: &[u8], path: &Path) -> Result<Vec<Annotation>, DataError> {
    let mut stream = Stream {
        bytes,
        path,
        annotations: Vec::with_capacity(bytes.len() / 2),
        time: 0,
        pending_skip: 0,
        chan: 0,
        num: 0,
    };
    let mut offset = 0usize;
    while offset < bytes.len() {
        match stream.step(offset)? {
            Some(next) => offset = next,
            None => break,
        }
    }
    let mut annotations = stream.annotations;
    // As WFDB and python wfdb do: code 0 (NOTQRS) only advances time, and notes at sample 0
    // whose text starts with `## ` are definitions (the time resolution, custom labels).
    annotations.retain(|a| {
        let definition = a.code == CODE_NOTE
            && a.sample == 0
            && a.aux.as_deref().is_some_and(|t| t.starts_with("## "));
        a.code != 0 && !definition
    });
    Ok(annotations)
}

/// An annotation file being decoded: the annotations so far, the running time, and the
/// channel and number later annotations inherit.
struct Stream<'a> {
    bytes: &'a [u8],
    path: &'a Path,
    annotations: Vec<Annotation>,
    time: i64,
    /// SKIP intervals not yet added to the time (the next annotation adds them).
    pending_skip: i64,
    chan: u16,
    num: u16,
}

impl Stream<'_> {
    fn fail(&self, offset: usize, message: String) -> DataError {
        DataError::Annotation {
            path: self.path.to_path_buf(),
            offset,
            message,
        }
    }

    fn word_at(&self, offset: usize) -> Option<u16> {
        Some(u16::from_le_bytes([
            *self.bytes.get(offset)?,
            *self.bytes.get(offset + 1)?,
        ]))
    }

    /// Decodes the word at `offset` (and what belongs to it); the offset of the next word, or
    /// `None` at the end-of-file word.
    fn step(&mut self, offset: usize) -> Result<Option<usize>, DataError> {
        let word = self.word_at(offset).ok_or_else(|| {
            self.fail(
                offset,
                "file ends in the middle of a 16-bit annotation word".to_string(),
            )
        })?;
        if word == 0 {
            return Ok(None);
        }
        let code = (word >> 10) as u8;
        let value = word & 0x03ff;
        match code {
            CODE_SKIP => {
                let (Some(high), Some(low)) = (self.word_at(offset + 2), self.word_at(offset + 4))
                else {
                    return Err(self.fail(
                        offset,
                        "file ends inside a SKIP's 32-bit interval".to_string(),
                    ));
                };
                self.pending_skip += i64::from(((u32::from(high) << 16) | u32::from(low)) as i32);
                return Ok(Some(offset + 6));
            }
            // Before any annotation, NUM and CHN only set the values later ones inherit.
            CODE_NUM if self.annotations.is_empty() => self.num = value,
            CODE_CHN if self.annotations.is_empty() => self.chan = value,
            CODE_NUM | CODE_SUB | CODE_CHN | CODE_AUX => {
                return self.modify_last(code, value, offset).map(Some);
            }
            code if code > MAX_ANNOTATION_CODE => {
                return Err(self.fail(
                    offset,
                    format!("annotation code {code} is outside the MIT code table (0-49, 59-63)"),
                ));
            }
            code => self.push(code, value, offset)?,
        }
        Ok(Some(offset + 2))
    }

    /// A pseudo-annotation (NUM, SUB, CHN, AUX) that modifies the last annotation; the offset
    /// of the next word.
    fn modify_last(&mut self, code: u8, value: u16, offset: usize) -> Result<usize, DataError> {
        if self.annotations.is_empty() {
            return Err(self.fail(
                offset,
                format!("pseudo-annotation code {code} before any annotation"),
            ));
        }
        let aux = if code == CODE_AUX {
            Some(self.aux_text(value, offset)?)
        } else {
            None
        };
        let last = self.annotations.last_mut().expect("checked above");
        match code {
            CODE_NUM => {
                self.num = value;
                last.num = value;
            }
            CODE_SUB => last.subtype = value,
            CODE_CHN => {
                self.chan = value;
                last.chan = value;
            }
            _ => {
                last.aux = aux;
                // The text is padded to a whole number of 16-bit words.
                return Ok(offset + 2 + usize::from(value).div_ceil(2) * 2);
            }
        }
        Ok(offset + 2)
    }

    /// The `len` bytes of AUX text after the word at `offset`.
    fn aux_text(&self, len: u16, offset: usize) -> Result<String, DataError> {
        let start = offset + 2;
        let text = self
            .bytes
            .get(start..start + usize::from(len))
            .ok_or_else(|| {
                self.fail(
                    offset,
                    format!(
                        "AUX announces {len} bytes but the file has {}",
                        self.bytes.len().saturating_sub(start)
                    ),
                )
            })?;
        Ok(String::from_utf8_lossy(text)
            .trim_end_matches('\0')
            .to_string())
    }

    /// An annotation `value` samples after the previous one (plus any pending SKIP).
    fn push(&mut self, code: u8, value: u16, offset: usize) -> Result<(), DataError> {
        self.time += self.pending_skip + i64::from(value);
        self.pending_skip = 0;
        let time = self.time;
        let sample = u64::try_from(time)
            .map_err(|_| self.fail(offset, format!("annotation time becomes negative ({time})")))?;
        self.annotations.push(Annotation {
            sample,
            code,
            subtype: 0,
            chan: self.chan,
            num: self.num,
            aux: None,
        });
        Ok(())
    }
}

/// Waves delineated from an annotation stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delineation {
    /// Complete waves (onset, peak and offset all annotated), in file order.
    pub waves: Vec<Wave>,
    /// Wave peaks left out because their onset or offset is missing (typically waves cut by the
    /// start or end of the recording).
    pub incomplete: usize,
}

/// Pairs each wave peak with the onset `(` directly before it and the offset `)` directly after
/// it on the same channel. `p` gives a P wave, `t` a T wave, any beat symbol a QRS complex.
pub fn waves_from_annotations(annotations: &[Annotation]) -> Delineation {
    let mut result = Delineation::default();
    for (i, peak) in annotations.iter().enumerate() {
        let kind = match peak.code {
            CODE_P_WAVE => WaveKind::P,
            CODE_T_WAVE => WaveKind::T,
            code if is_beat(code) => WaveKind::QRS,
            _ => continue,
        };
        let onset = i
            .checked_sub(1)
            .and_then(|j| bracket(annotations.get(j), CODE_ONSET, peak.chan));
        let offset = bracket(annotations.get(i + 1), CODE_OFFSET, peak.chan);
        match (onset, offset) {
            (Some(onset), Some(offset))
                if onset.sample <= peak.sample && peak.sample <= offset.sample =>
            {
                result.waves.push(Wave {
                    kind,
                    onset: onset.sample as usize,
                    peak: peak.sample as usize,
                    offset: offset.sample as usize,
                });
            }
            _ => result.incomplete += 1,
        }
    }
    result
}

/// The neighbour of a peak when it is the wanted bracket on the peak's channel.
fn bracket(neighbour: Option<&Annotation>, code: u8, chan: u16) -> Option<&Annotation> {
    neighbour.filter(|a| a.code == code && a.chan == chan)
}

/// Reads an annotation file and delineates its waves.
pub fn read_waves(path: impl AsRef<Path>) -> Result<Delineation, DataError> {
    Ok(waves_from_annotations(&read_annotations(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(code: u8, value: u16) -> [u8; 2] {
        ((u16::from(code) << 10) | value).to_le_bytes()
    }

    fn encode(parts: &[[u8; 2]]) -> Vec<u8> {
        parts.iter().flatten().copied().collect()
    }

    #[test]
    fn skip_aux_and_modifiers_decode() {
        // `(` at 100, SKIP +70000 then `N` 5 later, AUX "ab" + SUB 3 on it, `)` at 70110.
        let skip = 70_000u32;
        let bytes = encode(&[
            word(CODE_ONSET, 100),
            word(CODE_SKIP, 0),
            ((skip >> 16) as u16).to_le_bytes(),
            (skip as u16).to_le_bytes(),
            word(1, 5),
            word(CODE_AUX, 2),
            *b"ab",
            word(CODE_SUB, 3),
            word(CODE_OFFSET, 5),
            [0, 0],
        ]);
        let anns = parse_annotations(&bytes, Path::new("t.i")).unwrap();
        let summary: Vec<_> = anns
            .iter()
            .map(|a| (a.sample, a.symbol(), a.subtype, a.aux.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (100, "(", 0, None),
                (70_105, "N", 3, Some("ab".to_string())),
                (70_110, ")", 0, None),
            ]
        );
        let delineation = waves_from_annotations(&anns);
        assert_eq!(
            delineation.waves,
            vec![Wave {
                kind: WaveKind::QRS,
                onset: 100,
                peak: 70_105,
                offset: 70_110
            }]
        );
    }

    #[test]
    fn truncated_streams_are_errors() {
        let bytes = encode(&[word(1, 5), word(CODE_AUX, 4), *b"ab"]);
        let err = parse_annotations(&bytes, Path::new("x.ii")).unwrap_err();
        assert!(err.to_string().contains("x.ii: byte 2"), "{err}");
        assert!(parse_annotations(&[1, 2, 3], Path::new("x")).is_err());
    }

    #[test]
    fn peaks_without_brackets_are_counted_not_invented() {
        let bytes = encode(&[
            word(1, 10),
            word(CODE_OFFSET, 5),
            word(CODE_ONSET, 50),
            word(CODE_T_WAVE, 20),
            word(CODE_OFFSET, 20),
            word(CODE_ONSET, 100),
            word(CODE_P_WAVE, 10),
        ]);
        let anns = parse_annotations(&bytes, Path::new("x")).unwrap();
        let d = waves_from_annotations(&anns);
        assert_eq!(d.incomplete, 2);
        assert_eq!(
            d.waves,
            vec![Wave {
                kind: WaveKind::T,
                onset: 65,
                peak: 85,
                offset: 105
            }]
        );
    }
}
