//! TensorBoard event files: scalars and text, readable by TensorBoard's own reader.
//!
//! An event file is a sequence of TFRecords (little-endian length, masked CRC-32C of the length,
//! the serialised `Event` protobuf, masked CRC-32C of the data). The few protobuf messages we need
//! are declared here with `prost` derives, so no `protoc` is needed at build time.
//! (`tensorboard-rs` is unmaintained, pins protobuf 2.x with a security advisory, and panics on
//! text summaries: see stack-notes.md.)

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
    #[prost(oneof = "SummaryKind", tags = "2, 8")]
    value: Option<SummaryKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum SummaryKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    content: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// TensorFlow's `DT_STRING`.
const DT_STRING: i32 = 7;
/// `SessionLog.START`: TensorBoard discards events of later steps written before it, so a
/// resumed run does not show the killed attempt's steps twice.
const SESSION_START: i32 = 1;

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends events to one `events.out.tfevents.*` file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (created if missing).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let wall = crate::registry::now();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let mut n = 0;
        // A new file of a name not taken yet; a link or device in the way is refused.
        let (path, file) = loop {
            let p = dir.join(format!(
                "events.out.tfevents.{}.{host}.{}.{n}",
                wall as u64,
                std::process::id()
            ));
            match beatlab_fsio::create_new(&p) {
                Ok(f) => break (p, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        };
        let mut w = Self {
            out: BufWriter::new(file),
            path,
        };
        w.write_event(Event {
            wall_time: wall,
            step: 0,
            what: Some(What::FileVersion("brain.Event:2".into())),
        })?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: Event) -> std::io::Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(&data)?;
        self.out.write_all(&masked_crc(&data).to_le_bytes())?;
        Ok(())
    }

    /// A scalar at a step.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> std::io::Result<()> {
        self.write_event(Event {
            wall_time: crate::registry::now(),
            step,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_string(),
                    metadata: None,
                    value: Some(SummaryKind::SimpleValue(value as f32)),
                }],
            })),
        })
    }

    /// A text (Markdown) summary, shown in TensorBoard's Text tab.
    pub fn text(&mut self, tag: &str, step: i64, text: &str) -> std::io::Result<()> {
        self.write_event(Event {
            wall_time: crate::registry::now(),
            step,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_string(),
                    metadata: Some(SummaryMetadata {
                        plugin_data: Some(PluginData {
                            plugin_name: "text".into(),
                            content: Vec::new(),
                        }),
                    }),
                    value: Some(SummaryKind::Tensor(TensorProto {
                        dtype: DT_STRING,
                        tensor_shape: Some(TensorShape {
                            dim: vec![Dim { size: 1 }],
                        }),
                        string_val: vec![text.as_bytes().to_vec()],
                    })),
                }],
            })),
        })
    }

    /// Marks a (re)start whose first event has step `step`: TensorBoard drops the events of steps
    /// `>= step` written before this mark.
    pub fn session_start(&mut self, step: i64) -> std::io::Result<()> {
        self.write_event(Event {
            wall_time: crate::registry::now(),
            step,
            what: Some(What::SessionLog(SessionLog {
                status: SESSION_START,
            })),
        })
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_tfrecord_reference_vector() {
        // CRC-32C of "123456789" is 0xE3069283 (RFC 3720); masking is rotate-right 15 + constant.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }
}
