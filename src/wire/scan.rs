//! Looking at an encoded `Batch` before materializing it, so that what a request costs is
//! bounded by the ingest's limits and not by what the sender packed into it.
//!
//! - [`Counter`] counts the top-level `messages` fields as decompressed bytes stream in: a body
//!   holding more messages than allowed is refused just past the limit (a few KiB of output for
//!   a bomb of empty messages), not after decoding millions of them.
//! - [`shape`] walks a whole decoded buffer once, without allocating, to tell how many bytes the
//!   decoded structs will copy out of it (ids, subjects, headers; payloads share the buffer).
//!
//! Both follow the protobuf encoding (varint keys, wire types 0/1/2/5) by hand: prost has no
//! incremental or size-only decoder, and these loops are small.

use super::WireError;

/// Wire types of the protobuf encoding.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Field numbers of `uplink.v1.Batch` / `uplink.v1.Message`.
const BATCH_MESSAGES: u64 = 1;
const MESSAGE_ID: u64 = 1;
const MESSAGE_SUBJECT: u64 = 2;
const MESSAGE_HEADERS: u64 = 4;
const MESSAGE_MULTI_HEADERS: u64 = 6;

/// A varint is at most 10 bytes.
const MAX_VARINT_BYTES: u32 = 10;

fn malformed(what: &str) -> WireError {
    WireError::Malformed(what.to_string())
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Reading a field key (varint).
    Key { value: u64, shift: u32 },
    /// Reading the length of a length-delimited field.
    Len { value: u64, shift: u32 },
    /// Reading a varint field value.
    Varint { shift: u32 },
    /// Skipping this many bytes of a field value.
    Skip(u64),
}

/// Counts the messages of a `Batch` incrementally (see the module docs).
#[derive(Debug)]
pub struct Counter {
    state: State,
    messages: usize,
    max: usize,
}

impl Counter {
    /// A counter refusing more than `max` messages.
    pub fn new(max: usize) -> Self {
        Counter {
            state: State::Key { value: 0, shift: 0 },
            messages: 0,
            max,
        }
    }

    /// Takes the next bytes of the decoded body.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), WireError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Skip(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Key { value: 0, shift: 0 };
                    }
                }
                State::Key { value, shift } | State::Len { value, shift } => {
                    let b = data[0];
                    data = &data[1..];
                    if *shift >= 7 * MAX_VARINT_BYTES {
                        return Err(malformed("varint too long"));
                    }
                    *value |= u64::from(b & 0x7f) << *shift;
                    *shift += 7;
                    if b & 0x80 != 0 {
                        continue;
                    }
                    let value = *value;
                    self.state = match self.state {
                        State::Key { .. } => self.after_key(value)?,
                        _ => {
                            if value == 0 {
                                State::Key { value: 0, shift: 0 }
                            } else {
                                State::Skip(value)
                            }
                        }
                    };
                }
                State::Varint { shift } => {
                    let b = data[0];
                    data = &data[1..];
                    if *shift >= 7 * MAX_VARINT_BYTES {
                        return Err(malformed("varint too long"));
                    }
                    *shift += 7;
                    if b & 0x80 == 0 {
                        self.state = State::Key { value: 0, shift: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    fn after_key(&mut self, key: u64) -> Result<State, WireError> {
        let (field, wire_type) = (key >> 3, (key & 7) as u8);
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        if field == BATCH_MESSAGES {
            if wire_type != LEN {
                return Err(malformed("messages (field 1) must be length-delimited"));
            }
            self.messages += 1;
            if self.messages > self.max {
                return Err(WireError::TooManyMessages { limit: self.max });
            }
        }
        match wire_type {
            VARINT => Ok(State::Varint { shift: 0 }),
            FIXED64 => Ok(State::Skip(8)),
            LEN => Ok(State::Len { value: 0, shift: 0 }),
            FIXED32 => Ok(State::Skip(4)),
            _ => Err(malformed("unsupported wire type (groups or invalid)")),
        }
    }

    /// Ends the body: it must stop at a field boundary. Returns the message count.
    pub fn finish(&self) -> Result<usize, WireError> {
        match self.state {
            State::Key { shift: 0, .. } => Ok(self.messages),
            _ => Err(malformed("body ends inside a field")),
        }
    }
}

/// What decoding a batch buffer will allocate besides the buffer itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub messages: usize,
    /// Bytes of ids, subjects and header entries (copied into strings when decoded).
    /// Each multi-valued header entry also costs a struct: counted per message overhead.
    pub copied_bytes: usize,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for i in 0..MAX_VARINT_BYTES {
        let b = *buf.get(*pos).ok_or_else(|| malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("varint too long"))
}

/// Walks the fields of one message level, calling `on_len(field, bytes)` for each
/// length-delimited field; field `len_field` must be length-delimited.
fn fields<'a>(
    buf: &'a [u8],
    len_field: u64,
    mut on_len: impl FnMut(u64, &'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (field, wire_type) = (key >> 3, (key & 7) as u8);
        if field == 0 {
            return Err(malformed("field number 0"));
        }
        if field == len_field && wire_type != LEN {
            return Err(malformed("a message field that is not length-delimited"));
        }
        let skip = match wire_type {
            VARINT => {
                varint(buf, &mut pos)?;
                0
            }
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => {
                let len = varint(buf, &mut pos)?;
                let end = pos
                    .checked_add(usize::try_from(len).map_err(|_| malformed("length"))?)
                    .filter(|&e| e <= buf.len())
                    .ok_or_else(|| malformed("field runs past the end"))?;
                on_len(field, &buf[pos..end])?;
                pos = end;
                0
            }
            _ => return Err(malformed("unsupported wire type (groups or invalid)")),
        };
        pos = pos
            .checked_add(skip)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| malformed("field runs past the end"))?;
    }
    Ok(())
}

/// The [`Shape`] of a whole decoded batch buffer.
pub fn shape(buf: &[u8]) -> Result<Shape, WireError> {
    let mut s = Shape::default();
    fields(buf, BATCH_MESSAGES, |field, msg| {
        if field != BATCH_MESSAGES {
            return Ok(());
        }
        s.messages += 1;
        fields(msg, 0, |f, value| {
            if matches!(
                f,
                MESSAGE_ID | MESSAGE_SUBJECT | MESSAGE_HEADERS | MESSAGE_MULTI_HEADERS
            ) {
                s.copied_bytes += value.len();
            }
            Ok(())
        })
    })?;
    Ok(s)
}
