//! The chunked transfer coding (RFC 9112 7.1), decoded incrementally: bytes arrive in any split
//! and the decoder keeps its place in one small state (no buffer of its own). Framing bytes are
//! read one at a time (there are few); chunk data is handed back as a range of the caller's input,
//! never copied.
//!
//! Strict where a lenient reading could let two parsers disagree on where the body ends: chunk
//! sizes are hex digits only (no sign, no `0x`, at most `u64::MAX`), every line ends in CRLF,
//! chunk data is followed by CRLF, extensions are skipped but bounded, trailer lines must be
//! `name: value` and are bounded in total. Whitespace before `;` or the line end is allowed (the
//! grammar's BWS).

use std::ops::Range;

/// Bounds on what the decoder reads past without forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one chunk's extensions (after the size, to the line end).
    pub max_extension: usize,
    /// Bytes of the whole trailer section, line ends included.
    pub max_trailers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_extension: 4096,
            max_trailers: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size is not hexadecimal digits")]
    Size,
    #[error("chunk size overflows 64 bits")]
    SizeOverflow,
    #[error("control byte in a chunk extension")]
    Extension,
    #[error("chunk extension longer than the limit")]
    ExtensionTooLong,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("a line of the chunked framing does not end in CRLF")]
    LineEnd,
    #[error("malformed trailer field")]
    Trailer,
    #[error("trailer section larger than the limit")]
    TrailersTooLarge,
}

/// Where the decoder is in the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the size's hex digits (`digits`: at least one seen).
    Size {
        digits: bool,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    Extension,
    /// CR of a size line seen, LF next.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// The final CR seen, LF next.
    EndLf,
    Done,
}

/// What one call to [`Decoder::decode`] did with its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input used (framing and data); the rest is the caller's to offer again
    /// (or, once [`Decoder::is_done`], what follows the body).
    pub consumed: usize,
    /// Body bytes, a range of the input within `..consumed` (empty when none).
    pub data: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// The size being read, then what is left of the chunk's data.
    size: u64,
    /// Bytes of the current extension.
    extension: usize,
    /// Bytes of the trailer section so far.
    trailers: usize,
    limits: Limits,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            state: State::Size { digits: false },
            size: 0,
            extension: 0,
            trailers: 0,
            limits,
        }
    }

    /// Whether the last chunk and the trailer section have been read: the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the trailer section read so far (its final CRLF included): they are always the
    /// last ones a call consumed, so a caller that forwards trailers can keep them.
    pub fn trailer_len(&self) -> usize {
        self.trailers
    }

    /// Reads framing from `input` up to and including at most one run of chunk data, which it
    /// returns as a range of `input`. Call again with the rest (`input[consumed..]`) until that is
    /// empty or the body is done. Always uses at least one byte of a non-empty input unless done.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Done => break,
                State::Data => return Ok(self.data(input, at)),
                _ => {
                    self.step(input[at])?;
                    at += 1;
                }
            }
        }
        Ok(Decoded {
            consumed: at,
            data: at..at,
        })
    }

    fn data(&mut self, input: &[u8], at: usize) -> Decoded {
        let available = (input.len() - at) as u64;
        let take = self.size.min(available);
        self.size -= take;
        if self.size == 0 {
            self.state = State::DataCr;
        }
        let end = at + take as usize;
        Decoded {
            consumed: end,
            data: at..end,
        }
    }

    /// One framing byte.
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { digits } => self.size_byte(b, digits)?,
            State::SizeSpace => match b {
                b' ' | b'\t' => State::SizeSpace,
                b';' => self.extension_start(),
                b'\r' => State::SizeLf,
                _ => return Err(ChunkError::Size),
            },
            State::Extension => self.extension_byte(b)?,
            State::SizeLf => match (b, self.size) {
                (b'\n', 0) => State::TrailerStart,
                (b'\n', _) => State::Data,
                _ => return Err(ChunkError::LineEnd),
            },
            State::DataCr | State::DataLf => self.data_end(b)?,
            State::TrailerStart
            | State::TrailerName
            | State::TrailerValue
            | State::TrailerLf
            | State::EndLf => self.trailer_byte(b)?,
            // neither reaches here: `decode` stops at both
            State::Data | State::Done => self.state,
        };
        Ok(())
    }

    fn size_byte(&mut self, b: u8, digits: bool) -> Result<State, ChunkError> {
        if let Some(digit) = hex(b) {
            self.size = self
                .size
                .checked_mul(16)
                .and_then(|s| s.checked_add(digit))
                .ok_or(ChunkError::SizeOverflow)?;
            return Ok(State::Size { digits: true });
        }
        match b {
            _ if !digits => Err(ChunkError::Size),
            b' ' | b'\t' => Ok(State::SizeSpace),
            b';' => Ok(self.extension_start()),
            b'\r' => Ok(State::SizeLf),
            _ => Err(ChunkError::Size),
        }
    }

    fn extension_start(&mut self) -> State {
        self.extension = 0;
        State::Extension
    }

    /// Any visible byte, space or tab, up to the line end; not parsed (nobody here reads them).
    fn extension_byte(&mut self, b: u8) -> Result<State, ChunkError> {
        if b == b'\r' {
            return Ok(State::SizeLf);
        }
        if !is_field_byte(b) {
            return Err(ChunkError::Extension);
        }
        self.extension += 1;
        if self.extension > self.limits.max_extension {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(State::Extension)
    }

    fn data_end(&mut self, b: u8) -> Result<State, ChunkError> {
        match (self.state, b) {
            (State::DataCr, b'\r') => Ok(State::DataLf),
            (State::DataLf, b'\n') => Ok(State::Size { digits: false }),
            _ => Err(ChunkError::DataEnd),
        }
    }

    /// The trailer section: `name: value` lines (no obs-fold), then CRLF.
    fn trailer_byte(&mut self, b: u8) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > self.limits.max_trailers {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, b) if is_field_byte(b) => State::TrailerValue,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf | State::TrailerLf, _) => return Err(ChunkError::LineEnd),
            _ => return Err(ChunkError::Trailer),
        })
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// A byte a field value (or an extension) may hold: visible ASCII, obs-text, space, tab.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// RFC 9110 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The whole of `input` decoded at once: the body and how many bytes it took, or `None` if the
/// input ends first. For tests and fuzzing.
pub fn decode_all(input: &[u8], limits: Limits) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut decoder = Decoder::new(limits);
    let mut body = Vec::new();
    let mut at = 0;
    while at < input.len() && !decoder.is_done() {
        let step = decoder.decode(&input[at..])?;
        body.extend_from_slice(&input[at..][step.data]);
        at += step.consumed;
    }
    Ok(decoder.is_done().then_some((body, at)))
}

#[cfg(test)]
mod tests;
