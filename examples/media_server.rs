//! A small media server behind `MediaCacheLayer`.
//!
//! ```sh
//! cargo run --release --example media_server --features metrics  # http://127.0.0.1:3000/
//! PORT=8080 RUST_LOG=debug cargo run --example media_server
//! ```
//!
//! * `/media/{*path}` serves the files of `examples/media/` (a PNG, a WAV
//!   tone and a Y4M video, all made by `examples/media/generate.py`) with
//!   `Cache-Control: public, max-age=259200` and a content `ETag`; a CDN in
//!   front is told to keep them for 30 days (`CDN-Cache-Control`, RFC 9213,
//!   and `Surrogate-Control` for Varnish and Fastly setups), on the
//!   understanding that it is purged when a file changes.
//! * `/live/{*path}` is `no-cache`: a generated `snapshot.svg` that changes
//!   every 10 seconds, and the same files as "latest copies". Caches keep
//!   them but revalidate on every use; the layer answers `304` while the
//!   bytes are unchanged.
//! * `/videos/long-sweep.y4m` is a 22 MiB video generated at start into the
//!   system's temporary directory (not committed): larger than the layer's
//!   16 MiB buffer, so it streams, hashed as it passes; the next answer
//!   carries its `ETag`, and a player seeking in it gets `206`s cut from the
//!   stream (`mpv http://127.0.0.1:3000/videos/long-sweep.y4m`).
//! * `/` is an HTML page linking each media file by its **fingerprinted**
//!   URL (`/media/gradient.5e6d465919c4681d.png`): those answers carry
//!   `Cache-Control: public, max-age=31536000, immutable`, and a changed
//!   file gets a new link. The page itself is `no-cache`.
//!
//! Trust modes in use: `/media/` learns validators and answers
//! revalidations itself while a three-day copy would still be fresh
//! (`Trust::MaxAge`, the default with `max-age`); `/live/snapshot.svg` asks
//! a **probe** for the current snapshot's ETag instead of rendering it;
//! the rest of `/live/` always asks the file server (`Trust::Never`, the
//! default with `no-cache`) and still gets `304`s from the layer.
//!
//! Every answer of the layer carries its `Cache-Status` member (RFC 9211):
//! `tower-media-cache; hit` when it answered alone, `tower-media-cache;
//! fwd=miss; fwd-status=200; stored` when it asked the file server and
//! learned the validators.
//!
//! With the `metrics` feature, `/metrics` serves the layer's counters in
//! Prometheus' text format (`metrics-exporter-prometheus` as the `metrics`
//! recorder), labelled by route pattern.
//!
//! On start it prints `curl` commands: one showing the `200` with its
//! `ETag` and `Cache-Control`, one showing the `304` for a revalidation.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tower::ServiceBuilder;
use tower::util::{MapRequest, MapResponse};
use tower_http::services::ServeDir;
use tower_http::services::fs::ServeFileSystemResponseBody;
use tower_media_cache::{
    CachePolicy, MediaCacheLayer, Validators, content_etag, fingerprinted_path,
};

/// How long fetchers may reuse `/media/` responses without asking: 3 days.
pub const MEDIA_MAX_AGE: Duration = Duration::from_secs(259_200);

/// How long a CDN in front may keep `/media/` responses: 30 days (it is
/// purged when a file changes).
pub const MEDIA_CDN_MAX_AGE: Duration = Duration::from_secs(2_592_000);

/// The server's name in `Cache-Status`.
pub const CACHE_NAME: &str = "tower-media-cache";

/// How often `/live/snapshot.svg` changes.
pub const SNAPSHOT_PERIOD: Duration = Duration::from_secs(10);

/// Extensions of the files the index lists (the generator script is served
/// too, but not advertised).
const MEDIA_EXTENSIONS: &[&str] = &["png", "wav", "y4m"];

/// `examples/media/` of this crate, wherever the binary runs from.
pub fn media_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/media")
}

/// The layer this server uses: `public, max-age=259200` by default (30
/// days for a CDN), `no-cache` for `/live/` and for the index page, a probe
/// for the live snapshot, fingerprinted URLs, `Cache-Status`, and nothing
/// for `/metrics`.
pub fn cache_layer() -> MediaCacheLayer {
    let media = CachePolicy::max_age(MEDIA_MAX_AGE)
        .public()
        .cdn(CachePolicy::max_age(MEDIA_CDN_MAX_AGE).public())
        .with_surrogate_control();
    MediaCacheLayer::new(media.clone())
        .route("/media/{*path}", media)
        .route("/live/{*path}", CachePolicy::no_cache())
        .route(
            "/live/snapshot.svg",
            CachePolicy::no_cache().probe(|_request: &axum::http::request::Parts| async {
                // Knowing which snapshot is current is enough to know its
                // ETag: a revalidation never renders the SVG.
                let current = snapshot_svg(current_snapshot());
                Some(Validators::new().with_etag(content_etag(current.as_bytes())))
            }),
        )
        .route("/", CachePolicy::no_cache())
        .exclude("/metrics")
        .fingerprinted_urls()
        .cache_status(CACHE_NAME)
}

