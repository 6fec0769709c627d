//! The response body: decoded (`compression:`), counted against `body_size_limit`, and kept
//! only when a body regexp needs it, with a hard cap so a huge or endless body cannot exhaust
//! memory.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use probermesh_core::model::HttpFailure;
use probermesh_core::model::http_module::Compression;

/// Most body bytes kept for `fail_if_body_*` checks when `body_size_limit` is unlimited.
pub(crate) const MAX_KEPT_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// Counts (and maybe keeps) decoded bytes; fails past the limit.
#[derive(Debug)]
struct Sink {
    kept: Option<Vec<u8>>,
    keep_cap: u64,
    limit: Option<u64>,
    total: u64,
    /// Shared with the reader, which cannot reach the sink once a decoder fails.
    over_limit: Arc<AtomicBool>,
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.total += data.len() as u64;
        if self.limit.is_some_and(|limit| self.total > limit) {
            self.over_limit.store(true, Ordering::Relaxed);
            return Err(io::Error::other("body size limit exceeded"));
        }
        if let Some(kept) = &mut self.kept {
            let room = usize::try_from(self.keep_cap.saturating_sub(kept.len() as u64))
                .unwrap_or(usize::MAX);
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Identity(Sink),
    Gzip(Box<flate2::write::GzDecoder<Sink>>),
    Deflate(Box<flate2::write::ZlibDecoder<Sink>>),
    Brotli(Box<brotli::DecompressorWriter<Sink>>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Identity(_) => "Identity",
            Self::Gzip(_) => "Gzip",
            Self::Deflate(_) => "Deflate",
            Self::Brotli(_) => "Brotli",
        })
    }
}

/// Consumes one response body.
#[derive(Debug)]
pub(crate) struct BodyReader {
    decoder: Decoder,
    over_limit: Arc<AtomicBool>,
}

/// What [`BodyReader::finish`] hands back.
#[derive(Debug)]
pub(crate) struct Body {
    /// The decoded bytes, when kept.
    pub(crate) kept: Option<Vec<u8>>,
}

impl BodyReader {
    /// A reader for a body sent with `content_encoding` (the response header, lower-case),
    /// for a module that asked for `compression`.
    pub(crate) fn new(
        compression: Compression,
        content_encoding: Option<&str>,
        limit: Option<u64>,
        keep: bool,
    ) -> Result<Self, HttpFailure> {
        let over_limit = Arc::new(AtomicBool::new(false));
        let sink = Sink {
            kept: keep.then(Vec::new),
            keep_cap: limit
                .unwrap_or(MAX_KEPT_BODY_BYTES)
                .min(MAX_KEPT_BODY_BYTES),
            limit,
            total: 0,
            over_limit: Arc::clone(&over_limit),
        };
        let encoding = content_encoding.map(str::trim).filter(|e| !e.is_empty());
        let decoder = match (compression, encoding) {
            (_, None | Some("identity")) => Decoder::Identity(sink),
            (Compression::Gzip, Some("gzip" | "x-gzip")) => {
                Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(sink)))
            }
            (Compression::Deflate, Some("deflate")) => {
                Decoder::Deflate(Box::new(flate2::write::ZlibDecoder::new(sink)))
            }
            (Compression::Brotli, Some("br")) => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 4096)))
            }
            // Encoded although we did not ask (or with another algorithm): blackbox fails too.
            _ => return Err(HttpFailure::Compression),
        };
        Ok(Self {
            decoder,
            over_limit,
        })
    }

    /// Feeds one chunk of the body as received.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), HttpFailure> {
        // Decoders buffer: flush so the limit is enforced as the body arrives.
        let written = match &mut self.decoder {
            Decoder::Identity(sink) => sink.write_all(chunk),
            Decoder::Gzip(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::Deflate(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::Brotli(d) => d.write_all(chunk).and_then(|()| d.flush()),
        };
        written.map_err(|_| self.failure())
    }

    /// Ends the body.
    pub(crate) fn finish(self) -> Result<Body, HttpFailure> {
        let sink = match self.decoder {
            Decoder::Identity(sink) => Ok(sink),
            Decoder::Gzip(d) => d.finish(),
            Decoder::Deflate(d) => d.finish(),
            Decoder::Brotli(d) => d
                .into_inner()
                .map_err(|_| io::Error::other("truncated brotli")),
        };
        match sink {
            Ok(sink) => Ok(Body { kept: sink.kept }),
            Err(_) if self.over_limit.load(Ordering::Relaxed) => Err(HttpFailure::BodyTooLarge),
            Err(_) => Err(HttpFailure::Compression),
        }
    }

    fn failure(&self) -> HttpFailure {
        if self.over_limit.load(Ordering::Relaxed) {
            HttpFailure::BodyTooLarge
        } else {
            HttpFailure::Compression
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression as Level;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Level::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_is_decoded_in_chunks() {
        let encoded = gzip(b"hello gzip world");
        let mut reader = BodyReader::new(Compression::Gzip, Some("gzip"), None, true).unwrap();
        for chunk in encoded.chunks(3) {
            reader.push(chunk).unwrap();
        }
        assert_eq!(reader.finish().unwrap().kept.unwrap(), b"hello gzip world");
    }

    #[test]
    fn the_limit_applies_to_decoded_bytes() {
        let encoded = gzip(&[b'a'; 10_000]);
        assert!(encoded.len() < 1_000);
        let mut reader =
            BodyReader::new(Compression::Gzip, Some("gzip"), Some(5_000), false).unwrap();
        assert_eq!(reader.push(&encoded), Err(HttpFailure::BodyTooLarge));
    }

    #[test]
    fn an_unrequested_encoding_or_a_corrupt_body_fails_compression() {
        assert_eq!(
            BodyReader::new(Compression::Identity, Some("gzip"), None, false).unwrap_err(),
            HttpFailure::Compression
        );
        assert_eq!(
            BodyReader::new(Compression::Gzip, Some("br"), None, false).unwrap_err(),
            HttpFailure::Compression
        );
        let mut reader = BodyReader::new(Compression::Gzip, Some("gzip"), None, false).unwrap();
        let _ = reader.push(b"definitely not gzip");
        assert!(reader.finish().is_err());
    }

    #[test]
    fn plain_bodies_are_kept_only_when_asked_and_capped() {
        let mut reader = BodyReader::new(Compression::Gzip, None, None, false).unwrap();
        reader.push(b"abc").unwrap();
        assert!(reader.finish().unwrap().kept.is_none());
        let mut reader = BodyReader::new(Compression::Identity, None, Some(2), true).unwrap();
        assert_eq!(reader.push(b"abc"), Err(HttpFailure::BodyTooLarge));
    }

    #[test]
    fn brotli_and_deflate_decode() {
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(b"brotli body").unwrap();
        }
        let mut reader = BodyReader::new(Compression::Brotli, Some("br"), None, true).unwrap();
        reader.push(&br).unwrap();
        assert_eq!(reader.finish().unwrap().kept.unwrap(), b"brotli body");

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Level::default());
        z.write_all(b"deflate body").unwrap();
        let z = z.finish().unwrap();
        let mut reader =
            BodyReader::new(Compression::Deflate, Some("deflate"), None, true).unwrap();
        reader.push(&z).unwrap();
        assert_eq!(reader.finish().unwrap().kept.unwrap(), b"deflate body");
    }
}
