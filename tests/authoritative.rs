//! `MediaCacheLayer::authoritative`: the layer as the only authority on
//! validators in front of tower-http's `ServeDir`, whose own ETags are made
//! of file metadata.

mod common;

use std::time::Duration;

use common::{get, req, send};
use http::Request;
use tower_http::services::ServeDir;
use tower_media_cache::{CachePolicy, MediaCache, MediaCacheLayer, content_etag};

/// A folder with one 300 KB "image", removed on drop.
struct Folder {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl Folder {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("tmc-authoritative-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let bytes: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(31) >> 3) as u8)
            .collect();
        std::fs::write(path.join("a.jpg"), &bytes).unwrap();
        Self { path, bytes }
    }

    fn etag(&self) -> String {
        content_etag(&self.bytes).to_string()
    }

    fn serve(&self, layer: &MediaCacheLayer) -> MediaCache<ServeDir> {
        tower::Layer::layer(layer, ServeDir::new(&self.path))
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn layer() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(3600))).authoritative()
}

#[tokio::test]
async fn by_default_the_services_own_etag_is_kept() {
    let folder = Folder::new("default");
    let service = folder.serve(&MediaCacheLayer::new(CachePolicy::no_cache()));
    let answer = send(&service, req(get("/a.jpg"))).await;
    assert_eq!(answer.status, 200);
    assert_ne!(answer.header("etag"), Some(folder.etag().as_str()));
}

#[tokio::test]
async fn the_services_etag_is_replaced_by_the_content_etag() {
    let folder = Folder::new("replace");
    let service = folder.serve(&layer());
    let answer = send(&service, req(get("/a.jpg"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, folder.bytes);
    assert_eq!(answer.header("etag"), Some(folder.etag().as_str()));
    assert_eq!(answer.headers.get_all("etag").iter().count(), 1);
    assert!(
        answer.header("last-modified").is_some(),
        "Last-Modified is kept"
    );
}

#[tokio::test]
async fn revalidations_with_the_content_etag_get_304_then_from_the_store() {
    let folder = Folder::new("revalidate");
    let layer = layer();
    // A first revalidation, before anything was learned, reaches ServeDir
    // without its If-None-Match: the layer judges the full answer.
    let service = folder.serve(&layer);
    let first = send(
        &service,
        req(get("/a.jpg").header("if-none-match", folder.etag())),
    )
    .await;
    assert_eq!(first.status, 304);
    let second = send(
        &service,
        req(get("/a.jpg").header("if-none-match", folder.etag())),
    )
    .await;
    assert_eq!(second.status, 304);
    let stats = layer.handle().stats();
    assert_eq!(
        (
            stats.not_modified_from_inner,
            stats.short_circuit_not_modified
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn if_match_with_the_content_etag_proceeds_and_a_stale_one_fails() {
    let folder = Folder::new("if-match");
    let service = folder.serve(&layer());
    let ok = send(
        &service,
        req(get("/a.jpg").header("if-match", folder.etag())),
    )
    .await;
    assert_eq!(
        ok.status, 200,
        "ServeDir's own tag would have made this 412"
    );
    let stale = send(&service, req(get("/a.jpg").header("if-match", "\"stale\""))).await;
    assert_eq!(stale.status, 412);
}

#[tokio::test]
async fn if_modified_since_is_judged_by_the_layer() {
    let folder = Folder::new("ims");
    let service = folder.serve(&layer());
    let first = send(&service, req(get("/a.jpg"))).await;
    let modified = first.header("last-modified").unwrap().to_owned();
    let answer = send(
        &service,
        req(get("/a.jpg").header("if-modified-since", &modified)),
    )
    .await;
    assert_eq!(answer.status, 304);
    assert_eq!(answer.header("etag"), Some(folder.etag().as_str()));
}

#[tokio::test]
async fn a_plain_range_is_served_by_the_service_with_the_content_etag() {
    let folder = Folder::new("range");
    let service = folder.serve(&layer());
    send(&service, req(get("/a.jpg"))).await;
    let answer = send(
        &service,
        req(get("/a.jpg").header("range", "bytes=100-199")),
    )
    .await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, folder.bytes[100..200]);
    assert_eq!(answer.header("etag"), Some(folder.etag().as_str()));
}

#[tokio::test]
async fn a_stale_if_range_gets_the_whole_file() {
    let folder = Folder::new("stale-if-range");
    let service = folder.serve(&layer());
    let answer = send(
        &service,
        req(get("/a.jpg")
            .header("range", "bytes=100-199")
            .header("if-range", "\"stale\"")),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, folder.bytes);
}

#[tokio::test]
async fn a_current_if_range_is_checked_against_the_content_before_any_range_is_cut() {
    let folder = Folder::new("current-if-range");
    let service = folder.serve(&layer());
    // Nothing learned yet: ServeDir gets neither Range nor If-Range, and
    // the layer cuts the range from the full answer after checking If-Range.
    let answer = send(
        &service,
        req(get("/a.jpg")
            .header("range", "bytes=100-199")
            .header("if-range", folder.etag())),
    )
    .await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, folder.bytes[100..200]);
    assert_eq!(answer.header("etag"), Some(folder.etag().as_str()));
    // Learned and trusted: the range goes to ServeDir.
    let again = send(
        &service,
        req(get("/a.jpg")
            .header("range", "bytes=0-9")
            .header("if-range", folder.etag())),
    )
    .await;
    assert_eq!(again.status, 206);
    assert_eq!(again.body, folder.bytes[0..10]);
}

#[tokio::test]
async fn head_carries_the_content_etag_once_learned() {
    let folder = Folder::new("head");
    let service = folder.serve(&layer());
    send(&service, req(get("/a.jpg"))).await;
    let head = send(
        &service,
        req(Request::head("/a.jpg").header("host", "media.example")),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(folder.etag().as_str()));
}

#[tokio::test]
async fn an_if_range_the_probe_cannot_check_hides_the_range_from_the_service() {
    use common::{Content, Origin};
    let origin = Origin::new(Content::ok(b"0123456789"));
    let unknown = CachePolicy::no_cache().probe(|_: &http::request::Parts| async { None });
    let service = origin.wrap(&MediaCacheLayer::new(unknown).authoritative());
    let answer = send(
        &service,
        req(get("/a")
            .header("range", "bytes=0-3")
            .header("if-range", "\"whatever\"")),
    )
    .await;
    let seen = origin.last_request();
    assert!(seen.headers.get("range").is_none());
    assert!(seen.headers.get("if-range").is_none());
    // The layer checked If-Range against the content: not the current tag,
    // so the whole body.
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "0123456789");
}