/// The whole application with [`cache_layer`].
pub fn app() -> Router {
    app_with(cache_layer())
}

/// The application wrapped in `layer` (tests pass their own to keep a
/// [`CacheHandle`](tower_media_cache::CacheHandle) on it).
pub fn app_with(layer: MediaCacheLayer) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics_text))
        .route("/live/snapshot.svg", get(snapshot))
        .nest_service("/live", serve_media())
        .nest_service("/media", serve_media())
        .nest_service("/videos", serve_files(video_dir()))
        .layer(layer)
        // Outside the cache layer, so the 304s it answers itself are logged.
        .layer(middleware::from_fn(log_request))
}

/// A file server for [`media_dir`] (Content-Type from the extension),
/// adapted so that the cache layer is the one authority on validators.
///
/// tower-http's `ServeDir` sends an `ETag` of its own, made of the file's
/// size and modification time, and answers conditional and range requests
/// against it. That tag differs between replicas and changes whenever a
/// deploy touches the file, and the layer keeps an `ETag` the service
/// already set. So the adapter
///
/// * hides the conditional and `Range` headers from `ServeDir` — the layer
///   has already read them and answers them itself, from the content.
///   (`Range` goes too, because `If-Range` must be judged against the same
///   validators. The layer cuts ranges from the body it buffered, or, for a
///   file larger than `max_buffer_bytes` (16 MiB by default), from the
///   stream as it passes.)
/// * removes `ServeDir`'s `ETag`, so the layer puts the content `ETag`
///   (XXH3-128 of the bytes, the same on every replica) in its place.
///
/// `ServeDir`'s `Last-Modified` stays; the layer answers
/// `If-Modified-Since` against it.
pub fn serve_media() -> MediaFiles {
    serve_files(media_dir())
}

/// [`serve_media`] for the files of `dir`.
pub fn serve_files(dir: PathBuf) -> MediaFiles {
    ServiceBuilder::new()
        .map_request(hide_validators as fn(Request) -> Request)
        .map_response(drop_etag as fn(FileResponse) -> FileResponse)
        .service(ServeDir::new(dir))
}

/// The name of the generated large video under `/videos/`.
pub const LARGE_VIDEO: &str = "long-sweep.y4m";

/// Where [`LARGE_VIDEO`] is generated: a folder of the system's temporary
/// directory, so no large file is committed.
pub fn video_dir() -> PathBuf {
    std::env::temp_dir().join("tower-media-cache-example")
}

/// Writes [`LARGE_VIDEO`] into [`video_dir`] unless it is there with the
/// right bytes already; returns its path. Written to a temporary name and
/// renamed, so a server reading it never sees half a file.
pub fn ensure_large_video() -> std::io::Result<PathBuf> {
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = video_dir().join(LARGE_VIDEO);
    let bytes = large_video();
    if std::fs::read(&path).is_ok_and(|existing| existing == bytes) {
        return Ok(path);
    }
    std::fs::create_dir_all(video_dir())?;
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = video_dir().join(format!(".{LARGE_VIDEO}.{}.{n}", std::process::id()));
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The bytes of [`LARGE_VIDEO`]: 200 frames of 320×240 YUV4MPEG2 (4:2:0,
/// 25 fps), a diagonal gradient sweeping across the picture, about 22 MiB.
pub fn large_video() -> Vec<u8> {
    const WIDTH: usize = 320;
    const HEIGHT: usize = 240;
    const FRAMES: usize = 200;
    let header = format!("YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 Ip A1:1 C420jpeg\n");
    let frame_len = 6 + WIDTH * HEIGHT * 3 / 2;
    let mut video = Vec::with_capacity(header.len() + FRAMES * frame_len);
    video.extend_from_slice(header.as_bytes());
    for frame in 0..FRAMES {
        video.extend_from_slice(b"FRAME\n");
        for y in 0..HEIGHT {
            video.extend((0..WIDTH).map(|x| ((x + y + frame * 4) % 256) as u8));
        }
        let chroma = WIDTH * HEIGHT / 4;
        video.extend(std::iter::repeat_n((frame * 2 % 256) as u8, chroma));
        video.extend(std::iter::repeat_n((255 - frame % 256) as u8, chroma));
    }
    video
}

/// [`serve_media`]'s service.
pub type MediaFiles =
    MapRequest<MapResponse<ServeDir, fn(FileResponse) -> FileResponse>, fn(Request) -> Request>;

type FileResponse = Response<ServeFileSystemResponseBody>;

fn hide_validators(mut request: Request) -> Request {
    for name in [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        request.headers_mut().remove(name);
    }
    request
}

fn drop_etag(mut response: FileResponse) -> FileResponse {
    response.headers_mut().remove(header::ETAG);
    response
}

/// The names of the media files, sorted.
pub fn media_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(media_dir())
        .expect("examples/media/ is readable")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.rsplit_once('.')
                .is_some_and(|(_, ext)| MEDIA_EXTENSIONS.contains(&ext))
        })
        .collect();
    names.sort();
    names
}

