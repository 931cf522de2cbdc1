//! The shared second level in Redis, run by a [`RedisBus`](super::redis::RedisBus)
//! on its connection and its runtime: see [`SharedStore`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redis::aio::MultiplexedConnection;
use tokio::runtime::Handle;
use tokio::time::timeout;

use super::Invalidation;
use super::shared::{self, Looked, Lookup, SecondLevel, SharedEpoch, SharedVariant, time_to_live};
use crate::handle::{Counter, Counters};
use crate::key::Key;
use crate::store::EPOCH_STRIPES;

/// The key prefix used unless [`SharedStore::prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "tower-media-cache:validators:";

/// At most this many variants of one path group are kept in Redis; a write
/// past it starts the group over.
const MAX_SHARED_VARIANTS: u32 = 32;

/// How long a background write may take before it is given up (a late one
/// is refused by Redis anyway if an invalidation ran meanwhile).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A second level for the validator store in Redis, shared by every replica
/// on the same bus: what one replica learns, a replica that just started
/// answers from its first request. Given to [`RedisBusBuilder::shared_store`](super::redis::RedisBusBuilder::shared_store).
///
/// * **Two levels.** The in-process store stays the first. When a request
///   that needs an entry (a conditional `GET`, a `HEAD`, a ranged `GET`
///   with `If-Range`) finds nothing there, the layer looks the path up in
///   Redis, waiting at most [`lookup_timeout`](Self::lookup_timeout) (2 ms
///   by default); a record for the request's exact variant is installed in
///   the local store and answers under the same trust rules as a local
///   entry. Other requests never wait on Redis. Routes with a probe do not
///   use the second level (the probe already answers without the service).
/// * **Writes in the background.** What a replica learns is written to
///   Redis by a task on the bus's runtime, after the response, with a TTL
///   equal to the entry's trust window (at most [`max_ttl`](Self::max_ttl))
///   or, for entries trusted until invalidated,
///   [`until_invalidated_ttl`](Self::until_invalidated_ttl) (a day by
///   default).
/// * **No resurrection.** An invalidation runs as one Lua script in Redis:
///   it deletes the path's record, increments an invalidation generation
///   (per stripe of paths for a URL, one for prefixes and clears) and
///   publishes on the bus, with the new generation. A write is a Lua script
///   too, which stores the record only if the generations are still the
///   ones the replica had heard of when the request began: a replica that
///   learned a response produced before an invalidation can never write it
///   back after it, however late its write arrives. (A version in the
///   record could not tell "older than the invalidation"; `WATCH` would
///   need a connection per write; the epochs of the local store only see
///   invalidations this replica has already heard of.)
/// * **Fail safe.** Lookups happen only while the bus is connected; a
///   lookup with no answer within the timeout, an error, or a record that
///   cannot be read is a miss: the request goes to the inner service.
///
/// Records are keyed `<prefix><generation>:<16 hex digits of the path
/// group's hash>`, one Redis hash per path group with one field per
/// variant; the prefix also holds the two generation keys `<prefix>gen` and
/// `<prefix>gens`. A prefix invalidation or a clear moves every replica to a
/// new generation of keys: the old ones are never read again and expire with
/// their TTL. Every replica on the channel must use the same prefix (and
/// this version of the crate); a replica with a bus but no shared store does
/// not delete records when it invalidates. Give the Redis server a
/// `maxmemory` with a `volatile-*` eviction policy (records always have a
/// TTL, the generation keys never do) or `noeviction`. The store needs a
/// standalone Redis (not Cluster: the scripts name keys they compute) that
/// allows `EVAL`; where scripts are refused, the bus never connects, and
/// every request goes to the inner service.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_media_cache::{CachePolicy, MediaCacheLayer, Trust};
/// use tower_media_cache::bus::redis::{RedisBus, SharedStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = RedisBus::builder("redis://127.0.0.1:6379/")
///     .channel("media:invalidations")
///     .shared_store(SharedStore::new().prefix("media:validators:"))
///     .start()?;
/// let layer = MediaCacheLayer::new(
///     CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
/// )
/// .invalidation_bus(bus);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SharedStore {
    prefix: String,
    lookup_timeout: Duration,
    until_invalidated_ttl: Duration,
    max_ttl: Duration,
}

impl Default for SharedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedStore {
    /// The default settings: prefix [`DEFAULT_PREFIX`], 2 ms lookups, a
    /// day for entries trusted until invalidated, TTLs at most a day.
    pub fn new() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.into(),
            lookup_timeout: Duration::from_millis(2),
            until_invalidated_ttl: Duration::from_secs(86_400),
            max_ttl: Duration::from_secs(86_400),
        }
    }

    /// The prefix of every key the store uses (default [`DEFAULT_PREFIX`]).
    /// Services that share a Redis server but not their content use
    /// different ones.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a request waits for a lookup in Redis before it goes on to
    /// the inner service (default 2 ms).
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// How long Redis keeps an entry trusted until invalidated
    /// ([`Trust::UntilInvalidated`](crate::Trust::UntilInvalidated)) after
    /// its last write (default a day; capped by [`max_ttl`](Self::max_ttl)).
    pub fn until_invalidated_ttl(mut self, ttl: Duration) -> Self {
        self.until_invalidated_ttl = ttl;
        self
    }

    /// The longest time Redis keeps any entry (default a day).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }
}

