//! `HEAD` answers carry what `GET` answers carry (RFC 9110 §9.3.2), from the
//! first request on, when the service produces the body for `HEAD` and lets
//! the server drop it — as axum's handlers (and hyper `service_fn`s) do —
//! and conditional `HEAD`s are answered exactly as `GET`s.
//!
//! Over a real axum server on 127.0.0.1, read as raw HTTP/1.1 so that every
//! header on the wire is seen (a 304 must carry no false `Content-Length`).

use std::time::Duration;

use axum::{Router, routing::get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_media_cache::{CachePolicy, MediaCacheLayer, content_etag, fingerprinted_path};

const PHOTO: &[u8] = b"\xff\xd8\xff\xe0 the bytes of a small jpeg, seventy-odd bytes long \xff\xd9";
const SNAPSHOT: &[u8] = b"<svg>live snapshot</svg>";

/// A server with a three-day policy on `/media/`, `no-cache` on `/live/`,
/// and fingerprinted URLs; its handlers know nothing of caching.
async fn serve() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/media/{name}", get(|| async { PHOTO }))
        .route("/live/{name}", get(|| async { SNAPSHOT }))
        .layer(
            MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(259_200)).public())
                .route("/live/{*path}", CachePolicy::no_cache())
                .fingerprinted_urls(),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (address, server)
}

/// What came back on the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send(address: &str, method: &str, path: &str, fields: &[(&str, &str)]) -> Raw {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: media.example\r\nConnection: close\r\n");
    for (name, value) in fields {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Raw {
        status,
        headers,
        body: bytes[end..].to_vec(),
    }
}

/// RFC 9110 §9.3.2: the first request for a file is a `HEAD` (a media
/// fetcher checking type and size): it carries the content `ETag` and the
/// `Cache-Control` that `GET` carries, and the same length.
#[tokio::test]
async fn a_first_head_carries_the_validators_and_policy_of_get() {
    let (address, server) = serve().await;
    let head = send(&address, "HEAD", "/media/a.jpg", &[]).await;
    let tag = content_etag(PHOTO).to_string();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("etag"), Some(tag.as_str()));
    assert_eq!(head.header("cache-control"), Some("public, max-age=259200"));
    assert_eq!(
        head.header("content-length"),
        Some(PHOTO.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    let get = send(&address, "GET", "/media/a.jpg", &[]).await;
    assert_eq!(get.header("etag"), head.header("etag"));
    assert_eq!(get.header("cache-control"), head.header("cache-control"));
    assert_eq!(get.body, PHOTO);
    server.abort();
}

/// A shared cache refreshing a fingerprinted URL from `HEAD` (RFC 9111
/// §4.3.5) must not downgrade `immutable` to `no-cache`.
#[tokio::test]
async fn a_first_head_on_a_fingerprinted_url_is_immutable() {
    let (address, server) = serve().await;
    let url = fingerprinted_path("/media/a.jpg", PHOTO);
    let head = send(&address, "HEAD", &url, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let get = send(&address, "GET", &url, &[]).await;
    assert_eq!(get.header("cache-control"), head.header("cache-control"));
    assert_eq!(get.header("etag"), head.header("etag"));
    server.abort();
}

/// RFC 9110 §13.1.1, §13.1.2, §15.4.5: a conditional `HEAD` gets what the
/// same `GET` gets — 304 for the current tag and for `*`, 412 for a tag
/// that matches nothing — and a 304 carries no `Content-Length` but the
/// 200's (RFC 9110 §8.6), before the store knows the file and after.
#[tokio::test]
async fn conditional_heads_are_answered_like_gets() {
    let (address, server) = serve().await;
    let tag = content_etag(PHOTO).to_string();
    let length = PHOTO.len().to_string();
    let cases: [(&str, &str, u16); 4] = [
        ("if-none-match", tag.as_str(), 304),
        ("if-none-match", "*", 304),
        ("if-match", "\"not-it\"", 412),
        ("if-none-match", "\"not-it\"", 200),
    ];
    for round in ["before learning", "after learning"] {
        for (name, value, status) in cases {
            for method in ["HEAD", "GET"] {
                let path = format!("/media/{}.jpg", round.len());
                let answer = send(&address, method, &path, &[(name, value)]).await;
                assert_eq!(
                    answer.status, status,
                    "{round}: {method} with {name}: {value}"
                );
                if status == 304 {
                    assert!(
                        answer.header("content-length").is_none_or(|l| l == length),
                        "{round}: {method} 304 with {:?}",
                        answer.header("content-length")
                    );
                    assert_eq!(
                        answer.header("etag"),
                        Some(tag.as_str()),
                        "{round}: {method}"
                    );
                }
            }
        }
        // Learned from the unconditional GET.
        let path = format!("/media/{}.jpg", round.len());
        send(&address, "GET", &path, &[]).await;
    }
    server.abort();
}

/// RFC 9110 §9.3.2 on a `no-cache` route, where nothing answers from the
/// store: a `HEAD` after a `GET` still carries the `GET`'s `ETag`.
#[tokio::test]
async fn a_head_after_a_get_on_a_no_cache_route_carries_the_etag() {
    let (address, server) = serve().await;
    let get = send(&address, "GET", "/live/snapshot.svg", &[]).await;
    let head = send(&address, "HEAD", "/live/snapshot.svg", &[]).await;
    let tag = content_etag(SNAPSHOT).to_string();
    assert_eq!(get.header("etag"), Some(tag.as_str()));
    assert_eq!(head.header("etag"), Some(tag.as_str()));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    server.abort();
}

/// tower-http's `ServeDir` answers `HEAD` itself, with no body to hash; in
/// front of it (`authoritative`, since its own tags come from file
/// metadata) the layer learns the `GET`'s content `ETag` with one internal
/// `GET`, and the `HEAD` carries it; later `HEAD`s are answered with it
/// without another `GET`, and a conditional `HEAD` gets its 304.
#[tokio::test]
async fn a_first_head_to_a_file_server_carries_the_content_etag() {
    let dir = std::env::temp_dir().join(format!("tower-media-cache-head-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.jpg"), PHOTO).unwrap();
    let layer = MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(60))).authoritative();
    let handle = layer.handle();
    // `ServeDir` answers every method itself: wrapped as a whole, the layer
    // may send it a GET of its own.
    let app = Router::new().nest_service(
        "/files",
        layer.wrap_router(tower_http::services::ServeDir::new(&dir)),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tag = content_etag(PHOTO).to_string();
    let head = send(&address, "HEAD", "/files/a.jpg", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("etag"), Some(tag.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(PHOTO.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    assert_eq!(handle.stats().validator_fetches, 1);
    let again = send(&address, "HEAD", "/files/a.jpg", &[]).await;
    assert_eq!(again.header("etag"), Some(tag.as_str()));
    assert_eq!(
        handle.stats().validator_fetches,
        1,
        "the trusted entry answered"
    );
    let conditional = send(&address, "HEAD", "/files/a.jpg", &[("if-none-match", &tag)]).await;
    assert_eq!(conditional.status, 304);
    let get = send(&address, "GET", "/files/a.jpg", &[]).await;
    assert_eq!(get.header("etag"), Some(tag.as_str()));
    assert_eq!(get.body, PHOTO);

    server.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}
