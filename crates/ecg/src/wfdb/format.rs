//! The WFDB signal storage formats (signal(5)): how a stream of samples is laid out in bytes.
//!
//! Byte-aligned formats (8, 16, 24, 32, 61, 80, 160) are decoded straight into one vector per
//! signal when every signal of the file has one sample per frame (the common case, and the fast
//! path); otherwise, and for the bit-packed formats (212, 310, 311), the file's samples are first
//! decoded into one flat stream in file order and then dealt out to the signals frame by frame.
//! Format 8 stores first differences: this module returns the differences, the caller adds them
//! up from each signal's initial value. [`decode_lead`] turns one signal of a byte-aligned
//! file straight into millivolts (the reader's path to [`crate::record::Record`]s).

use super::Millivolts;

/// Storage layouts this reader decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Signed 8-bit first differences (format 8).
    Diff8,
    /// Little-endian two's complement integers of N bytes (formats 16, 24, 32).
    Le(usize),
    /// Big-endian 16-bit (format 61).
    Be16,
    /// Offset binary: unsigned 8-bit minus 128 (80), unsigned 16-bit minus 32768 (160).
    Offset8,
    Offset16,
    /// Two 12-bit samples packed in three bytes (212).
    Packed212,
    /// Three 10-bit samples in two little-endian 16-bit words, 5 bits of the third in the top
    /// of each word (310).
    Packed310,
    /// Three 10-bit samples in one little-endian 32-bit word, bits 0-9, 10-19, 20-29 (311).
    Packed311,
}

/// The FLAC-compressed formats (WFDB 10.7), which this reader refuses: no well-kept pure-Rust
/// FLAC decoder is available to this build.
pub const FLAC_FORMATS: [u16; 3] = [508, 516, 524];

/// The layout of a format number, `None` for formats this reader does not decode.
pub(crate) fn layout(format: u16) -> Option<Layout> {
    Some(match format {
        8 => Layout::Diff8,
        16 => Layout::Le(2),
        24 => Layout::Le(3),
        32 => Layout::Le(4),
        61 => Layout::Be16,
        80 => Layout::Offset8,
        160 => Layout::Offset16,
        212 => Layout::Packed212,
        310 => Layout::Packed310,
        311 => Layout::Packed311,
        _ => return None,
    })
}

/// WFDB's "invalid sample" marker for a format: the most negative value it can store (for
/// format 8, whose samples are 32-bit sums, and format 0, the null signal, the most negative
/// 32-bit value).
pub(crate) fn invalid_sample(format: u16) -> Option<i32> {
    Some(match format {
        16 | 61 | 160 => -32768,
        24 => -(1 << 23),
        0 | 8 | 32 => i32::MIN,
        80 => -128,
        212 => -2048,
        310 | 311 => -512,
        _ => return None,
    })
}

impl Layout {
    /// Bytes per sample of a byte-aligned layout, `None` for the bit-packed ones.
    pub(crate) fn width(self) -> Option<usize> {
        match self {
            Layout::Diff8 | Layout::Offset8 => Some(1),
            Layout::Be16 | Layout::Offset16 => Some(2),
            Layout::Le(width) => Some(width),
            Layout::Packed212 | Layout::Packed310 | Layout::Packed311 => None,
        }
    }

    /// Whether samples convert straight from the file's bytes ([`decode_lead`]): the
    /// byte-aligned layouts but format 8, whose differences need a running sum.
    pub(crate) fn is_direct(self) -> bool {
        self.width().is_some() && self != Layout::Diff8
    }

    /// Bytes that hold `samples` samples in file order, `None` on overflow. A trailing partial
    /// group of a packed format occupies only the bytes its samples touch.
    pub(crate) fn bytes_for(self, samples: usize) -> Option<usize> {
        if let Some(width) = self.width() {
            return samples.checked_mul(width);
        }
        let groups = samples / self.group_samples();
        let rest = samples % self.group_samples();
        let tail = match (self, rest) {
            (_, 0) => 0,
            (Layout::Packed212, _) => 2,
            (Layout::Packed310, 1) => 2,
            (Layout::Packed310, _) => 4,
            (Layout::Packed311, 1) => 2,
            (Layout::Packed311, _) => 3,
            _ => unreachable!("byte-aligned layouts returned above"),
        };
        groups.checked_mul(self.group_bytes())?.checked_add(tail)
    }