/// The generations read when a connection starts.
#[derive(Debug)]
pub(crate) struct Generations {
    global: u64,
    stripes: Vec<(usize, u64)>,
}

/// A [`SharedStore`] at work: the generations this replica has heard of,
/// and the connection of the bus session they belong to.
pub(crate) struct RedisLevel2 {
    settings: SharedStore,
    runtime: Handle,
    /// Even while a session is live, odd while there is none or it is
    /// being set up; bumped by each change.
    session: AtomicU64,
    global: AtomicU64,
    stripes: Box<[AtomicU64]>,
    /// The live session's connection, tagged with its session number.
    connection: Mutex<Option<(u64, MultiplexedConnection)>>,
}

impl fmt::Debug for RedisLevel2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLevel2")
            .field("settings", &self.settings)
            .field("session", &self.session.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

/// Reads both generations at once.
const READ_GENERATIONS: &str = r"
return {redis.call('GET', ARGV[1] .. 'gen') or '0', redis.call('HGETALL', ARGV[1] .. 'gens')}
";

/// ARGV: prefix, kind (`key` or another), group hash, stripe, channel,
/// origin, the message's tail. Deletes, moves the generation and publishes
/// in one step.
const INVALIDATE: &str = r"
local p = ARGV[1]
local n
if ARGV[2] == 'key' then
  local g = redis.call('GET', p .. 'gen') or '0'
  redis.call('DEL', p .. g .. ':' .. ARGV[3])
  n = redis.call('HINCRBY', p .. 'gens', ARGV[4], 1)
else
  n = redis.call('INCR', p .. 'gen')
end
redis.call('PUBLISH', ARGV[5], 'tmc2 ' .. ARGV[6] .. ' ' .. n .. ' ' .. ARGV[7])
return n
";

/// ARGV: prefix, group hash, stripe, global and stripe generations the
/// request began in, field, record, TTL in ms, most fields. Writes only if
/// no invalidation moved the generations since.
const WRITE: &str = r"
local p = ARGV[1]
if (redis.call('GET', p .. 'gen') or '0') ~= ARGV[4] then return 0 end
if (redis.call('HGET', p .. 'gens', ARGV[3]) or '0') ~= ARGV[5] then return 0 end
local k = p .. ARGV[4] .. ':' .. ARGV[2]
if redis.call('HEXISTS', k, ARGV[6]) == 0 and redis.call('HLEN', k) >= tonumber(ARGV[9]) then
  redis.call('DEL', k)
end
redis.call('HSET', k, ARGV[6], ARGV[7])
if redis.call('PTTL', k) < tonumber(ARGV[8]) then redis.call('PEXPIRE', k, ARGV[8]) end
return 1
";

impl RedisLevel2 {
    pub(crate) fn new(settings: SharedStore, runtime: Handle) -> Self {
        Self {
            settings,
            runtime,
            session: AtomicU64::new(1),
            global: AtomicU64::new(0),
            stripes: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            connection: Mutex::new(None),
        }
    }

    /// Reads the generations on a new connection, after the bus subscribed:
    /// what it hears from then on comes on top.
    pub(crate) async fn read_generations(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Generations> {
        let (global, stripes): (u64, Vec<(u64, u64)>) = redis::cmd("EVAL")
            .arg(READ_GENERATIONS)
            .arg(0)
            .arg(&self.settings.prefix)
            .query_async(connection)
            .await?;
        let stripes = stripes
            .into_iter()
            .filter_map(|(stripe, n)| Some((usize::try_from(stripe).ok()?, n)))
            .filter(|(stripe, _)| *stripe < EPOCH_STRIPES)
            .collect();
        Ok(Generations { global, stripes })
    }

    /// A bus session begins on `connection`, with the generations read on
    /// it.
    pub(crate) fn begin(&self, connection: MultiplexedConnection, generations: Generations) {
        self.end();
        self.global.store(generations.global, Ordering::SeqCst);
        for stripe in self.stripes.iter() {
            stripe.store(0, Ordering::SeqCst);
        }
        for (stripe, n) in generations.stripes {
            self.stripes[stripe].store(n, Ordering::SeqCst);
        }
        let mut slot = self.slot();
        let session = self.session.load(Ordering::SeqCst) + 1;
        *slot = Some((session, connection));
        self.session.store(session, Ordering::SeqCst);
    }

    /// The session ended: nothing is looked up or written until the next.
    pub(crate) fn end(&self) {
        let mut slot = self.slot();
        let _ = self
            .session
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                (s % 2 == 0).then_some(s + 1)
            });
        *slot = None;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live session and its connection.
    fn live(&self) -> Option<(u64, MultiplexedConnection)> {
        self.slot().clone()
    }

    /// A message on the bus: the generation it carries (published by an
    /// invalidation script) is now heard of.
    pub(crate) fn heard(&self, message: &[u8]) {
        let Some(generation) = super::generation(message) else {
            return;
        };
        let counter = match super::decode(message).1 {
            Invalidation::Key(path) => {
                &self.stripes[Key::of_path(path.as_bytes()).stripe(EPOCH_STRIPES)]
            }
            // A tag names no path: like a prefix, it moves the global
            // generation (every record is left to expire).
            Invalidation::Prefix(_) | Invalidation::Tag(_) | Invalidation::Clear => &self.global,
        };
        counter.fetch_max(generation, Ordering::SeqCst);
    }

    /// The command that invalidates in Redis and publishes the message.
    pub(crate) fn invalidate(
        &self,
        channel: &str,
        origin: u64,
        invalidation: &Invalidation,
    ) -> redis::Cmd {
        let (kind, key, tail) = match invalidation {
            Invalidation::Key(path) => {
                ("key", Key::of_path(path.as_bytes()), format!("key {path}"))
            }
            Invalidation::Prefix(prefix) => {
                ("prefix", Key::of_path(b"/"), format!("prefix {prefix}"))
            }
            Invalidation::Tag(tag) => ("tag", Key::of_path(b"/"), format!("tag {tag}")),
            Invalidation::Clear => ("clear", Key::of_path(b"/"), "clear".to_owned()),
        };
        let mut command = redis::cmd("EVAL");
        command
            .arg(INVALIDATE)
            .arg(0)
            .arg(&self.settings.prefix)
            .arg(kind)
            .arg(format!("{:016x}", key.hash()))
            .arg(key.stripe(EPOCH_STRIPES))
            .arg(channel)
            .arg(format!("{origin:016x}"))
            .arg(tail);
        command
    }
}

impl SecondLevel for RedisLevel2 {
    fn epoch(&self, stripe: usize) -> Option<SharedEpoch> {
        let session = self.session.load(Ordering::SeqCst);
        if session % 2 == 1 {
            return None;
        }
        let epoch = SharedEpoch {
            session,
            stripe: self.stripes[stripe].load(Ordering::SeqCst),
            global: self.global.load(Ordering::SeqCst),
        };
        (self.session.load(Ordering::SeqCst) == session).then_some(epoch)
    }

    fn lookup(&self, key: Key) -> Option<Lookup> {
        let (_, mut connection) = self.live()?;
        let group = format!(
            "{}{}:{:016x}",
            self.settings.prefix,
            self.global.load(Ordering::SeqCst),
            key.hash()
        );
        let wait = self.settings.lookup_timeout;
        let (answer, lookup) = Lookup::new();
        self.runtime.spawn(async move {
            let mut command = redis::cmd("HVALS");
            command.arg(group);
            let reading = command.query_async::<Vec<Vec<u8>>>(&mut connection);
            let looked = match timeout(wait, reading).await {
                Ok(Ok(records)) => Looked::Found(records),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "shared validator store lookup failed");
                    Looked::Failed
                }
                Err(_) => Looked::Failed,
            };
            let _ = answer.send(looked);
        });
        Some(lookup)
    }

    fn write(
        &self,
        key: Key,
        variant: SharedVariant,
        started: SharedEpoch,
        counters: Arc<Counters>,
    ) {
        let Some((session, mut connection)) = self.live() else {
            return;
        };
        let settings = &self.settings;
        // Redis expires by its own clock: the window is measured from the
        // system's, whatever clock the layer was given.
        let Some(ttl) = time_to_live(
            variant.entry.trusted_until,
            SystemTime::now(),
            settings.until_invalidated_ttl,
            settings.max_ttl,
        ) else {
            return;
        };
        if session != started.session {
            // Learned on a connection that is gone: the generations it
            // began in mean nothing on this one.
            counters.bump(Counter::SharedWritesRefused);
            return;
        }
        let prefix = settings.prefix.clone();
        self.runtime.spawn(async move {
            let Some(record) = shared::encode(&variant) else {
                return;
            };
            let field = twox_hash::XxHash3_64::oneshot(&variant.selector).to_be_bytes();
            let mut command = redis::cmd("EVAL");
            command
                .arg(WRITE)
                .arg(0)
                .arg(prefix)
                .arg(format!("{:016x}", key.hash()))
                .arg(key.stripe(EPOCH_STRIPES))
                .arg(started.global)
                .arg(started.stripe)
                .arg(&field[..])
                .arg(record)
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                .arg(MAX_SHARED_VARIANTS);
            match timeout(WRITE_TIMEOUT, command.query_async::<i64>(&mut connection)).await {
                Ok(Ok(1)) => counters.bump(Counter::SharedWrites),
                Ok(Ok(_)) => {
                    counters.bump(Counter::SharedWritesRefused);
                    tracing::debug!("shared write refused: invalidated since the request began");
                }
                Ok(Err(error)) => {
                    counters.bump(Counter::SharedWritesRefused);
                    tracing::debug!(%error, "shared write failed");
                }
                Err(_) => {
                    counters.bump(Counter::SharedWritesRefused);
                    tracing::debug!("shared write timed out");
                }
            }
        });
    }
}
