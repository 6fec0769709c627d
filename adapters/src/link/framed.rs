//! Frames over a QUIC stream: `core::wire` length-prefixed frames read from a `RecvStream`
//! through a [`FrameDecoder`] (bounded by the maximum frame size), and written to a
//! `SendStream`.

use probermesh_core::wire::{FrameDecoder, LEN_PREFIX_BYTES, WireError};
use quinn::{ReadError, ReadExactError, RecvStream, WriteError};

/// Bytes asked from the stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The bytes are not a valid frame (too large, undecodable, trailing bytes).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended inside a frame ({buffered_bytes} bytes of it received)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered_bytes: usize,
    },
    /// Reading failed (connection lost, stream reset); the cause is in the message, not a
    /// `source`, so a chain says it once.
    #[error("reading the stream failed: {0}")]
    Read(ReadError),
}

impl From<ReadError> for FrameError {
    fn from(error: ReadError) -> Self {
        Self::Read(error)
    }
}

/// Reads messages from a stream, one frame at a time.
#[derive(Debug)]
pub(crate) struct FrameReader {
    stream: RecvStream,
    decoder: FrameDecoder,
    chunk: Vec<u8>,
}

impl FrameReader {
    /// A reader accepting frames of up to `max_frame_len` bytes.
    pub(crate) fn new(stream: RecvStream, max_frame_len: usize) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(max_frame_len),
            chunk: vec![0; READ_CHUNK_BYTES],
        }
    }

    /// The next frame, decoded from its body by `decode` (in the connection's protocol
    /// version); `Ok(None)` when the peer finished the stream at a frame boundary.
    /// Cancel-safe: bytes read are kept in the decoder.
    pub(crate) async fn next<T, E>(
        &mut self,
        mut decode: impl FnMut(&[u8]) -> Result<T, E>,
    ) -> Result<Option<T>, FrameError>
    where
        FrameError: From<E>,
    {
        loop {
            if let Some(body) = self.decoder.next_body()? {
                return Ok(Some(decode(body)?));
            }
            match self.stream.read(&mut self.chunk).await? {
                Some(n) => self.decoder.push(&self.chunk[..n]),
                None if self.decoder.buffered_len() == 0 => return Ok(None),
                None => {
                    return Err(FrameError::Truncated {
                        buffered_bytes: self.decoder.buffered_len(),
                    });
                }
            }
        }
    }
}

/// Reads exactly one frame of at most `max_frame_len` bytes from the start of `stream`
/// (the `Hello` or its answer), consuming nothing beyond it; its body.
pub(crate) async fn read_first_body(
    stream: &mut RecvStream,
    max_frame_len: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    read_exact(stream, &mut prefix).await?;
    let len = u64::from(u32::from_be_bytes(prefix));
    if len > max_frame_len as u64 {
        return Err(WireError::FrameTooLarge { len, max_frame_len }.into());
    }
    let mut body = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    read_exact(stream, &mut body).await?;
    Ok(body)
}

async fn read_exact(stream: &mut RecvStream, buf: &mut [u8]) -> Result<(), FrameError> {
    stream.read_exact(buf).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(n) => FrameError::Truncated { buffered_bytes: n },
        ReadExactError::ReadError(e) => FrameError::Read(e),
    })
}

/// Why a frame could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteFrameError {
    /// The message does not fit in a frame.
    #[error(transparent)]
    Encode(#[from] WireError),
    /// Writing failed (connection lost, stream stopped); the cause is in the message, not a
    /// `source`, so a chain says it once.
    #[error("writing the stream failed: {0}")]
    Write(WriteError),
}

impl From<WriteError> for WriteFrameError {
    fn from(error: WriteError) -> Self {
        Self::Write(error)
    }
}
