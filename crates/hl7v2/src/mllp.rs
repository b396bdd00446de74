//! MLLP framing (feature `codec`): a tokio-util [`Decoder`] and [`Encoder`].
//!
//! A frame is `0x0B <message> 0x1C 0x0D`. The decoder:
//! - skips and counts any bytes before a start block or between frames
//!   (keep-alive newlines, line noise, a sender's stray CR), never fatal;
//! - treats a partial frame as "need more bytes" (`Ok(None)`), and remembers
//!   how far it has scanned so a large frame arriving in pieces is scanned
//!   once;
//! - ends a frame at `0x1C 0x0D`, and also at a `0x1C` not followed by `0x0D`
//!   (some senders omit the CR; `0x1C` cannot occur in HL7 text). When the
//!   `0x1C` is the last byte received the frame is returned at once rather
//!   than waiting for a CR that may never come, and a CR that follows later
//!   is swallowed;
//! - refuses a frame larger than the limit with [`MllpError::FrameTooLarge`],
//!   which carries the frame's first segment (so the receiver can still NAK
//!   it with MSA-2 set), then discards the rest of that frame and resumes at
//!   the next start block if decoding continues.
//!
//! With `FramedRead`, tokio-util ends the stream (yields `None`) after any
//! decoder error. A receiver normally answers the oversized message with a
//! NAK and closes the connection; one that polls again carries on with the
//! next frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const START_BLOCK: u8 = 0x0B;
/// End block.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return after the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// Default maximum frame size: 16 MiB, room for an MDM carrying a PDF.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// How much of an oversized frame's first segment is kept for the NAK.
const HEAD_BYTES: usize = 4096;

/// Whether a failure is worth retrying or the data is bad (see
/// [`MllpError::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The connection failed: retry on a new one.
    Transient,
    /// The data is bad: retrying the same bytes fails again.
    Permanent,
}

/// Errors of the MLLP codec.
///
/// ```
/// use bytes::BytesMut;
/// use hl7v2::mllp::{ErrorClass, MllpCodec, MllpError};
/// use tokio_util::codec::Decoder;
/// let mut codec = MllpCodec::new(4);
/// let err = codec.decode(&mut BytesMut::from(&b"\x0bMSH|^~\\&"[..])).unwrap_err();
/// assert!(matches!(err, MllpError::FrameTooLarge { limit: 4, .. }));
/// assert_eq!(err.class(), ErrorClass::Permanent);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MllpError {
    /// A frame exceeded the configured maximum.
    #[error("MLLP frame exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The configured maximum.
        limit: usize,
        /// The frame's first segment (up to 4 KiB), to build a NAK from.
        head: Bytes,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed inside an MLLP frame after {received} bytes")]
    IncompleteFrame {
        /// Bytes of the frame received before the end of the stream.
        received: usize,
    },
    /// Reading or writing the socket failed.
    #[error("MLLP I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl MllpError {
    /// Whether retrying can help.
    pub fn class(&self) -> ErrorClass {
        match self {
            MllpError::FrameTooLarge { .. } => ErrorClass::Permanent,
            MllpError::IncompleteFrame { .. } | MllpError::Io(_) => ErrorClass::Transient,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Looking for a start block.
    Between,
    /// Inside a frame (the start block is consumed); `scanned` bytes of the
    /// buffer are known to hold no end block.
    InFrame { scanned: usize },
    /// Discarding the rest of an oversized frame.
    Discarding,
}

/// The MLLP codec.
///
/// ```
/// use bytes::BytesMut;
/// use hl7v2::mllp::MllpCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = MllpCodec::default();
/// let mut wire = BytesMut::new();
/// codec.encode(&b"MSH|^~\\&|A"[..], &mut wire).unwrap();
/// assert_eq!(&wire[..], b"\x0bMSH|^~\\&|A\x1c\x0d");
///
/// let mut input = BytesMut::from(&b"\r\n\x0bMSH|^~\\&|B\x1c\x0d\x0bMSH|^~"[..]);
/// assert_eq!(&codec.decode(&mut input).unwrap().unwrap()[..], b"MSH|^~\\&|B");
/// assert_eq!(codec.decode(&mut input).unwrap(), None); // partial frame
/// assert_eq!(codec.skipped_bytes(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame_bytes: usize,
    skipped: u64,
    state: State,
    /// A frame ended with a bare 0x1C at the end of the buffer: a CR that
    /// arrives next belongs to it and is not junk.
    swallow_cr: bool,
}