    /// Samples that `bytes` bytes hold (whole samples only).
    pub(crate) fn samples_in(self, bytes: u64) -> u64 {
        match self.width() {
            Some(width) => bytes / width as u64,
            None => {
                let (g, b) = (self.group_samples() as u64, self.group_bytes() as u64);
                let rest = bytes % b;
                let tail = (1..g).rev().find(|&n| {
                    self.bytes_for(n as usize)
                        .is_some_and(|need| need as u64 <= rest)
                });
                bytes / b * g + tail.unwrap_or(0)
            }
        }
    }

    fn group_samples(self) -> usize {
        match self {
            Layout::Packed212 => 2,
            _ => 3,
        }
    }

    fn group_bytes(self) -> usize {
        match self {
            Layout::Packed212 => 3,
            _ => 4,
        }
    }
}

/// Decodes `total` samples in file order. The caller has checked `data` holds
/// `layout.bytes_for(total)` bytes.
pub(crate) fn decode_flat(layout: Layout, data: &[u8], total: usize) -> Vec<i32> {
    let mut out = decode_strided(layout, data, 1, total)
        .map(|mut v| v.pop().unwrap_or_default())
        .unwrap_or_default();
    if layout.width().is_some() {
        return out;
    }
    out.reserve(total + 2);
    let (group, bytes) = (layout.group_samples(), layout.group_bytes());
    let mut padded = [0u8; 4];
    for chunk in data[..layout.bytes_for(total).unwrap_or(0)].chunks(bytes) {
        padded[..chunk.len()].copy_from_slice(chunk);
        padded[chunk.len()..].fill(0);
        unpack_group(layout, &padded, &mut out);
    }
    debug_assert!(out.len() >= total && out.len() < total + group);
    out.truncate(total);
    out
}

/// Sign-extends the low `bits` bits of `v`.
fn extend(v: u32, bits: u32) -> i32 {
    ((v << (32 - bits)) as i32) >> (32 - bits)
}

fn unpack_group(layout: Layout, b: &[u8; 4], out: &mut Vec<i32>) {
    let [b0, b1, b2, b3] = b.map(u32::from);
    match layout {
        Layout::Packed212 => {
            out.push(extend(b0 | ((b1 & 0x0f) << 8), 12));
            out.push(extend(b2 | ((b1 & 0xf0) << 4), 12));
        }
        Layout::Packed310 => {
            let w0 = b0 | (b1 << 8);
            let w1 = b2 | (b3 << 8);
            out.push(extend((w0 >> 1) & 0x3ff, 10));
            out.push(extend((w1 >> 1) & 0x3ff, 10));
            out.push(extend(((w0 >> 11) & 0x1f) | (((w1 >> 11) & 0x1f) << 5), 10));
        }
        Layout::Packed311 => {
            let w = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
            out.push(extend(w & 0x3ff, 10));
            out.push(extend((w >> 10) & 0x3ff, 10));
            out.push(extend((w >> 20) & 0x3ff, 10));
        }
        _ => unreachable!("only packed layouts come in groups"),
    }
}

