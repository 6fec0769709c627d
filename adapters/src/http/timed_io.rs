//! A transparent stream wrapper that notes when the request finished going out and when the
//! first response byte came in, so `processing` is measured at the socket, as Go's httptrace
//! `WroteRequest` → `GotFirstResponseByte` is, not when hyper has parsed the headers.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The instants a [`TimedIo`] noted.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IoMarks {
    /// The end of the last write before the first response byte.
    pub(crate) last_write: Option<Instant>,
    /// The first read that returned data after a write.
    pub(crate) first_read: Option<Instant>,
}

/// Shared access to the marks of a stream hyper owns.
#[derive(Clone, Debug, Default)]
pub(crate) struct MarksHandle(Arc<Mutex<IoMarks>>);

impl MarksHandle {
    pub(crate) fn get(&self) -> IoMarks {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut IoMarks)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Wraps a stream and records [`IoMarks`].
#[derive(Debug)]
pub(crate) struct TimedIo<S> {
    inner: S,
    marks: MarksHandle,
}

impl<S> TimedIo<S> {
    pub(crate) fn new(inner: S) -> (Self, MarksHandle) {
        let marks = MarksHandle::default();
        (
            Self {
                inner,
                marks: marks.clone(),
            },
            marks,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now();
            self.marks.update(|m| {
                if m.first_read.is_none() && m.last_write.is_some() {
                    m.first_read = Some(now);
                }
            });
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.note_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.note_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> TimedIo<S> {
    fn note_write(&self) {
        let now = Instant::now();
        self.marks.update(|m| {
            if m.first_read.is_none() {
                m.last_write = Some(now);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn marks_the_last_write_and_the_first_read_after_it() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut timed, marks) = TimedIo::new(client);
        server.write_all(b"early").await.unwrap();
        let mut buf = [0u8; 5];
        timed.read_exact(&mut buf).await.unwrap();
        assert!(
            marks.get().first_read.is_none(),
            "a read before any write is not a response"
        );
        timed.write_all(b"request").await.unwrap();
        let written = marks.get().last_write.unwrap();
        server.write_all(b"response").await.unwrap();
        let mut buf = [0u8; 8];
        timed.read_exact(&mut buf).await.unwrap();
        let first = marks.get().first_read.unwrap();
        assert!(first >= written);
        // Later writes do not move the marks.
        timed.write_all(b"more").await.unwrap();
        assert_eq!(marks.get().last_write, Some(written));
    }
}
