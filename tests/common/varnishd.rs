//! Starting `varnishd` in the foreground for a test: one instance folder
//! under the test's scratch folder, listening on 127.0.0.1 only, no
//! management port, a small in-memory storage. Shared by the tests that run
//! Varnish (`tests/real_caches.rs`, `tests/purge.rs`).

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `binary` with the VCL file `vcl`, on 127.0.0.1:`port`, its instance and
/// log (`varnishd.log`) in `dir`.
pub fn spawn_varnishd(binary: &Path, dir: &Path, vcl: &Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("varnishd.log")).unwrap();
    Command::new(binary)
        .arg("-F")
        .arg("-n")
        .arg(dir.join("instance"))
        .arg("-a")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-T")
        .arg("none")
        .arg("-f")
        .arg(vcl)
        .arg("-s")
        .arg("malloc,32m")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start varnishd")
}