impl Default for MllpCodec {
    fn default() -> Self {
        MllpCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl MllpCodec {
    /// A codec refusing frames larger than `max_frame_bytes` (the message,
    /// without the three framing bytes).
    pub fn new(max_frame_bytes: usize) -> MllpCodec {
        MllpCodec { max_frame_bytes, skipped: 0, state: State::Between, swallow_cr: false }
    }

    /// The maximum frame size.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Bytes skipped so far: outside frames, and the discarded part of
    /// oversized frames.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    fn skip(&mut self, src: &mut BytesMut, n: usize) {
        self.skipped += n as u64;
        src.advance(n);
    }
}

impl Decoder for MllpCodec {
    type Item = BytesMut;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, MllpError> {
        loop {
            if self.swallow_cr && !src.is_empty() {
                if src[0] == CARRIAGE_RETURN {
                    src.advance(1);
                }
                self.swallow_cr = false;
            }
            match self.state {
                State::Between => match memchr::memchr(START_BLOCK, src) {
                    Some(i) => {
                        self.skip(src, i);
                        src.advance(1);
                        self.state = State::InFrame { scanned: 0 };
                    }
                    None => {
                        let n = src.len();
                        self.skip(src, n);
                        return Ok(None);
                    }
                },
                State::Discarding => match memchr::memchr(END_BLOCK, src) {
                    Some(i) => {
                        self.skip(src, i + 1);
                        self.state = State::Between;
                        self.swallow_cr = true;
                    }
                    None => {
                        let n = src.len();
                        self.skip(src, n);
                        return Ok(None);
                    }
                },
                State::InFrame { scanned } => {
                    let limit = self.max_frame_bytes;
                    // Never look further than one byte past the limit.
                    let window = src.len().min(limit.saturating_add(1));
                    match memchr::memchr(END_BLOCK, &src[scanned..window]) {
                        Some(i) => {
                            let end = scanned + i;
                            let frame = src.split_to(end);
                            src.advance(1);
                            self.state = State::Between;
                            match src.first() {
                                Some(&CARRIAGE_RETURN) => src.advance(1),
                                Some(_) => {}
                                None => self.swallow_cr = true,
                            }
                            return Ok(Some(frame));
                        }
                        None if window > limit => {
                            let first_line = memchr::memchr2(b'\r', b'\n', &src[..window]).unwrap_or(window);
                            let head = Bytes::copy_from_slice(&src[..first_line.min(HEAD_BYTES)]);
                            self.skip(src, window);
                            self.state = State::Discarding;
                            return Err(MllpError::FrameTooLarge { limit, head });
                        }
                        None => {
                            self.state = State::InFrame { scanned: window };
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, MllpError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        match self.state {
            State::InFrame { .. } => {
                let received = src.len();
                self.skip(src, received);
                self.state = State::Between;
                Err(MllpError::IncompleteFrame { received })
            }
            State::Between | State::Discarding => Ok(None),
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = MllpError;

    /// Frames one message. Frames larger than the limit are written anyway:
    /// the limit protects this side's memory, the peer applies its own.
    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), MllpError> {
        let msg = item.as_ref();
        dst.reserve(msg.len() + 3);
        dst.put_u8(START_BLOCK);
        dst.put_slice(msg);
        dst.put_u8(END_BLOCK);
        dst.put_u8(CARRIAGE_RETURN);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut MllpCodec, input: &[u8]) -> Vec<Result<Vec<u8>, String>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        out
    }

    #[test]
    fn frames_split_at_every_byte_decode_the_same() {
        let wire = b"junk\x0bMSH|1\rPID|1\x1c\x0d\r\n\x0bMSH|2\x1c\x0d";
        for cut in 0..wire.len() {
            let mut codec = MllpCodec::default();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut frames = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                frames.push(f.to_vec());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                frames.push(f.to_vec());
            }
            assert_eq!(frames, [b"MSH|1\rPID|1".to_vec(), b"MSH|2".to_vec()], "cut at {cut}");
            assert_eq!(codec.skipped_bytes(), 6, "cut at {cut}");
        }
    }

    #[test]
    fn end_block_without_cr_ends_the_frame() {
        let mut codec = MllpCodec::default();
        let frames = decode_all(&mut codec, b"\x0bA\x1c\x0bB\x1c");
        assert_eq!(frames, [Ok(b"A".to_vec()), Ok(b"B".to_vec())]);
        // The CR arriving after a trailing bare 0x1C is not counted as junk.
        assert_eq!(decode_all(&mut codec, b"\r"), []);
        assert_eq!(codec.skipped_bytes(), 0);
    }

    #[test]
    fn oversized_frame_is_an_error_then_decoding_resumes() {
        let mut codec = MllpCodec::new(8);
        let frames = decode_all(&mut codec, b"\x0bMSH|123\rPID|toolong\x1c\x0d\x0bMSH|ok\x1c\x0d");
        assert_eq!(frames, [Err("MLLP frame exceeds the limit of 8 bytes".into()), Ok(b"MSH|ok".to_vec())]);
        // A frame of exactly the limit is fine.
        assert_eq!(decode_all(&mut codec, b"\x0b12345678\x1c\x0d"), [Ok(b"12345678".to_vec())]);
    }

    #[test]
    fn oversized_error_carries_the_first_segment() {
        let mut codec = MllpCodec::new(10);
        let mut buf = BytesMut::from(&b"\x0bMSH|^~\\&\rPID|1|2|3"[..]);
        match codec.decode(&mut buf) {
            Err(MllpError::FrameTooLarge { head, .. }) => assert_eq!(&head[..], b"MSH|^~\\&"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eof_inside_a_frame_is_an_incomplete_frame() {
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::from(&b"\x0bMSH|"[..]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(MllpError::IncompleteFrame { received: 4 })));
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }
}
