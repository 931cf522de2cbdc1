//! The response body: the inner body untouched, or chunks the layer buffered
//! (replayed with their trailers, then the rest of the inner body if it was
//! not read to the end), or nothing.
//!
//! Also the global buffer budget: the bytes held for hashing across all
//! in-flight responses.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::stream::{BoxError, Streamed};
use crate::validators::ContentHasher;

pin_project! {
    /// The body of a response that went through [`MediaCache`](crate::MediaCache).
    ///
    /// Yields `Bytes` frames whatever the inner body's data type. Its errors
    /// are the inner body's, boxed, or [`ContentChanged`](crate::ContentChanged)
    /// when a body streamed under an `ETag` the layer learned earlier turns
    /// out to be other bytes.
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Stream { #[pin] body: B },
        // Boxed so that the body of every other response stays as small as
        // the inner body.
        Chunks { replay: Box<Replay<B>> },
        // Too large to read first: hashed, verified or cut as it passes.
        Streamed { streamed: Box<Streamed<B>> },
        Empty,
    }
}

/// Buffered chunks being replayed, then what the inner body had left.
struct Replay<B: Body> {
    chunks: VecDeque<Bytes>,
    remaining: u64,
    rest: Option<Pin<Box<B>>>,
    error: Option<B::Error>,
    trailers: Option<HeaderMap>,
    reservation: Option<Reservation>,
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn stream(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    pub(crate) fn streamed(streamed: Streamed<B>) -> Self {
        Self {
            kind: Kind::Streamed {
                streamed: Box::new(streamed),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// Buffered chunks, then (if the inner body was not read to the end) the
    /// rest of it, then the error or trailers the inner body ended with.
    pub(crate) fn chunks(buffered: Buffered<B>) -> Self {
        let remaining = buffered.chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            kind: Kind::Chunks {
                replay: Box::new(Replay {
                    chunks: buffered.chunks,
                    remaining,
                    rest: buffered.rest,
                    error: buffered.error,
                    trailers: buffered.trailers,
                    reservation: buffered.reservation,
                }),
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Stream { .. } => "Stream",
            Kind::Chunks { .. } => "Chunks",
            Kind::Streamed { .. } => "Streamed",
            Kind::Empty => "Empty",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

impl<B: Body> Body for ResponseBody<B>
where
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Stream { body } => Poll::Ready(
                ready!(body.poll_frame(cx)).map(|r| r.map(to_bytes).map_err(Into::into)),
            ),
            KindProj::Streamed { streamed } => streamed.poll_frame(cx),
            KindProj::Chunks { replay } => {
                let Replay {
                    chunks,
                    remaining,
                    rest,
                    error,
                    trailers,
                    reservation,
                } = &mut **replay;
                if let Some(chunk) = chunks.pop_front() {
                    *remaining -= chunk.len() as u64;
                    if chunks.is_empty() {
                        // The buffered bytes are handed over: release them
                        // from the budget as the last one leaves.
                        reservation.take();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(body) = rest {
                    match ready!(body.as_mut().poll_frame(cx)) {
                        Some(frame) => {
                            return Poll::Ready(Some(frame.map(to_bytes).map_err(Into::into)));
                        }
                        None => *rest = None,
                    }
                }
                if let Some(error) = error.take() {
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Chunks { replay } => {
                let Replay {
                    chunks,
                    rest,
                    error,
                    trailers,
                    ..
                } = &**replay;
                chunks.is_empty()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
                    && error.is_none()
                    && trailers.is_none()
            }
            Kind::Streamed { streamed } => streamed.is_end_stream(),
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream { body } => body.size_hint(),
            Kind::Chunks { replay } => match &replay.rest {
                // A pending error must not look like the end of a complete
                // body: no exact length, so the server cannot frame the
                // bytes before the error as a whole response.
                None if replay.error.is_some() => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(replay.remaining);
                    hint
                }
                None => SizeHint::with_exact(replay.remaining),
                Some(body) => {
                    let inner = body.size_hint();
                    let mut hint = SizeHint::new();
                    hint.set_lower(inner.lower().saturating_add(replay.remaining));
                    if let Some(upper) = inner.upper() {
                        hint.set_upper(upper.saturating_add(replay.remaining));
                    }
                    hint
                }
            },
            Kind::Streamed { streamed } => streamed.size_hint(),
            // No exact length: the layer's empty bodies belong to 304, 412
            // and 416 answers, whose `Content-Length` (if any) describes the
            // representation, not this body. An exact 0 here makes servers and
            // frameworks (axum) write `Content-Length: 0`, which on a 304 to
            // HEAD contradicts the 200's length (RFC 9110 §8.6); the end of
            // the body is told by `is_end_stream` instead.
            Kind::Empty => SizeHint::new(),
        }
    }
}

/// Why [`Buffered::poll_fill`] stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// The body ended: everything is buffered.
    Ended,
    /// The body failed: `error` holds it.
    Failed,
    /// The next frame would go past the per-response limit.
    OverLimit,
    /// The global budget refused the next frame.
    OverBudget,
}

/// What the layer read of an inner body.
pub(crate) struct Buffered<B: Body> {
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) len: u64,
    pub(crate) rest: Option<Pin<Box<B>>>,
    pub(crate) error: Option<B::Error>,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) reservation: Option<Reservation>,
}

impl<B: Body> Buffered<B> {
    /// A whole body of `len` bytes in `chunks`, ended with `trailers`.
    pub(crate) fn complete(chunks: VecDeque<Bytes>, len: u64, trailers: Option<HeaderMap>) -> Self {
        Self {
            chunks,
            len,
            rest: None,
            error: None,
            trailers,
            reservation: None,
        }
    }

    pub(crate) fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
            rest: None,
            error: None,
            trailers: None,
            reservation: None,
        }
    }

    /// Makes sure `total` bytes are held against `budget` for this body,
    /// reserving only what is not held yet; `false` (nothing more reserved)
    /// when the budget cannot give it.
    pub(crate) fn reserve_to(&mut self, budget: &Arc<Budget>, total: u64) -> bool {
        let held = self.reservation.as_ref().map_or(0, |r| r.bytes);
        total <= held || budget.grow(&mut self.reservation, total - held)
    }

    /// Reads `body` into the buffer — hashing it with `hasher`, if any — until
    /// it ends, fails, or would go past `limit` bytes or the `budget`. Ready
    /// when one of those happened; `rest` then holds what was not read (the
    /// frame that went over is kept, so nothing is lost).
    pub(crate) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Option<Pin<Box<B>>>,
        mut hasher: Option<&mut ContentHasher>,
        limit: u64,
        budget: &Arc<Budget>,
    ) -> Poll<Filled> {
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Filled::Ended);
        };
        loop {
            match ready!(inner.as_mut().poll_frame(cx)) {
                None => {
                    *body = None;
                    return Poll::Ready(Filled::Ended);
                }
                Some(Err(error)) => {
                    self.error = Some(error);
                    *body = None;
                    return Poll::Ready(Filled::Failed);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        let len = bytes.len() as u64;
                        let within_limit = self.len + len <= limit;
                        let granted = within_limit && self.reserve_to(budget, self.len + len);
                        if let Some(hasher) = hasher.as_deref_mut() {
                            hasher.update_bytes(&bytes);
                        }
                        self.len += len;
                        self.chunks.push_back(bytes);
                        if !granted {
                            self.rest = body.take();
                            return Poll::Ready(if within_limit {
                                Filled::OverBudget
                            } else {
                                Filled::OverLimit
                            });
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut self.trailers {
                                Some(existing) => existing.extend(trailers),
                                None => self.trailers = Some(trailers),
                            }
                        }
                    }
                },
            }
        }
    }

    /// The whole body's length, when the part not read yet tells it
    /// exactly (a body of known size, as servers frame with
    /// `Content-Length`).
    pub(crate) fn exact_len(&self) -> Option<u64> {
        let rest = match &self.rest {
            Some(body) => body.size_hint().exact()?,
            None => 0,
        };
        self.len.checked_add(rest)
    }

    /// Whether the whole body was read without error: the chunks are the
    /// complete representation.
    pub(crate) fn is_complete(&self) -> bool {
        self.rest.is_none() && self.error.is_none()
    }
}