/// The URL the index links a media file under: its fingerprinted URL, with
/// the content hash of the file's current bytes in the name.
pub fn media_url(name: &str) -> String {
    let path = format!("/media/{name}");
    match std::fs::read(media_dir().join(name)) {
        Ok(bytes) => fingerprinted_path(&path, &bytes),
        Err(_) => path,
    }
}

/// The index page: a link to each file in `files` (through [`media_url`])
/// and to the live snapshot.
pub fn index_page(files: &[String]) -> String {
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>tower-media-cache sample media</title></head>\n<body>\n\
         <h1>Sample media</h1>\n<ul>\n",
    );
    for name in files {
        let name = escape(name);
        let href = escape(&media_url(&name));
        // Images are also shown, loaded through their fingerprinted URL.
        let preview = if name.ends_with(".png") {
            format!(" <img src=\"{href}\" alt=\"{name}\" width=\"64\" height=\"64\">")
        } else {
            String::new()
        };
        html.push_str(&format!(
            "  <li><a href=\"{href}\">{name}</a>{preview}</li>\n"
        ));
    }
    html.push_str(
        "</ul>\n<h2>Live</h2>\n<p><a href=\"/live/snapshot.svg\">snapshot.svg</a> \
         (<code>no-cache</code>, changes every 10 seconds)</p>\n\
         <p><img src=\"/live/snapshot.svg\" alt=\"live snapshot\"></p>\n\
         <h2>Long video</h2>\n<p><a href=\"/videos/long-sweep.y4m\">long-sweep.y4m</a> \
         (22 MiB, streamed: seek in it with a player)</p>\n</body>\n</html>\n",
    );
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index() -> Html<String> {
    Html(index_page(&media_files()))
}

/// The snapshot number `n`: a small SVG whose colour and caption change
/// with `n`.
pub fn snapshot_svg(n: u64) -> String {
    let hue = (n * 47) % 360;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"160\" height=\"90\">\
         <rect width=\"160\" height=\"90\" fill=\"hsl({hue},70%,45%)\"/>\
         <text x=\"80\" y=\"52\" font-family=\"sans-serif\" font-size=\"16\" \
         fill=\"white\" text-anchor=\"middle\">snapshot #{n}</text></svg>\n"
    )
}

/// The number of the current snapshot.
pub fn current_snapshot() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_secs() / SNAPSHOT_PERIOD.as_secs()
}

async fn snapshot() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "image/svg+xml")],
        snapshot_svg(current_snapshot()),
    )
}

/// The process's Prometheus recorder, installed as the `metrics` recorder
/// on first use (once per process, whatever the number of apps built).
#[cfg(feature = "metrics")]
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
        tower_media_cache::metrics::describe();
        handle
    })
}

/// `/metrics`: the counters in Prometheus' text exposition format.
#[cfg(feature = "metrics")]
async fn metrics_text() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        prometheus().render(),
    )
}

/// `/metrics` without the `metrics` feature: a 404 that says how to get it.
#[cfg(not(feature = "metrics"))]
async fn metrics_text() -> impl IntoResponse {
    (
        axum::http::StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        "metrics are served with --features metrics\n",
    )
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    let etag = response.headers().get(header::ETAG);
    let etag = etag.and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info!(%method, %uri, status = response.status().as_u16(), etag, "request");
    response
}

/// The address to listen on: 127.0.0.1 and `PORT` (default 3000).
pub fn listen_addr() -> SocketAddr {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse().expect("PORT is a port number"),
        Err(_) => 3000,
    };
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[tokio::main]
async fn main() {
    #[cfg(feature = "metrics")]
    prometheus();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_media_cache=debug".into()),
        )
        .init();

    let video = ensure_large_video().expect("write the generated video");
    let listener = tokio::net::TcpListener::bind(listen_addr())
        .await
        .expect("bind the listen address");
    let base = format!("http://{}", listener.local_addr().expect("local address"));

    let files = media_files();
    let example = files.first().expect("examples/media/ has media files");
    let bytes = std::fs::read(media_dir().join(example)).expect("read the example file");
    let etag = content_etag(&bytes);
    let etag = etag.header_value().to_str().expect("an ETag is ASCII");
    let url = format!("{base}/media/{example}");
    println!("Serving {} on {base}/", media_dir().display());
    println!();
    println!("  200 with ETag and Cache-Control:");
    println!("    curl -i {url}");
    println!("  304 for a revalidation:");
    println!("    curl -i -H 'If-None-Match: {etag}' {url}");
    println!("  the same file under its fingerprinted, immutable URL:");
    println!("    curl -i {base}{}", media_url(example));
    println!(
        "  a seek in a 22 MiB video (generated at {}):",
        video.display()
    );
    println!(
        "    curl -i -H 'Range: bytes=1000000-1000099' {base}/videos/{LARGE_VIDEO} -o /dev/null"
    );
    println!("  the counters, for Prometheus (with --features metrics):");
    println!("    curl {base}/metrics");
    println!();

    axum::serve(listener, app())
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await
        .expect("serve");
}
