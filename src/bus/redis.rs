//! An [`InvalidationBus`] over Redis pub/sub (feature `redis`).
//!
//! Every replica subscribes to one channel and publishes its invalidations
//! on it, tagged with its [replica id](BusLink::replica_id) so that it
//! ignores its own messages when Redis sends them back. One Tokio task per
//! bus holds two connections: a pub/sub one to receive, a multiplexed one
//! to publish. It reconnects with exponential backoff (with jitter) after
//! any failure.
//!
//! The bus is *connected* once the `SUBSCRIBE` is confirmed and the
//! publishing connection is up, and stops being connected when the pub/sub
//! connection fails or closes, a `PING` on it is not answered within
//! [`ping_timeout`](RedisBusBuilder::ping_timeout), or a `PUBLISH` fails,
//! and for good when the task stops (its Tokio runtime shut down).
//! See [the bus module](crate::bus) for what that means for the store and
//! for the guarantee.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_media_cache::{CachePolicy, MediaCacheLayer, Trust};
//! use tower_media_cache::bus::redis::RedisBus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = RedisBus::builder("redis://127.0.0.1:6379/")
//!     .channel("media:invalidations")
//!     .start()?;
//! let layer = MediaCacheLayer::new(
//!     CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
//! )
//! .invalidation_bus(bus);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};

use super::redis_store::RedisLevel2;
pub use super::redis_store::{DEFAULT_PREFIX, SharedStore};
use super::{BusLink, Invalidation, InvalidationBus, decode, encode};

/// The channel used unless [`RedisBusBuilder::channel`] says otherwise.
pub const DEFAULT_CHANNEL: &str = "tower-media-cache:invalidations";

/// At most this many invalidations wait for a connection; past that, they
/// are replaced by one "clear everything".
const MAX_PENDING: usize = 1024;

/// The origin of a message that every store applies, its sender's included.
const ANY_ORIGIN: u64 = 0;

/// An [`InvalidationBus`] over Redis pub/sub. Cheap to clone; the clones
/// share one connection task, which ends when every clone (the layer's
/// included) is dropped.
///
/// One bus usually serves one layer. Given to several layers (in one
/// process), it delivers each one's invalidations to the others too.
#[derive(Clone)]
pub struct RedisBus {
    shared: Arc<Shared>,
    outbox: mpsc::UnboundedSender<Outgoing>,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.shared.channel)
            .field("connected", &self.is_connected())
            .field("shared_store", &self.shared.level2)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A builder for a bus to the Redis server at `url`
    /// (`redis://[:password@]host[:port][/db]`, `rediss://` needs one of the
    /// `redis` crate's TLS features).
    pub fn builder(url: impl Into<String>) -> RedisBusBuilder {
        RedisBusBuilder {
            url: url.into(),
            channel: DEFAULT_CHANNEL.into(),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            shared_store: None,
        }
    }

    /// A bus to `url` on [`DEFAULT_CHANNEL`] with the default settings,
    /// started: see [`RedisBusBuilder::start`].
    pub fn start(url: impl Into<String>) -> Result<Self, RedisBusError> {
        Self::builder(url).start()
    }

    /// Whether the bus is connected now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// The channel the bus publishes and listens on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }
}

impl InvalidationBus for RedisBus {
    fn attach(&self, link: BusLink) {
        if let Some(level2) = &self.shared.level2 {
            link.attach_second_level(level2.clone());
        }
        let mut links = self.shared.links();
        if self.shared.connected.load(Ordering::SeqCst) {
            link.set_connected();
        }
        links.push(link);
    }

    fn publish(&self, from: &BusLink, invalidation: &Invalidation) {
        let message = Outgoing {
            origin: from.replica_id(),
            invalidation: invalidation.clone(),
        };
        if self.outbox.send(message).is_err() {
            // Only when the Tokio runtime that ran the task is gone.
            tracing::warn!(
                ?invalidation,
                "invalidation bus task is gone: invalidation not published"
            );
        }
    }
}

/// Settings of a [`RedisBus`], from [`RedisBus::builder`].
#[derive(Clone)]
pub struct RedisBusBuilder {
    url: String,
    channel: String,
    ping_interval: Duration,
    ping_timeout: Duration,
    connect_timeout: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    shared_store: Option<SharedStore>,
}

impl fmt::Debug for RedisBusBuilder {
    // Without the URL, which may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBusBuilder")
            .field("channel", &self.channel)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("shared_store", &self.shared_store)
            .finish_non_exhaustive()
    }
}

impl RedisBusBuilder {
    /// The pub/sub channel (default [`DEFAULT_CHANNEL`]). Every replica of
    /// one service must use the same; unrelated services sharing a Redis
    /// server should use different ones.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How often the pub/sub connection is checked with a `PING` (default
    /// 1 s). With [`ping_timeout`](Self::ping_timeout), bounds how long a
    /// silently broken connection goes unnoticed.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long a `PING` or a `PUBLISH` may take before the connection is
    /// taken for broken (default 1 s).
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// How long connecting and subscribing may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The wait before reconnecting: `min` after the first failure, doubled
    /// after each further one up to `max` (defaults 100 ms and 5 s), with up
    /// to a quarter more of jitter.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// Shares what every replica learns through Redis too, as a second
    /// level of the validator store: see [`SharedStore`]. Off by default.
    pub fn shared_store(mut self, store: SharedStore) -> Self {
        self.shared_store = Some(store);
        self
    }

