//! Faults of the disk under a running `chatd run`: a real full filesystem
//! (a small tmpfs this test mounts), and real I/O errors (ext4 on a loop
//! device whose sparse backing file fills up: writes to new blocks fail
//! with EIO). The store refuses messages with `unavailable` and `/healthz`
//! answers 503; once space is freed the server takes messages again by
//! itself, with no restart, and the export holds every acked message
//! exactly once.
//!
//! Mounting needs root (CI runs as root); without it the tests say so and
//! skip.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chatd::client::Client;
use common::{Server, TIMEOUT, chatd_ok, within};
use serde_json::{Value, json};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (after saying why) when this process may not mount.
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs these tests as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        if !status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server a failed test left behind may still hold files.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An ext4 filesystem (no journal, `errors=continue`) on a loop device
/// whose backing file is sparse on a small tmpfs: once the tmpfs is full,
/// the disk answers writes to blocks it never held with EIO, as a failing
/// disk does; once space is freed, it takes them again.
struct LoopDisk {
    mount: tempfile::TempDir,
    device: String,
    // Dropped last: unmounted after the filesystem on it.
    backing: Tmpfs,
}

impl LoopDisk {
    /// None (after saying why) when this process may not set one up.
    fn new() -> Option<LoopDisk> {
        let backing = Tmpfs::mount("24m")?;
        let image = backing.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let run = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let Some(device) = run("losetup", &["-f", "--show", image.to_str().unwrap()]) else {
            eprintln!("SKIPPED: cannot set up a loop device here (losetup)");
            return None;
        };
        let mount = tempfile::tempdir().unwrap();
        let made = run(
            "mkfs.ext4",
            &["-q", "-O", "^has_journal", "-E", "nodiscard", &device],
        )
        .and_then(|_| {
            run(
                "mount",
                &[
                    "-o",
                    "errors=continue",
                    &device,
                    mount.path().to_str().unwrap(),
                ],
            )
        });
        if made.is_none() {
            let _ = run("losetup", &["-d", &device]);
            eprintln!("SKIPPED: cannot make or mount an ext4 filesystem on {device}");
            return None;
        }
        Some(LoopDisk {
            mount,
            device,
            backing,
        })
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// Fills the filesystem at `dir` with a ballast file until a write fails
/// for lack of space; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast).unwrap();
    let block = vec![0xa5u8; 4096];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let _ = file.sync_all();
    ballast
}

/// `GET /healthz` over plain HTTP: status and body.
fn healthz(port: u16) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `/healthz` until its status is `want`; returns the body.
async fn wait_for_health(port: u16, want: u16) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = healthz(port);
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {status} ({body:?}), expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends message `i` (with cid `m<i>`) and returns its ack.
async fn send_numbered(client: &Client, i: usize, text: &str) -> Value {
    let ack = within(
        "an ack",
        client
            .emit_with_ack(
                "chat message",
                json!({"text": format!("{i} {text}"), "cid": format!("m{i}")}),
            )
            .await
            .expect("send"),
    )
    .await
    .expect("ack");
    ack.first().expect("JSON arguments")
}

fn refused_unavailable(ack: &Value) -> bool {
    ack["ok"] == false && ack["reason"] == "unavailable"
}

#[tokio::test]
async fn a_full_disk_refuses_then_heals_without_a_restart() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    fails_then_heals(&tmpfs.path().join("data"), tmpfs.path(), false).await;
}

#[tokio::test]
async fn io_errors_refuse_then_heal_without_a_restart() {
    let Some(disk) = LoopDisk::new() else {
        return;
    };
    // An fsync that fails may still have written the commit: its refused
    // messages may turn out stored, and their resends are duplicates.
    fails_then_heals(&disk.mount.path().join("data"), disk.backing.path(), true).await;
}

/// The server on `data` takes messages, then `fill` (the filesystem under
/// it, or under its disk) fills up: messages are refused `unavailable`,
/// `/healthz` answers 503, one line is logged; `fill` is emptied again:
/// the server takes messages again by itself, and its export holds every
/// acked message once. With `may_land`, a refused message may turn out
/// stored (its resend with the same cid is then answered as a duplicate).
async fn fails_then_heals(data: &Path, fill_dir: &Path, may_land: bool) {
    let mut server = Server::start(data, &["--rate-limit", "0"]);
    let alice = server.connect_plain("Alice", "Bob").await;
    let filler = "x".repeat(3000);

    // Some history first, then the disk fills up under the server.
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let ack = send_numbered(&alice, i, &filler).await;
        assert_eq!(ack["ok"], true, "{ack}");
        acked.insert(i);
    }
    let ballast = fill(fill_dir);
    let mut refused = Vec::new();
    let mut i = 20;
    while refused.len() < 50 {
        let ack = send_numbered(&alice, i, &filler).await;
        if ack["ok"] == true {
            assert!(refused.is_empty(), "accepted after a refusal: {ack}");
            acked.insert(i);
        } else {
            assert!(refused_unavailable(&ack), "{ack}");
            refused.push(i);
        }
        i += 1;
        assert!(i < 5000, "the full disk never refused a message");
    }
    let body = wait_for_health(server.port, 503).await;
    assert!(body.contains("store: "), "{body:?}");
    server.log_line("store cannot commit");

    // Space again: the server recovers by itself.
    std::fs::remove_file(&ballast).unwrap();
    assert_eq!(wait_for_health(server.port, 200).await, "ok\n");
    let recovered = server.log_line("store recovered");
    eprintln!("{recovered}");
    // Every refused message is sent again with its cid, and taken once.
    let mut landed = 0;
    for &i in &refused {
        let ack = send_numbered(&alice, i, &filler).await;
        assert_eq!(ack["ok"], true, "{ack}");
        if ack.get("duplicate").is_some() {
            assert!(may_land, "refused, yet stored: {ack}");
            landed += 1;
        }
        acked.insert(i);
    }
    drop(alice);
    let logs = server.stop_with_logs();
    let failing = logs
        .iter()
        .filter(|l| l.contains("store cannot commit"))
        .count();
    assert_eq!(failing, 1, "one line per outage, not per batch: {logs:#?}");
    if landed > 0 {
        assert!(
            logs.iter()
                .any(|l| l.contains("a commit reported as failed was stored")),
            "{logs:#?}"
        );
    }
    let errors = logs.iter().filter(|l| l.contains("ERROR")).count();
    assert!(
        errors <= 3,
        "{errors} error lines for one outage: {logs:#?}"
    );

    // The export holds every acked message exactly once.
    let out = chatd_ok(data, &["export", "--all"]);
    let exported: Vec<Value> = serde_json::from_str(&out).expect("a JSON array");
    let mut seen = BTreeSet::new();
    for m in &exported {
        let text = m["text"].as_str().unwrap();
        let i: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert!(seen.insert(i), "message {i} exported twice");
    }
    assert!(
        seen.iter().eq(acked.iter()),
        "exported {seen:?}, acked {acked:?}"
    );
}
