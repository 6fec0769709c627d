//! Length-prefixed framing: how messages are cut out of a byte stream.
//! A frame is a 4-byte big-endian body length followed by that many bytes of postcard.
//! This module knows bytes only, not streams or sockets (like mini-redis's `Frame::check`), so
//! the QUIC adapter feeds it whatever it reads and the fuzzer feeds it anything at all.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::WireError;

/// Bytes of the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;

/// The default largest frame body: 8 MiB (a full pool of a large mesh fits comfortably).
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Encodes `msg` as one frame: length prefix plus postcard body.
///
/// # Errors
/// [`WireError::FrameTooLarge`] when the body would exceed `max_frame_len` (a frame is never
/// truncated), [`WireError::Encode`] when serde fails.
pub fn encode_frame<T: Serialize>(msg: &T, max_frame_len: usize) -> Result<Vec<u8>, WireError> {
    finish_frame(
        postcard::to_extend(msg, vec![0u8; LEN_PREFIX_BYTES]),
        max_frame_len,
    )
}

/// Checks the body length of a serialised frame and writes its prefix.
fn finish_frame(
    serialised: postcard::Result<Vec<u8>>,
    max_frame_len: usize,
) -> Result<Vec<u8>, WireError> {
    let mut frame = serialised.map_err(WireError::Encode)?;
    let body_len = frame.len() - LEN_PREFIX_BYTES;
    let too_large = || WireError::FrameTooLarge {
        len: body_len as u64,
        max_frame_len,
    };
    if body_len > max_frame_len {
        return Err(too_large());
    }
    let prefix = u32::try_from(body_len).map_err(|_| too_large())?;
    frame[..LEN_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

/// Encodes `AgentMessage::ResultBatch { seq, results }` as one frame from borrowed results,
/// `head` then `tail` (the same bytes as [`encode_frame`] of the owned message, in protocol v1
/// and v2 alike), each a [`super::ProbeResultV1`] or a domain result in a
/// [`super::borrowed::OutgoingResult`].
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_result_batch_frame<R: Serialize>(
    seq: u64,
    head: &[R],
    tail: &[R],
    max_frame_len: usize,
) -> Result<Vec<u8>, WireError> {
    /// A typical ICMP result takes about 70 bytes; reserving that avoids most regrowth.
    const TYPICAL_RESULT_BYTES: usize = 96;
    let capacity =
        LEN_PREFIX_BYTES + 16 + (head.len() + tail.len()).saturating_mul(TYPICAL_RESULT_BYTES);
    let mut out = Vec::with_capacity(capacity.min(max_frame_len.saturating_add(LEN_PREFIX_BYTES)));
    out.resize(LEN_PREFIX_BYTES, 0);
    finish_frame(
        postcard::to_extend(&super::ResultBatchRef { seq, head, tail }, out),
        max_frame_len,
    )
}

/// Decodes one frame body (without its length prefix) as a `T`.
///
/// # Errors
/// [`WireError::Decode`] for bytes that are not a `T`, [`WireError::TrailingBytes`] when bytes
/// remain after it.
pub fn decode_frame<T: DeserializeOwned>(frame_body: &[u8]) -> Result<T, WireError> {
    decode_frame_borrowed(frame_body)
}

/// Decodes one frame body (without its length prefix) as a `T` that may borrow from it.
///
/// # Errors
/// As [`decode_frame`].
pub fn decode_frame_borrowed<'a, T: Deserialize<'a>>(frame_body: &'a [u8]) -> Result<T, WireError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(frame_body).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            n_trailing: rest.len(),
        });
    }
    Ok(msg)
}

