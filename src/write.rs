//! What a guarded conditional write is judged against when the store holds
//! no trusted validators: the answer to an internal `GET` of its target.
//! See [`MediaCacheLayer::verify_conditional_writes`](crate::MediaCacheLayer::verify_conditional_writes).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http::header::ETAG;
use http::{Response, StatusCode};
use http_body::Body;

use crate::validators::{self, ContentHasher, HashMemo, Validators};

/// What the layer knows of a write's target before the write runs.
pub(crate) enum Current {
    /// A current representation with these validators.
    Exists(Validators),
    /// A current representation whose content tag the layer computed from
    /// its `len` bytes, with these validators.
    Hashed { validators: Validators, len: u64 },
    /// No current representation: the service answers `GET` with 404/410.
    Absent,
    /// The service did not say (another status, an error): the write goes
    /// to the service with its preconditions, for it to judge.
    Unknown,
}

/// The answer to an internal `GET`: what its status and validators say, or
/// its body to hash when it carries no `ETag` (or under `authoritative`,
/// where the service's tag is not the content's).
pub(crate) fn fetched<B: Body>(
    response: Response<B>,
    authoritative: bool,
) -> Result<Current, Box<Fetched<B>>> {
    let (mut head, body) = response.into_parts();
    if head.status == StatusCode::NOT_FOUND || head.status == StatusCode::GONE {
        return Ok(Current::Absent);
    }
    if !head.status.is_success() {
        return Ok(Current::Unknown);
    }
    if authoritative {
        head.headers.remove(ETAG);
    } else if let Some(repaired) = head
        .headers
        .get(ETAG)
        .and_then(validators::repair_unquoted_etag)
    {
        head.headers.insert(ETAG, repaired);
    }
    let validators = Validators::from_headers(&head.headers);
    if validators.etag().is_some() {
        return Ok(Current::Exists(validators));
    }
    Err(Box::new(Fetched::new(body, validators)))
}

/// The body of an internal `GET` (or a `HEAD`'s, when its service produced
/// one too large to buffer), hashed as it is read and dropped: never
/// buffered, whatever its size.
pub(crate) struct Fetched<B> {
    body: Pin<Box<B>>,
    validators: Validators,
    hasher: ContentHasher,
    len: u64,
}

impl<B> Fetched<B> {
    /// `body`, described by `validators`, to hash to its end.
    pub(crate) fn new(body: B, validators: Validators) -> Self {
        Self {
            body: Box::pin(body),
            validators,
            hasher: ContentHasher::new(),
            len: 0,
        }
    }
}

impl<B: Body> Fetched<B> {
    /// Reads to the end; the content ETag completes the validators. A body
    /// error leaves them unknown.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Current> {
        loop {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                None => {
                    let validators = std::mem::take(&mut self.validators);
                    let hasher = std::mem::replace(&mut self.hasher, ContentHasher::new());
                    let (etag, _) = hasher.finish(&HashMemo::NONE);
                    let validators = validators.with_etag(etag);
                    let len = self.len;
                    return Poll::Ready(Current::Hashed { validators, len });
                }
                Some(Err(_)) => return Poll::Ready(Current::Unknown),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let len = chunk.len();
                            self.hasher.update(chunk);
                            self.len += len as u64;
                            data.advance(len);
                        }
                    }
                }
            }
        }
    }
}
