//! A handler serving media that a test may change behind the layer's back,
//! in 64 KiB chunks (or as one body of known length), ignoring `Range`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::LAST_MODIFIED;
use tower_media_cache::MediaCacheLayer;

pub const MIB: usize = 1024 * 1024;
pub const LEN: usize = 48 * MIB;
pub const CHUNK: usize = 64 * 1024;

/// The media behind the handler, which the test may change behind the
/// layer's back, and what the handler did.
pub struct Media {
    bytes: Mutex<Bytes>,
    last_modified: Option<&'static str>,
    /// Send `Content-Length` (a body of known size) instead of chunks.
    sized: bool,
    /// Copy each chunk into a new buffer, as a handler reading a file does.
    fresh: bool,
    calls: AtomicUsize,
    /// Bytes the handler's stream has been asked for.
    produced: AtomicU64,
}

impl Media {
    pub fn new(bytes: Bytes) -> Arc<Self> {
        Arc::new(Self {
            bytes: Mutex::new(bytes),
            last_modified: None,
            sized: false,
            fresh: false,
            calls: AtomicUsize::new(0),
            produced: AtomicU64::new(0),
        })
    }

    pub fn with_last_modified(bytes: Bytes) -> Arc<Self> {
        let mut media = Arc::into_inner(Self::new(bytes)).unwrap();
        media.last_modified = Some("Tue, 24 Nov 2026 10:00:00 GMT");
        Arc::new(media)
    }

    pub fn sized(bytes: Bytes) -> Arc<Self> {
        let mut media = Arc::into_inner(Self::new(bytes)).unwrap();
        media.sized = true;
        Arc::new(media)
    }

    /// Chunks in new buffers, of known total size when `sized`.
    pub fn fresh(bytes: Bytes, sized: bool) -> Arc<Self> {
        let mut media = Arc::into_inner(Self::new(bytes)).unwrap();
        (media.fresh, media.sized) = (true, sized);
        Arc::new(media)
    }

    pub fn set(&self, bytes: Bytes) {
        *self.bytes.lock().unwrap() = bytes;
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::SeqCst)
    }
}

/// `/video`: the media in 64 KiB chunks, `Range` ignored, behind `layer`
/// as `Router::layer` puts it (per method).
pub fn app(media: Arc<Media>, layer: MediaCacheLayer) -> Router {
    routes(media).layer(layer)
}

/// The same with the layer around the whole router (`wrap_router`).
pub fn app_whole(media: Arc<Media>, layer: MediaCacheLayer) -> Router {
    Router::new().fallback_service(layer.wrap_router(routes(media)))
}

/// `/video` without a layer.
pub fn routes(media: Arc<Media>) -> Router {
    Router::new().route(
        "/video",
        axum::routing::get(move || {
            let media = media.clone();
            async move {
                media.calls.fetch_add(1, Ordering::SeqCst);
                let bytes = media.bytes.lock().unwrap().clone();
                let mut response = if media.fresh {
                    let body = FileLike {
                        bytes,
                        at: 0,
                        sized: media.sized,
                    };
                    Body::new(body).into_response()
                } else if media.sized {
                    Body::from(bytes).into_response()
                } else {
                    let counted = media.clone();
                    let chunks = (0..bytes.len()).step_by(CHUNK).map(move |start| {
                        Ok::<_, Infallible>(bytes.slice(start..bytes.len().min(start + CHUNK)))
                    });
                    let stream = futures_util::stream::iter(chunks).inspect(move |chunk| {
                        if let Ok(chunk) = chunk {
                            counted
                                .produced
                                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        }
                    });
                    Body::from_stream(stream).into_response()
                };
                if let Some(date) = media.last_modified {
                    response
                        .headers_mut()
                        .insert(LAST_MODIFIED, date.parse().unwrap());
                }
                response
            }
        }),
    )
}

/// A body read in 64 KiB pieces, each copied into a buffer of its own, as a
/// file is read; of known size when `sized`.
struct FileLike {
    bytes: Bytes,
    at: usize,
    sized: bool,
}

impl http_body::Body for FileLike {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let (at, len) = (self.at, self.bytes.len());
        if at == len {
            return std::task::Poll::Ready(None);
        }
        let end = len.min(at + CHUNK);
        let piece = Bytes::copy_from_slice(&self.bytes[at..end]);
        self.at = end;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let left = (self.bytes.len() - self.at) as u64;
        match self.sized {
            true => http_body::SizeHint::with_exact(left),
            false => http_body::SizeHint::default(),
        }
    }
}
