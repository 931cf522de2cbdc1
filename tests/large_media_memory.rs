//! Memory under large downloads, in a process of its own so that nothing
//! else moves its resident set: six concurrent 48 MiB downloads through
//! the layer, twice (the first round learns the tag, the second carries and
//! verifies it), over a real server on 127.0.0.1. Nothing is buffered but
//! the frame held back for verification, so the process grows by far less
//! than one body. `cargo test --test large_media_memory -- --nocapture`
//! prints the numbers BENCHMARKS.md quotes.

mod net;

use http::header::ETAG;
use http_body_util::BodyExt;
use net::media::{LEN, MIB, Media, app};
use net::{Running, client, etag_of, pseudo_random};
use tower_media_cache::MediaCacheLayer;

const DOWNLOADS: usize = 6;

/// A field of `/proc/self/status` in bytes: `VmHWM:` is the peak resident
/// set so far, `VmRSS:` the current one.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Bodies of known length (a file server's) stream from the first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_concurrent_48_mib_downloads_grow_the_process_by_far_less_than_one_body() {
    let growth = downloads(true).await;
    assert!(
        growth <= 64 * MIB as u64,
        "the process grew by {growth} bytes under {DOWNLOADS} downloads of {LEN}"
    );
}

/// Runs the downloads of fresh buffers, of known length or chunked, and
/// returns how much the peak resident set grew.
async fn downloads(sized: bool) -> u64 {
    let bytes = pseudo_random(LEN, 7);
    let tag = etag_of(&bytes);
    let media = Media::fresh(bytes.clone(), sized);
    let layer = MediaCacheLayer::new(tower_media_cache::CachePolicy::no_cache());
    let handle = layer.handle();
    let server = Running::axum(app(media.clone(), layer)).await;
    let url = server.url("/video");
    let start = status_bytes("VmHWM:");

    for round in 0..2 {
        let downloads: Vec<_> = (0..DOWNLOADS)
            .map(|_| {
                let (client, url, expected) = (client(), url.clone(), bytes.clone());
                tokio::spawn(async move {
                    let request = http::Request::get(&url)
                        .body(http_body_util::Empty::new())
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    let etag = response.headers().get(ETAG).cloned();
                    let mut body = response.into_body();
                    // Compared as they come and dropped: the client keeps
                    // nothing either.
                    let mut at = 0;
                    while let Some(frame) = body.frame().await {
                        if let Some(data) = frame.unwrap().data_ref() {
                            assert!(data[..] == expected[at..at + data.len()]);
                            at += data.len();
                        }
                    }
                    assert_eq!(at, expected.len());
                    etag
                })
            })
            .collect();
        for download in downloads {
            let etag = download.await.unwrap();
            if round == 1 {
                assert_eq!(etag.unwrap().to_str().unwrap(), tag);
            }
        }
    }

    let peak = status_bytes("VmHWM:");
    let growth = peak.saturating_sub(start);
    let stats = handle.stats();
    println!(
        "{DOWNLOADS} concurrent downloads of {} MiB ({}), two rounds: peak RSS {:.1} MiB, \
         growth {:.1} MiB over {:.1} MiB at start; hashed as they streamed: {}",
        LEN / MIB,
        if sized { "Content-Length" } else { "chunked" },
        peak as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        start as f64 / MIB as f64,
        stats.hashed_streaming,
    );
    assert_eq!(stats.hashed_streaming, 2 * DOWNLOADS as u64);
    assert_eq!(stats.content_changed, 0);
    server.stop().await;
    growth
}

/// Chunked bodies of unknown length are read up to `max_buffer_bytes`
/// (16 MiB) the first time, to find out whether they are small enough to
/// hash before the head; once the store knows the representation is
/// large, they stream from the first byte. A process of its own would be
/// needed to measure this apart from the test above: `--ignored` runs it
/// alone and prints the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures the peak RSS: run alone, `-- --ignored --nocapture`"]
async fn six_concurrent_chunked_downloads_read_the_buffer_limit_once() {
    let growth = downloads(false).await;
    assert!(growth <= (DOWNLOADS * 16 * MIB) as u64 + 64 * MIB as u64);
}