    /// Starts the connection task on the current Tokio runtime and returns
    /// the bus, not yet connected: a layer given it answers nothing from
    /// its store until it connects.
    ///
    /// # Errors
    ///
    /// When the URL is invalid, or when called outside a Tokio runtime.
    pub fn start(self) -> Result<RedisBus, RedisBusError> {
        let client = redis::Client::open(self.url.as_str()).map_err(RedisBusError::Url)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisBusError::NoRuntime)?;
        let shared = Arc::new(Shared {
            channel: self.channel.clone(),
            connected: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            level2: self
                .shared_store
                .clone()
                .map(|store| Arc::new(RedisLevel2::new(store, runtime.clone()))),
        });
        let (outbox, inbox) = mpsc::unbounded_channel();
        runtime.spawn(run(client, self, shared.clone(), inbox));
        Ok(RedisBus { shared, outbox })
    }
}

/// Why a [`RedisBus`] could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisBusError {
    /// The URL is not a Redis URL.
    Url(redis::RedisError),
    /// [`RedisBusBuilder::start`] was called outside a Tokio runtime.
    NoRuntime,
}

impl fmt::Display for RedisBusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisBusError::Url(e) => write!(f, "invalid Redis URL: {e}"),
            RedisBusError::NoRuntime => {
                f.write_str("a Redis bus must start within a Tokio runtime")
            }
        }
    }
}

impl Error for RedisBusError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RedisBusError::Url(e) => Some(e),
            RedisBusError::NoRuntime => None,
        }
    }
}

/// State shared by the bus handles and the task.
struct Shared {
    channel: String,
    connected: AtomicBool,
    /// The attached stores. State changes and deliveries happen under this
    /// lock, so an attach sees either the state before or after a change.
    links: Mutex<Vec<BusLink>>,
    /// The shared second level, when configured.
    level2: Option<Arc<RedisLevel2>>,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Vec<BusLink>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_connected(&self) {
        let mut links = self.links();
        self.connected.store(true, Ordering::SeqCst);
        links.retain(BusLink::set_connected);
    }

    fn set_disconnected(&self, reason: &str) {
        let mut links = self.links();
        self.connected.store(false, Ordering::SeqCst);
        links.retain(|link| link.set_disconnected(&reason));
        if let Some(level2) = &self.level2 {
            level2.end();
        }
    }

    fn deliver(&self, payload: &[u8]) {
        if let Some(level2) = &self.level2 {
            level2.heard(payload);
        }
        let (origin, invalidation) = decode(payload);
        if origin.is_none() {
            tracing::warn!(
                channel = %self.channel,
                message = %String::from_utf8_lossy(payload),
                "unreadable message on the invalidation channel: clearing the validator store"
            );
        }
        let mut links = self.links();
        links.retain(|link| {
            if origin == Some(link.replica_id()) {
                link.is_attached()
            } else {
                link.apply(&invalidation)
            }
        });
    }
}

/// An invalidation to publish.
#[derive(Debug)]
struct Outgoing {
    origin: u64,
    invalidation: Invalidation,
}

/// Invalidations waiting to be published, in order.
#[derive(Debug, Default)]
struct Pending(VecDeque<Outgoing>);

impl Pending {
    fn push(&mut self, message: Outgoing) {
        if self.0.len() >= MAX_PENDING {
            tracing::warn!(
                "{MAX_PENDING} invalidations waiting for the bus: publishing one clear instead"
            );
            self.0.clear();
            self.0.push_back(Outgoing {
                origin: ANY_ORIGIN,
                invalidation: Invalidation::Clear,
            });
        }
        self.0.push_back(message);
    }
}

/// The two connections of a live session.
struct Session {
    sink: PubSubSink,
    stream: PubSubStream,
    publisher: MultiplexedConnection,
    /// The shared store's generations, read once subscribed.
    generations: Option<super::redis_store::Generations>,
}

/// How a session ended.
enum Ended {
    /// Every handle on the bus is gone.
    Closed,
    /// The connection failed.
    Lost(String),
}