/// De-interleaves `frames` frames of `nsig` one-sample-per-frame signals of a byte-aligned
/// layout, `None` for a packed layout. The caller has checked `data` is long enough.
pub(crate) fn decode_strided(
    layout: Layout,
    data: &[u8],
    nsig: usize,
    frames: usize,
) -> Option<Vec<Vec<i32>>> {
    if nsig == 0 {
        return Some(Vec::new());
    }
    Some(match layout {
        Layout::Diff8 => strided::<1>(data, nsig, frames, |b| i32::from(b[0] as i8)),
        Layout::Le(2) => strided::<2>(data, nsig, frames, |b| {
            i32::from(i16::from_le_bytes([b[0], b[1]]))
        }),
        Layout::Le(3) => strided::<3>(data, nsig, frames, |b| {
            // Place the three bytes high in an i32 and shift back down to sign-extend.
            i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8
        }),
        Layout::Le(_) => strided::<4>(data, nsig, frames, |b| {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        Layout::Be16 => strided::<2>(data, nsig, frames, |b| {
            i32::from(i16::from_be_bytes([b[0], b[1]]))
        }),
        Layout::Offset8 => strided::<1>(data, nsig, frames, |b| i32::from(b[0]) - 128),
        Layout::Offset16 => strided::<2>(data, nsig, frames, |b| {
            i32::from(u16::from_le_bytes([b[0], b[1]])) - 32768
        }),
        Layout::Packed212 | Layout::Packed310 | Layout::Packed311 => return None,
    })
}

/// One signal of a [direct](Layout::is_direct) layout decoded straight to millivolts, with what
/// its checks need.
pub(crate) struct DecodedLead {
    pub millivolts: Vec<f32>,
    /// The first sample in ADC units.
    pub first: Option<i32>,
    /// Wrapping 32-bit sum of the samples in ADC units.
    pub sum: i32,
}

/// Decodes signal `index` of `frames` frames of `nsig` one-sample-per-frame signals straight
/// to millivolts. The caller has checked `data` is long enough.
pub(crate) fn decode_lead(
    layout: Layout,
    data: &[u8],
    nsig: usize,
    index: usize,
    frames: usize,
    to_mv: &Millivolts,
) -> DecodedLead {
    let at = |width: usize| (nsig * width, index * width);
    match layout {
        Layout::Le(2) => lead::<2>(data, at(2), frames, to_mv, |b| {
            i32::from(i16::from_le_bytes(b))
        }),
        Layout::Le(3) => lead::<3>(data, at(3), frames, to_mv, |b| {
            i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8
        }),
        Layout::Le(_) => lead::<4>(data, at(4), frames, to_mv, i32::from_le_bytes),
        Layout::Be16 => lead::<2>(data, at(2), frames, to_mv, |b| {
            i32::from(i16::from_be_bytes(b))
        }),
        Layout::Offset8 => lead::<1>(data, at(1), frames, to_mv, |b| i32::from(b[0]) - 128),
        Layout::Offset16 => lead::<2>(data, at(2), frames, to_mv, |b| {
            i32::from(u16::from_le_bytes(b)) - 32768
        }),
        Layout::Diff8 | Layout::Packed212 | Layout::Packed310 | Layout::Packed311 => {
            unreachable!("decode_lead is called for direct layouts only")
        }
    }
}

#[inline(always)]
fn lead<const WIDTH: usize>(
    data: &[u8],
    (frame, at): (usize, usize),
    frames: usize,
    to_mv: &Millivolts,
    sample: impl Fn([u8; WIDTH]) -> i32,
) -> DecodedLead {
    let bytes = &data[..frame * frames];
    let mut millivolts = Vec::with_capacity(frames);
    let mut sum = 0i32;
    // De-interleave a block into ADC units, then convert the block in a loop the compiler can
    // vectorise (the strided byte loads cannot be).
    let mut adc = [0i32; 256];
    for block in bytes.chunks(frame * adc.len()) {
        let adc = &mut adc[..block.len() / frame];
        for (value, f) in adc.iter_mut().zip(block.chunks_exact(frame)) {
            *value = sample(f[at..at + WIDTH].try_into().expect("WIDTH bytes"));
        }
        sum = adc.iter().fold(sum, |acc, &v| acc.wrapping_add(v));
        millivolts.extend(adc.iter().map(|&v| to_mv.convert(v)));
    }
    let first = bytes
        .get(at..at + WIDTH)
        .map(|b| sample(b.try_into().expect("WIDTH bytes")));
    DecodedLead {
        millivolts,
        first,
        sum,
    }
}

fn strided<const WIDTH: usize>(
    data: &[u8],
    nsig: usize,
    frames: usize,
    sample: impl Fn(&[u8]) -> i32,
) -> Vec<Vec<i32>> {
    let frame = WIDTH * nsig;
    let bytes = &data[..frame * frames];
    (0..nsig)
        .map(|signal| {
            let at = signal * WIDTH;
            bytes
                .chunks_exact(frame)
                .map(|f| sample(&f[at..at + WIDTH]))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(format: u16, bytes: &[u8], n: usize) -> Vec<i32> {
        let layout = layout(format).unwrap();
        assert_eq!(layout.bytes_for(n), Some(bytes.len()), "format {format}");
        assert_eq!(
            layout.samples_in(bytes.len() as u64),
            n as u64,
            "format {format}"
        );
        decode_flat(layout, bytes, n)
    }

    #[test]
    fn format_212_unpacks_the_wfdb_spec_example() {
        // Samples 0x123 and 0x456: low byte of the first, then the two high nibbles (second's
        // in the upper half), then the low byte of the second.
        assert_eq!(flat(212, &[0x23, 0x41, 0x56], 2), vec![0x123, 0x456]);
        // -1 and -2048 (all ones; sign bit only), and a trailing odd sample stored in 2 bytes.
        assert_eq!(
            flat(212, &[0xff, 0x8f, 0x00, 0x05, 0x00], 3),
            vec![-1, -2048, 5]
        );
    }

    #[test]
    fn formats_310_and_311_unpack_per_the_spec() {
        // 311: 1, -1, 511 in bits 0-9, 10-19, 20-29 of one little-endian word.
        let word: u32 = 1 | (0x3ff << 10) | (511 << 20);
        assert_eq!(flat(311, &word.to_le_bytes(), 3), vec![1, -1, 511]);
        // 310: samples 1 and -512 in bits 1-10 of each 16-bit word; the third (-1 = 0x3ff) split
        // into bits 11-15 of the first word (low 5 bits) and of the second (high 5 bits).
        let w0: u16 = (1 << 1) | (0x1f << 11);
        let w1: u16 = (0x200 << 1) | (0x1f << 11);
        let mut bytes = w0.to_le_bytes().to_vec();
        bytes.extend(w1.to_le_bytes());
        assert_eq!(flat(310, &bytes, 3), vec![1, -512, -1]);
        // Trailing partial groups.
        assert_eq!(flat(310, &bytes[..2], 1), vec![1]);
        assert_eq!(flat(311, &word.to_le_bytes()[..3], 2), vec![1, -1]);
    }

    #[test]
    fn byte_formats_decode_per_the_wfdb_spec() {
        // 8: signed differences (returned as such).
        assert_eq!(flat(8, &[0x01, 0xff, 0x80], 3), vec![1, -1, -128]);
        // 80: offset binary, 128 is zero.
        assert_eq!(flat(80, &[128, 0, 255], 3), vec![0, -128, 127]);
        // 160: little-endian offset binary, 0x8000 is zero.
        assert_eq!(
            flat(160, &[0x00, 0x80, 0xff, 0xff, 0x00, 0x00], 3),
            vec![0, 32767, -32768]
        );
        // 61: big-endian two's complement.
        assert_eq!(flat(61, &[0x01, 0x02, 0xff, 0xfe], 2), vec![258, -2]);
        // 16, 24, 32: little-endian two's complement.
        assert_eq!(flat(16, &[0x02, 0x01, 0xfe, 0xff], 2), vec![258, -2]);
        assert_eq!(
            flat(24, &[0xff, 0xff, 0xff, 0x01, 0x00, 0x80], 2),
            vec![-1, -8_388_607]
        );
        assert_eq!(flat(32, &[0xfe, 0xff, 0xff, 0xff], 1), vec![-2]);
        assert_eq!(layout(508), None);
    }
}