/// The global cap on bytes buffered for hashing across all in-flight
/// responses.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Reserves `bytes` more for `reservation`, or returns `false` (and
    /// reserves nothing) when that would exceed the limit.
    pub(crate) fn grow(
        self: &Arc<Self>,
        reservation: &mut Option<Reservation>,
        bytes: u64,
    ) -> bool {
        let granted = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if granted {
            reservation
                .get_or_insert_with(|| Reservation {
                    budget: self.clone(),
                    bytes: 0,
                })
                .bytes += bytes;
        }
        granted
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes held against the [`Budget`], returned when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    #[test]
    fn budget_refuses_past_its_limit_and_frees_on_drop() {
        let budget = Budget::new(10);
        let mut a = None;
        assert!(budget.grow(&mut a, 6));
        let mut b = None;
        assert!(!budget.grow(&mut b, 5));
        assert!(budget.grow(&mut b, 4));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn replay_yields_prefix_then_rest_then_trailers() {
        type Frames = StreamBody<
            futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
        >;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let rest: Frames = StreamBody::new(futures_util::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::trailers(trailers.clone())),
        ]));
        let mut buffered = Buffered::<Frames>::new();
        buffered.chunks.push_back(Bytes::from_static(b"ab"));
        buffered.rest = Some(Box::pin(rest));
        let body = ResponseBody::chunks(buffered);
        assert_eq!(body.size_hint().lower(), 2);
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_stream_reports_its_exact_size_and_an_empty_answer_only_its_end() {
        let body = ResponseBody::stream(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        // The body of a 304/412/416: ended, but no exact length that a
        // server would turn into `Content-Length: 0` (RFC 9110 §8.6).
        let empty = ResponseBody::<Full<Bytes>>::empty();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), None);
        assert_eq!(empty.size_hint().lower(), 0);
        assert!(empty.collect().await.unwrap().to_bytes().is_empty());
    }
}