async fn run(
    client: redis::Client,
    settings: RedisBusBuilder,
    shared: Arc<Shared>,
    mut inbox: mpsc::UnboundedReceiver<Outgoing>,
) {
    // However the task ends — every handle dropped, or its runtime shut
    // down — no store may go on believing it hears the other replicas.
    let _stopped = Stopped(shared.clone());
    let mut pending = Pending::default();
    let mut backoff = settings.min_backoff;
    let mut ever_connected = false;
    let mut failure_logged = false;
    loop {
        let connecting = connect(&client, &settings, &shared);
        let Some(result) = until_closed(&mut inbox, &mut pending, connecting).await else {
            return;
        };
        match result {
            Ok(mut session) => {
                backoff = settings.min_backoff;
                ever_connected = true;
                failure_logged = false;
                if let (Some(level2), Some(generations)) =
                    (&shared.level2, session.generations.take())
                {
                    level2.begin(session.publisher.clone(), generations);
                }
                shared.set_connected();
                tracing::debug!(channel = %shared.channel, "subscribed to the invalidation channel");
                match serve(session, &settings, &shared, &mut inbox, &mut pending).await {
                    Ended::Closed => return,
                    Ended::Lost(reason) => shared.set_disconnected(&reason),
                }
            }
            Err(error) => {
                if !ever_connected && !failure_logged {
                    tracing::warn!(
                        %error,
                        "cannot connect to the invalidation bus yet: retrying; every request goes to the inner service meanwhile"
                    );
                    failure_logged = true;
                } else {
                    tracing::debug!(%error, "invalidation bus connection attempt failed");
                }
            }
        }
        let wait = backoff + jitter(backoff / 4);
        backoff = (backoff * 2).min(settings.max_backoff);
        if until_closed(&mut inbox, &mut pending, tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Reports the stores disconnected when dropped with the task.
struct Stopped(Arc<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.set_disconnected("the invalidation bus task stopped");
    }
}

/// Runs `future` while queueing what is published meanwhile; `None` when
/// every handle on the bus is gone.
async fn until_closed<F: Future>(
    inbox: &mut mpsc::UnboundedReceiver<Outgoing>,
    pending: &mut Pending,
    future: F,
) -> Option<F::Output> {
    tokio::pin!(future);
    loop {
        tokio::select! {
            output = &mut future => return Some(output),
            message = inbox.recv() => match message {
                Some(message) => pending.push(message),
                None => return None,
            },
        }
    }
}

async fn connect(
    client: &redis::Client,
    settings: &RedisBusBuilder,
    shared: &Shared,
) -> Result<Session, String> {
    let connecting = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(&shared.channel).await?;
        let mut publisher = client.get_multiplexed_async_connection().await?;
        // Subscribed first: a generation moved after this read is heard.
        let generations = match &shared.level2 {
            Some(level2) => Some(level2.read_generations(&mut publisher).await?),
            None => None,
        };
        Ok::<_, redis::RedisError>(Session {
            sink,
            stream,
            publisher,
            generations,
        })
    };
    match timeout(settings.connect_timeout, connecting).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no connection within {:?}",
            settings.connect_timeout
        )),
    }
}

async fn serve(
    mut session: Session,
    settings: &RedisBusBuilder,
    shared: &Shared,
    inbox: &mut mpsc::UnboundedReceiver<Outgoing>,
    pending: &mut Pending,
) -> Ended {
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.reset();
    let mut closing = false;
    loop {
        // Publish what waits, in order; keep it queued if that fails.
        while let Some(message) = pending.0.front() {
            if let Err(reason) = publish(&mut session.publisher, settings, shared, message).await {
                return Ended::Lost(reason);
            }
            pending.0.pop_front();
        }
        if closing {
            return Ended::Closed;
        }
        tokio::select! {
            message = session.stream.next() => match message {
                Some(message) => shared.deliver(message.get_payload_bytes()),
                None => return Ended::Lost("the pub/sub connection closed".into()),
            },
            message = inbox.recv() => match message {
                Some(message) => pending.push(message),
                // Publish what is left, then stop.
                None => closing = true,
            },
            _ = ping.tick() => {
                match timeout(settings.ping_timeout, session.sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return Ended::Lost(format!("PING failed: {error}")),
                    Err(_) => {
                        return Ended::Lost(format!(
                            "no answer to PING within {:?}",
                            settings.ping_timeout
                        ));
                    }
                }
            }
        }
    }
}

async fn publish(
    publisher: &mut MultiplexedConnection,
    settings: &RedisBusBuilder,
    shared: &Shared,
    message: &Outgoing,
) -> Result<(), String> {
    let command = match &shared.level2 {
        // Deletes the shared record and moves its generation in the same
        // step as publishing.
        Some(level2) => level2.invalidate(&shared.channel, message.origin, &message.invalidation),
        None => {
            let payload = encode(message.origin, &message.invalidation);
            let mut command = redis::cmd("PUBLISH");
            command.arg(&shared.channel).arg(payload);
            command
        }
    };
    let publishing = command.query_async::<i64>(publisher);
    match timeout(settings.ping_timeout, publishing).await {
        Ok(Ok(_receivers)) => Ok(()),
        Ok(Err(error)) => Err(format!("PUBLISH failed: {error}")),
        Err(_) => Err(format!(
            "no answer to PUBLISH within {:?}",
            settings.ping_timeout
        )),
    }
}

/// A random duration up to `max`.
fn jitter(max: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(random.checked_rem(nanos).unwrap_or(0))
}
