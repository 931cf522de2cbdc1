//! A fresh replica with and without the shared second level (feature
//! `redis`), against a real `redis-server` started here on 127.0.0.1.
//!
//! ```text
//! cargo bench --features redis --bench shared_store
//! FILES=10000 REVALIDATIONS=1000 ROUNDS=5 HANDLER_US=0 cargo bench --features redis --bench shared_store
//! ```
//!
//! The handler serves the files from memory, after `HANDLER_US`
//! microseconds (default 0; `tokio::time::sleep`, so at least a
//! millisecond when set): the time a real one spends reading a disk, an
//! object store or a database.
//!
//! A seeding replica learns `FILES` files (16 KiB each) and shares them.
//! Then, per round, two fresh replicas start — one with the shared store,
//! one with the bus alone, in alternating order — and each sends
//! `REVALIDATIONS` revalidations of distinct random files right after it
//! connected, one at a time: handler calls and latency (p50, p99, max).
//! Last, the CPU per short-circuit: a fresh replica revalidates every file
//! once (each answered from Redis, then installed locally) and then every
//! file again (each answered from its local store); the CPU is this
//! process's (every thread) plus redis-server's, read from
//! `/proc/<pid>/task/*/schedstat` (nanoseconds) around each pass.

#[path = "../tests/common/redis_server.rs"]
mod redis_server;

fn main() {
    bench::main();
}

mod bench {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;
    use tower_media_cache::bus::redis::{RedisBus, SharedStore};
    use tower_media_cache::{CacheHandle, CachePolicy, MediaCache, MediaCacheLayer, Trust};

    use super::redis_server::RedisServer;

    type Inner =
        tower::util::BoxCloneSyncService<Request<Bytes>, Response<Full<Bytes>>, Infallible>;

    struct Replica {
        service: MediaCache<Inner>,
        handle: CacheHandle,
        calls: Arc<AtomicUsize>,
    }

    impl Replica {
        async fn start(files: &Arc<HashMap<String, Bytes>>, url: &str, shared: bool) -> Self {
            let calls = Arc::new(AtomicUsize::new(0));
            let delay = Duration::from_micros(env("HANDLER_US", 0) as u64);
            let inner = {
                let (files, calls) = (files.clone(), calls.clone());
                tower::service_fn(move |request: Request<Bytes>| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let body = files[request.uri().path()].clone();
                    async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                })
            };
            let mut bus = RedisBus::builder(url).channel("bench:invalidations");
            if shared {
                bus = bus.shared_store(SharedStore::new().prefix("bench:validators:"));
            }
            let layer = MediaCacheLayer::new(
                CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
            )
            .invalidation_bus(bus.start().unwrap());
            let handle = layer.handle();
            let replica = Self {
                service: tower::Layer::layer(&layer, Inner::new(inner)),
                handle,
                calls,
            };
            while !replica.handle.bus_connected() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            replica
        }