/// Splits a byte stream into messages.
///
/// Feed it with [`push`](Self::push) and drain it with [`next_frame`](Self::next_frame) until
/// that returns `Ok(None)`. Memory stays bounded: a length prefix above the limit is an error as
/// soon as its four bytes arrive, the body of an announced frame is never allocated ahead of its
/// bytes, and the buffer holds at most one incomplete frame plus the last pushed chunk.
///
/// After a [`WireError::FrameTooLarge`] the stream cannot be resynchronised: the decoder drops
/// its buffer, ignores further input and returns the same error forever. A
/// [`WireError::Decode`] or [`WireError::TrailingBytes`] consumes the bad frame, so the caller
/// may go on with the next one (or, more sensibly, close the connection).
#[derive(Debug)]
pub struct FrameDecoder {
    /// Received bytes; `buf[start..]` are not consumed yet.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    start: usize,
    /// Largest accepted body length.
    max_frame_len: usize,
    /// Set when an oversized prefix arrived; the stream is unusable from then on.
    oversized_len: Option<u64>,
}

impl FrameDecoder {
    /// A decoder accepting bodies of up to `max_frame_len` bytes.
    #[must_use]
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame_len,
            oversized_len: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.oversized_len.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        // Check the pending prefix now, so an oversized body is never buffered.
        if let Some(len) = self.pending_len()
            && len > self.max_frame_len as u64
        {
            self.poison(len);
        }
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] for a prefix above the limit, [`WireError::Decode`] and
    /// [`WireError::TrailingBytes`] for a body that is not exactly one `T`.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        match self.next_body()? {
            Some(body) => decode_frame(body).map(Some),
            None => Ok(None),
        }
    }

    /// The body of the next complete frame (without its length prefix), consumed;
    /// `Ok(None)` when more bytes are needed. For decoding that depends on the connection's
    /// protocol version ([`super::decode_hello`], [`super::decode_from_agent`], …).
    ///
    /// # Errors
    /// [`WireError::FrameTooLarge`] for a prefix above the limit.
    pub fn next_body(&mut self) -> Result<Option<&[u8]>, WireError> {
        if let Some(len) = self.oversized_len {
            return Err(WireError::FrameTooLarge {
                len,
                max_frame_len: self.max_frame_len,
            });
        }
        let Some(body_len) = self.pending_len() else {
            return Ok(None);
        };
        if body_len > self.max_frame_len as u64 {
            self.poison(body_len);
            return Err(WireError::FrameTooLarge {
                len: body_len,
                max_frame_len: self.max_frame_len,
            });
        }
        // `body_len <= max_frame_len`, so it fits a usize.
        let body_len = usize::try_from(body_len).unwrap_or(usize::MAX);
        let body_start = self.start + LEN_PREFIX_BYTES;
        let available = self.buf.len() - body_start;
        if available < body_len {
            return Ok(None);
        }
        let body_end = body_start + body_len;
        // The consumed bytes stay in `buf` until the next `push` drops them.
        self.start = body_end;
        Ok(Some(&self.buf[body_start..body_end]))
    }

    /// Bytes received and not consumed yet.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The body length announced by the pending prefix, once its four bytes are here.
    fn pending_len(&self) -> Option<u64> {
        let prefix: [u8; LEN_PREFIX_BYTES] = self
            .buf
            .get(self.start..self.start + LEN_PREFIX_BYTES)?
            .try_into()
            .ok()?;
        Some(u64::from(u32::from_be_bytes(prefix)))
    }

    /// Marks the stream unusable and frees the buffer.
    fn poison(&mut self, len: u64) {
        self.oversized_len = Some(len);
        self.buf = Vec::new();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AgentMessage, ServerMessage};

    fn ack_frame(seq: u64) -> Vec<u8> {
        encode_frame(&ServerMessage::Ack { seq }, DEFAULT_MAX_FRAME_LEN).unwrap()
    }

    #[test]
    fn frames_are_a_big_endian_length_and_a_postcard_body() {
        // Ack is variant 3; 300 is the varint ac 02.
        assert_eq!(ack_frame(300), vec![0, 0, 0, 3, 3, 0xac, 0x02]);
    }

    #[test]
    fn oversized_messages_are_an_error_not_a_truncated_frame() {
        let msg = ServerMessage::Task {
            task_id: 1,
            command: "x".repeat(100),
            timeout_ms: 1,
            output_limit_bytes: 1,
        };
        let err = encode_frame(&msg, 50).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::FrameTooLarge {
                    max_frame_len: 50,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("exceeds the limit of 50 bytes"),
            "{err}"
        );
    }

    #[test]
    fn an_oversized_prefix_is_rejected_before_its_body_arrives() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.push(&[0, 0, 4, 1]); // 1025 bytes announced
        assert_eq!(decoder.buffered_len(), 0, "the prefix is dropped at once");
        let err = decoder.next_frame::<ServerMessage>().unwrap_err();
        assert_eq!(
            err,
            WireError::FrameTooLarge {
                len: 1025,
                max_frame_len: 1024
            }
        );
        decoder.push(&[0u8; 4096]);
        assert_eq!(
            decoder.buffered_len(),
            0,
            "a poisoned decoder buffers nothing"
        );
        assert_eq!(decoder.next_frame::<ServerMessage>().unwrap_err(), err);
    }

    #[test]
    fn an_oversized_prefix_after_a_good_frame_is_rejected_in_turn() {
        let mut decoder = FrameDecoder::new(16);
        let mut bytes = ack_frame(7);
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        decoder.push(&bytes);
        assert_eq!(
            decoder.next_frame::<ServerMessage>().unwrap(),
            Some(ServerMessage::Ack { seq: 7 })
        );
        assert!(matches!(
            decoder.next_frame::<ServerMessage>(),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_frame_waits_for_the_rest() {
        let frame = ack_frame(300);
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        for byte in &frame[..frame.len() - 1] {
            decoder.push(std::slice::from_ref(byte));
            assert_eq!(decoder.next_frame::<ServerMessage>().unwrap(), None);
        }
        decoder.push(&frame[frame.len() - 1..]);
        assert_eq!(
            decoder.next_frame::<ServerMessage>().unwrap(),
            Some(ServerMessage::Ack { seq: 300 })
        );
        assert_eq!(decoder.next_frame::<ServerMessage>().unwrap(), None);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn garbage_is_a_decode_error_and_the_stream_goes_on() {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.push(&[0, 0, 0, 1, 0xee]); // variant 238 does not exist
        decoder.push(&ack_frame(1));
        let err = decoder.next_frame::<ServerMessage>().unwrap_err();
        assert!(matches!(err, WireError::Decode(_)), "{err}");
        assert!(err.to_string().starts_with("cannot decode frame"), "{err}");
        assert_eq!(
            decoder.next_frame::<ServerMessage>().unwrap(),
            Some(ServerMessage::Ack { seq: 1 })
        );
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_an_error() {
        let err = decode_frame::<ServerMessage>(&[3, 1, 0]).unwrap_err();
        assert_eq!(err, WireError::TrailingBytes { n_trailing: 1 });
        assert_eq!(err.to_string(), "frame holds 1 bytes after the message");
    }

    #[test]
    fn bodies_come_out_whole_without_their_prefix() {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut bytes = ack_frame(300);
        bytes.extend(ack_frame(1));
        decoder.push(&bytes[..5]);
        assert_eq!(decoder.next_body().unwrap(), None);
        decoder.push(&bytes[5..]);
        assert_eq!(decoder.next_body().unwrap(), Some(&[3, 0xac, 0x02][..]));
        assert_eq!(decoder.next_body().unwrap(), Some(&[3, 1][..]));
        assert_eq!(decoder.next_body().unwrap(), None);
        assert_eq!(decoder.buffered_len(), 0);
        decoder.push(&[0, 0, 0, 0]);
        assert_eq!(decoder.next_body().unwrap(), Some(&[][..]));
    }

    #[test]
    fn an_empty_body_is_a_decode_error() {
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        decoder.push(&[0, 0, 0, 0]);
        assert!(matches!(
            decoder.next_frame::<AgentMessage>(),
            Err(WireError::Decode(_))
        ));
    }
}
