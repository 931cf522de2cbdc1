//! A `redis-server` started by a test on 127.0.0.1 (random free port, no
//! persistence) and killed with it; shared by the Redis tests with
//! `#[path = "common/redis_server.rs"] mod redis_server;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bounded waits: generous, since the machine may be busy; they end as soon
/// as the condition holds.
pub const WAIT: Duration = Duration::from_secs(30);

fn redis_server_binary() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .collect()
        })
        .unwrap_or_default();
    candidates.extend(
        [
            "/usr/bin/redis-server",
            "/usr/sbin/redis-server",
            "/usr/local/bin/redis-server",
        ]
        .map(PathBuf::from),
    );
    candidates.into_iter().find(|path| path.is_file())
}

/// A `redis-server` child process; killed on drop.
pub struct RedisServer {
    binary: PathBuf,
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port, or `None` (with a message) when there is
    /// no `redis-server` on this machine.
    pub fn start(test: &str) -> Option<Self> {
        let Some(binary) = redis_server_binary() else {
            eprintln!(
                "SKIPPED {test}: no redis-server found (PATH, /usr/bin, /usr/sbin, /usr/local/bin); \
                 install it with `apt-get install redis-server`"
            );
            return None;
        };
        // A port found free may be taken before redis-server binds it:
        // then it exits, and another port is tried.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "tower-media-cache-redis-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("a working directory for redis-server");
            let mut server = Self {
                binary: binary.clone(),
                port,
                dir,
                child: None,
            };
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(failure) => failures.push(failure),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Restarts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        if let Err(failure) = self.try_start() {
            panic!("{failure}");
        }
    }

    /// Starts the server on its port and waits until it answers.
    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            let answered = ping(self.port);
            // Ours, not another test's on the same port: still running.
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                ));
            }
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} did not answer PING within {WAIT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: its connections
    /// stay open but nothing answers, as in a silent network failure.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {pid}"))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server running");
        child.kill().expect("kill redis-server");
        child.wait().expect("reap redis-server");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL works on a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

pub fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