        async fn send(&self, request: Request<Bytes>) -> http::StatusCode {
            let response = self.service.clone().oneshot(request).await.unwrap();
            let status = response.status();
            response.into_body().collect().await.unwrap();
            status
        }
    }

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// A small deterministic generator (xorshift), for file bytes and picks.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// CPU time of every thread of `pid`, in nanoseconds.
    fn cpu_ns(pid: u32) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .filter_map(|task| {
                let path = task.ok()?.path().join("schedstat");
                let text = std::fs::read_to_string(path).ok()?;
                text.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }

    fn micros(d: Duration) -> String {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }

    pub(super) fn main() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run());
    }

    async fn run() {
        let files_n = env("FILES", 10_000);
        let revalidations = env("REVALIDATIONS", 1_000).min(files_n);
        let rounds = env("ROUNDS", 5);
        let Some(redis) = RedisServer::start("shared_store bench") else {
            return;
        };
        let redis_pid = redis_pid(redis.port);
        let url = redis.url();
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let files: Arc<HashMap<String, Bytes>> = Arc::new(
            (0..files_n)
                .map(|i| {
                    let bytes: Vec<u8> = (0..16 * 1024).map(|_| random.next() as u8).collect();
                    (format!("/media/{i:05}.jpg"), Bytes::from(bytes))
                })
                .collect(),
        );

        // The seeding replica learns and shares every file.
        let used_before = used_memory(&url).await;
        let seeder = Replica::start(&files, &url, true).await;
        let mut tags = HashMap::new();
        for path in files.keys() {
            let response = seeder
                .service
                .clone()
                .oneshot(Request::get(path).body(Bytes::new()).unwrap())
                .await
                .unwrap();
            let etag = response.headers()["etag"].to_str().unwrap().to_owned();
            response.into_body().collect().await.unwrap();
            tags.insert(path.clone(), etag);
        }
        while seeder.handle.stats().shared_writes < files_n as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let used_after = used_memory(&url).await;
        let per_entry = memory_usage(&url).await;
        println!(
            "Redis memory: {} B per entry by MEMORY USAGE (one variant, a record of {} B), \
             {} B per entry by INFO used_memory ({} entries)",
            per_entry.0,
            per_entry.1,
            (used_after.saturating_sub(used_before)) / files_n as u64,
            files_n
        );

        let paths: Vec<&String> = files.keys().collect();
        let mut table = Vec::new();
        for round in 0..rounds {
            let picks: Vec<&String> = {
                let mut picked = std::collections::HashSet::new();
                while picked.len() < revalidations {
                    picked.insert(paths[(random.next() % paths.len() as u64) as usize]);
                }
                picked.into_iter().collect()
            };
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for shared in order {
                let replica = Replica::start(&files, &url, shared).await;
                let mut latencies = Vec::with_capacity(picks.len());
                for path in &picks {
                    let request = Request::get(path.as_str())
                        .header("if-none-match", &tags[*path])
                        .body(Bytes::new())
                        .unwrap();
                    let started = Instant::now();
                    let status = replica.send(request).await;
                    latencies.push(started.elapsed());
                    assert_eq!(status, 304);
                }
                latencies.sort();
                let stats = replica.handle.stats();
                table.push((
                    round,
                    shared,
                    replica.calls.load(Ordering::Relaxed),
                    percentile(&latencies, 0.5),
                    percentile(&latencies, 0.99),
                    *latencies.last().unwrap(),
                    stats.shared_hits,
                    stats.shared_unavailable,
                ));
            }
        }
        println!(
            "\n{revalidations} revalidations of distinct files right after start ({files_n} files shared):\n"
        );
        println!(
            "| round | replica | handler calls | p50 | p99 | max | shared hits | lookups timed out |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        for (round, shared, calls, p50, p99, max, hits, unavailable) in &table {
            println!(
                "| {round} | {} | {calls} | {} | {} | {} | {hits} | {unavailable} |",
                if *shared { "shared store" } else { "bus only" },
                micros(*p50),
                micros(*p99),
                micros(*max)
            );
        }
        for shared in [true, false] {
            let rows: Vec<_> = table.iter().filter(|r| r.1 == shared).collect();
            let mut p50: Vec<Duration> = rows.iter().map(|r| r.3).collect();
            let mut p99: Vec<Duration> = rows.iter().map(|r| r.4).collect();
            let mut calls: Vec<usize> = rows.iter().map(|r| r.2).collect();
            p50.sort();
            p99.sort();
            calls.sort();
            println!(
                "median over rounds, {}: handler calls {}, p50 {}, p99 {}",
                if shared { "shared store" } else { "bus only" },
                calls[calls.len() / 2],
                micros(p50[p50.len() / 2]),
                micros(p99[p99.len() / 2])
            );
        }

        // CPU per short-circuit: every file once from Redis, then once from
        // the local store, on a fresh replica; one request at a time, then
        // `IN_FLIGHT` at a time (on another fresh replica).
        let in_flight = env("IN_FLIGHT", 32).max(1);
        println!("\nCPU per short-circuit (this process + redis-server), {files_n} files:\n");
        println!(
            "| pass | in flight | process µs/req | redis-server µs/req | total µs/req | wall µs/req | handler calls |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let me = std::process::id();
        for concurrency in [1, in_flight] {
            let replica = Replica::start(&files, &url, true).await;
            for pass in ["second level (Redis)", "first level (local)"] {
                let (process, server, wall) = (cpu_ns(me), cpu_ns(redis_pid), Instant::now());
                let calls = replica.calls.load(Ordering::Relaxed);
                for chunk in paths.chunks(concurrency) {
                    let answers = chunk.iter().map(|path| {
                        let request = Request::get(path.as_str())
                            .header("if-none-match", &tags[*path])
                            .body(Bytes::new())
                            .unwrap();
                        replica.send(request)
                    });
                    for status in futures_util::future::join_all(answers).await {
                        assert_eq!(status, 304);
                    }
                }
                // Lookups that timed out went to the handler: counted, and
                // part of the CPU.
                let calls = replica.calls.load(Ordering::Relaxed) - calls;
                let n = paths.len() as f64;
                let process = (cpu_ns(me) - process) as f64 / n / 1e3;
                let server = (cpu_ns(redis_pid) - server) as f64 / n / 1e3;
                let wall = wall.elapsed().as_secs_f64() * 1e6 / n;
                println!(
                    "| {pass} | {concurrency} | {process:.2} | {server:.2} | {:.2} | {wall:.2} | {calls} |",
                    process + server
                );
            }
        }
    }

    /// The pid of the redis-server listening on `port` (it is our child;
    /// found through /proc by its command line).
    fn redis_pid(port: u16) -> u32 {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("redis-server") && cmdline.contains(&port.to_string()) {
                return pid;
            }
        }
        panic!("redis-server on port {port} not found in /proc");
    }

    async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn used_memory(url: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut connection(url).await)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// `MEMORY USAGE` averaged over up to 100 record keys, and the size of
    /// one record.
    async fn memory_usage(url: &str) -> (u64, usize) {
        let mut connection = connection(url).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("bench:validators:0:*")
            .query_async(&mut connection)
            .await
            .unwrap();
        let sample = &keys[..keys.len().min(100)];
        let mut total = 0u64;
        for key in sample {
            let bytes: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut connection)
                .await
                .unwrap();
            total += bytes;
        }
        let values: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(&sample[0])
            .query_async(&mut connection)
            .await
            .unwrap();
        let record = values.first().map_or(0, Vec::len);
        (total / sample.len() as u64, record)
    }
}
