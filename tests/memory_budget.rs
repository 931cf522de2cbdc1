//! The global buffer budget bounds the memory the layer holds for hashing.
//!
//! `budget_exhaustion_streams_the_rest_unhashed` is small and fast and runs
//! with every `cargo test`. The demonstration with real sizes is ignored by
//! default; run it on its own (it reads the process's peak RSS):
//!
//! ```sh
//! cargo test --release --test memory_budget -- --ignored --nocapture
//! ```
//!
//! Bodies are produced chunk by chunk on the fly and every chunk is checked
//! and dropped as it arrives, so that the only place where a whole body can
//! pile up is the layer's hashing buffer.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http::header::ETAG;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tower::{Layer, ServiceExt, service_fn};
use tower_media_cache::{CachePolicy, MediaCacheLayer};
use twox_hash::XxHash3_128;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const CHUNK: usize = 64 * KIB;

/// Byte `offset` of body `id`: a pattern that differs per body and per
/// position, so a lost, repeated or swapped chunk is noticed.
fn expected(id: u64, offset: usize, len: usize) -> Vec<u8> {
    let first_word = offset / 8;
    let last_word = (offset + len).div_ceil(8);
    let mut bytes = Vec::with_capacity((last_word - first_word) * 8);
    for word in first_word..last_word {
        let value = (word as u64 ^ (id << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    let skip = offset - first_word * 8;
    bytes[skip..skip + len].to_vec()
}

type Frames = StreamBody<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Unpin>>;

pin_project_lite::pin_project! {
    /// The chunks of one body, announcing their total length (as a body
    /// with `Content-Length` does) or not (as a chunked one).
    struct Chunks {
        #[pin]
        frames: Frames,
        len: Option<u64>,
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.project().frames.poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.len
            .map_or_else(http_body::SizeHint::new, http_body::SizeHint::with_exact)
    }
}

/// A body of `len` bytes made one 64 KiB chunk at a time, yielding to the
/// runtime before each one (as a body read from disk or a socket would).
fn body(id: u64, len: usize, known_length: bool) -> Chunks {
    let chunks = stream::unfold(0usize, move |offset| async move {
        if offset >= len {
            return None;
        }
        tokio::task::yield_now().await;
        let n = CHUNK.min(len - offset);
        let chunk = Bytes::from(expected(id, offset, n));
        Some((Ok(Frame::data(chunk)), offset + n))
    });
    Chunks {
        frames: StreamBody::new(Box::new(Box::pin(chunks))),
        len: known_length.then_some(len as u64),
    }
}

/// `/{id}/{len}` answers 200 with `len` bytes of pattern `id`; the length is
/// announced unless the query is `?chunked`.
fn inner(request: Request<()>) -> std::future::Ready<Result<Response<Chunks>, Infallible>> {
    let mut parts = request.uri().path()[1..].split('/');
    let id: u64 = parts.next().unwrap().parse().unwrap();
    let len: usize = parts.next().unwrap().parse().unwrap();
    let known_length = request.uri().query() != Some("chunked");
    std::future::ready(Ok(Response::new(body(id, len, known_length))))
}

fn uri(id: u64, len: usize, known_length: bool) -> String {
    let query = if known_length { "" } else { "?chunked" };
    format!("/{id}/{len}{query}")
}

/// Reads a body to the end, checking every byte and dropping each chunk as
/// it arrives; checks the content ETag when the layer set one. Returns
/// whether it had one.
async fn consume<B>(id: u64, len: usize, response: Response<B>) -> bool
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers().get(ETAG).cloned();
    let mut body = response.into_body();
    let mut hasher = XxHash3_128::new();
    let mut offset = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        assert_eq!(
            data[..],
            expected(id, offset, data.len())[..],
            "body {id} differs at {offset}"
        );
        hasher.write(&data);
        offset += data.len();
        tokio::task::yield_now().await;
    }
    assert_eq!(offset, len, "body {id} length");
    if let Some(etag) = &etag {
        let content = format!("\"{:032x}\"", hasher.finish_128());
        assert_eq!(etag, content.as_str(), "body {id} ETag");
    }
    etag.is_some()
}

fn policy() -> CachePolicy {
    CachePolicy::max_age(Duration::from_secs(3600))
}

/// Budget 1 MiB; four 512 KiB responses received one after the other and
/// held open: the first ones fill the budget, the later ones stream through
/// unhashed, and every body is intact. Once all are read the budget is free
/// again. For bodies of known length and for chunked ones.
#[tokio::test]
async fn budget_exhaustion_streams_the_rest_unhashed() {
    for known_length in [true, false] {
        let layer = MediaCacheLayer::new(policy()).buffer_budget(MIB as u64);
        let handle = layer.handle();
        let service = layer.layer(service_fn(inner));
        let len = 512 * KIB;

        let mut held = Vec::new();
        for id in 0..4u64 {
            let request = Request::get(uri(id, len, known_length)).body(()).unwrap();
            held.push((id, service.clone().oneshot(request).await.unwrap()));
        }
        let stats = handle.stats();
        assert!(stats.hashed >= 1, "{known_length} {stats:?}");
        assert!(
            stats.buffer_budget_exhausted >= 1,
            "{known_length} {stats:?}"
        );
        let mut with_etag = 0;
        for (id, response) in held {
            with_etag += u64::from(consume(id, len, response).await);
        }
        assert_eq!(with_etag, stats.hashed);
        // The ones the budget refused were hashed as they streamed.
        let stats = handle.stats();
        assert_eq!(
            (
                stats.hashed + stats.hashed_streaming,
                stats.streamed_unhashed
            ),
            (4, 0),
            "{known_length} {stats:?}"
        );

        // Everything was read and dropped: the budget is whole again.
        let request = Request::get(uri(9, len, known_length)).body(()).unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(consume(9, len, response).await);
        let after = handle.stats();
        assert_eq!(after.hashed, stats.hashed + 1, "{after:?}");
        assert_eq!(after.buffer_budget_exhausted, stats.buffer_budget_exhausted);
    }
}

/// A size field of `/proc/self/status` (`VmHWM:` is the peak resident set,
/// `VmRSS:` the current one), in bytes.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// 256 concurrent 5 MiB responses through a layer with a 64 MiB budget:
/// peak RSS stays within the budget plus 64 MiB, the budget was hit, and
/// every body arrives intact. `MEMORY_BUDGET_MIB` overrides the budget
/// (for example 2048 to see what the same load costs when nothing caps it);
/// `MEMORY_STAGGER_US` starts request `i` after `i` times that many
/// microseconds instead of all at once; `MEMORY_CHUNKED=1` sends the bodies
/// without announcing their length (by default they announce it, as media
/// with `Content-Length` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "memory demonstration: run alone with --release -- --ignored --nocapture"]
async fn concurrent_large_bodies_stay_within_the_budget() {
    const RESPONSES: u64 = 256;
    const LEN: usize = 5 * MIB;
    let budget_mib: u64 = std::env::var("MEMORY_BUDGET_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let budget = budget_mib * MIB as u64;
    let known_length = std::env::var("MEMORY_CHUNKED").map_or(true, |v| v != "1");
    let stagger_us: u64 = std::env::var("MEMORY_STAGGER_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    let start_rss = proc_status_kib("VmRSS:");
    let layer = MediaCacheLayer::new(policy()).buffer_budget(budget);
    let handle = layer.handle();
    let service = layer.layer(service_fn(inner));

    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..RESPONSES)
        .map(|id| {
            let service = service.clone();
            tokio::spawn(async move {
                if stagger_us > 0 {
                    tokio::time::sleep(Duration::from_micros(id * stagger_us)).await;
                }
                let request = Request::get(uri(id, LEN, known_length)).body(()).unwrap();
                let response = service.oneshot(request).await.unwrap();
                consume(id, LEN, response).await
            })
        })
        .collect();
    let mut with_etag = 0;
    for task in tasks {
        with_etag += u64::from(task.await.unwrap());
    }
    let elapsed = started.elapsed();

    let peak = proc_status_kib("VmHWM:");
    let stats = handle.stats();
    let limit = budget + 64 * MIB as u64;
    println!(
        "{RESPONSES} concurrent responses of {} MiB ({} MiB in all) in {elapsed:.2?}",
        LEN / MIB,
        RESPONSES as usize * LEN / MIB
    );
    println!(
        "requests started {stagger_us} µs apart; bodies {}",
        if known_length {
            "of known length"
        } else {
            "chunked (length unknown)"
        }
    );
    println!(
        "buffer budget {budget_mib} MiB; limit checked: budget + 64 MiB = {} MiB",
        limit / MIB as u64
    );
    println!(
        "RSS at start {:.1} MiB, peak RSS (VmHWM) {:.1} MiB",
        start_rss as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    println!(
        "hashed {}, hashed as they streamed {}, budget exhausted {}, with ETag {with_etag}",
        stats.hashed, stats.hashed_streaming, stats.buffer_budget_exhausted
    );
    assert_eq!(
        stats.hashed + stats.hashed_streaming,
        RESPONSES,
        "{stats:?}"
    );
    assert_eq!(with_etag, stats.hashed);
    if budget < RESPONSES * LEN as u64 && stagger_us == 0 {
        assert!(stats.buffer_budget_exhausted > 0, "{stats:?}");
    }
    assert!(
        peak <= limit,
        "peak RSS {peak} B is over budget + 64 MiB = {limit} B"
    );
}
