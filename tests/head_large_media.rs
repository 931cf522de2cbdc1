//! `HEAD` on media larger than the buffer, over a real server on 127.0.0.1
//! (issue: HEAD on large media drops the learned tag). A `no-cache` route,
//! chunked, no `Last-Modified`: nothing vouches for a learned tag, so every
//! `HEAD` is answered with the tag of the bytes it reads to their end (its
//! own body where the service produced one; else, wrapped whole, the
//! layer's `GET`), and what it teaches keeps the length the tag was learned
//! for, so the `GET`s after it still carry the tag.

mod net;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, ETAG};
use http::{Method, StatusCode};
use net::media::{Media, app, app_whole};
use net::{Running, client, etag_of, get, pseudo_random, send};
use tower_media_cache::{CachePolicy, MediaCacheLayer};

const LEN: usize = 20 * 1024 * 1024;

async fn get_head_sequence(whole: bool) {
    let bytes: Bytes = pseudo_random(LEN, 7);
    let tag = etag_of(&bytes);
    let media = Media::new(bytes.clone());
    let layer = MediaCacheLayer::new(CachePolicy::no_cache());
    let handle = layer.handle();
    let router = if whole {
        app_whole(media.clone(), layer)
    } else {
        app(media.clone(), layer)
    };
    let server = Running::axum(router).await;
    let (client, url) = (client(), server.url("/video"));
    let wiring = if whole {
        "whole router"
    } else {
        "Router::layer"
    };

    let first = get(&client, &url, &[]).await;
    assert!(
        first.body == bytes && !first.headers.contains_key(ETAG),
        "{wiring}"
    );
    let second = get(&client, &url, &[]).await;
    assert_eq!(second.header(ETAG), tag, "{wiring}: the learned tag");
    for i in 0..3 {
        let head = send(&client, Method::HEAD, &url, &[]).await;
        assert_eq!(head.status, StatusCode::OK, "{wiring}");
        assert_eq!(
            head.header(ETAG),
            tag,
            "{wiring}: HEAD #{i} carries GET's tag"
        );
        assert_eq!(
            head.header(CONTENT_LENGTH),
            LEN.to_string(),
            "{wiring}: and its length"
        );
        assert!(head.body.is_empty());
    }
    let revalidated = send(&client, Method::HEAD, &url, &[("if-none-match", &tag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED, "{wiring}");
    let after = get(&client, &url, &[]).await;
    assert_eq!(
        after.header(ETAG),
        tag,
        "{wiring}: GET after the HEADs still carries the tag"
    );
    assert!(after.body == bytes, "{wiring}");
    if !whole {
        assert_eq!(
            handle.stats().validator_fetches,
            0,
            "{wiring}: no GET of the layer's own"
        );
    }

    // The bytes change behind the layer, same length: the next HEAD reads
    // them and carries the new tag, never the old one.
    let changed = pseudo_random(LEN, 8);
    media.set(changed.clone());
    let head = send(&client, Method::HEAD, &url, &[]).await;
    assert_eq!(
        head.header(ETAG),
        etag_of(&changed),
        "{wiring}: the new bytes' tag"
    );
    server.stop().await;
}

#[tokio::test]
async fn head_on_large_media_keeps_the_learned_tag_behind_router_layer() {
    get_head_sequence(false).await;
}

#[tokio::test]
async fn head_on_large_media_keeps_the_learned_tag_wrapped_whole() {
    get_head_sequence(true).await;
}
