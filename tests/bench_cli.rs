//! `chatd bench`: each scenario, very briefly, against a real server, with
//! `--json`; the figures must be there and make sense.

mod common;

use std::process::{Command, Stdio};

use chatd::datadir::SECRET_FILE;
use common::{CHATD, Server, start_server};
use serde_json::{Value, json};

/// Runs `chatd bench ARGS... --json`, which must succeed; its JSON report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(CHATD)
        .arg("bench")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run chatd bench");
    assert!(
        out.status.success(),
        "chatd bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        let stdout = String::from_utf8_lossy(&out.stdout);
        panic!("chatd bench {args:?} did not print one JSON object ({e}): {stdout}")
    })
}

fn number(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {report}"))
}

/// p50 <= p90 <= p99 <= max, all positive, for `prefix`.
fn check_latency(report: &Value, prefix: &str) {
    let [p50, p90, p99, max] =
        ["p50", "p90", "p99", "max"].map(|q| number(report, &format!("{prefix}_{q}_ms")));
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{prefix} percentiles out of order: {report}"
    );
}

/// `wss://` flags for a TLS + auth server started by [`start_server`].
fn tls_flags(server: &Server) -> Vec<String> {
    let secret = server.data_dir.join(SECRET_FILE);
    let pid = server.child.id().to_string();
    vec![
        "--url".into(),
        server.url(),
        "--token-secret".into(),
        secret.to_string_lossy().into_owned(),
        "--ca".into(),
        server.cert().to_string_lossy().into_owned(),
        "--server-pid".into(),
        pid,
    ]
}

/// What every pairs run must show: everything acknowledged arrived, once,
/// with sane latencies.
fn check_pairs(report: &Value) {
    assert_eq!(report["scenario"], "pairs");
    assert_eq!(report["connections"], 4);
    assert!(number(report, "delivered") > 0.0, "{report}");
    assert!(number(report, "delivered_per_sec") > 0.0, "{report}");
    assert_eq!(report["sent"], report["acked"], "{report}");
    assert_eq!(report["acked"], report["delivered"], "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["refusals"], json!({}), "{report}");
    assert_eq!(report["errors"], json!({}), "{report}");
    check_latency(report, "e2e");
    check_latency(report, "ack");
    assert!(number(report, "server_cpu_s_per_100k_delivered") >= 0.0);
    // The server's time, split, and what its cores did meanwhile.
    let split = number(report, "server_user_s") + number(report, "server_system_s");
    assert!(
        (split - number(report, "server_cpu_s")).abs() < 1e-6,
        "{report}"
    );
    assert!(
        number(report, "server_voluntary_switches") > 0.0,
        "{report}"
    );
    assert!(number(report, "server_involuntary_switches") >= 0.0);
    for key in [
        "server_cpu_percent",
        "server_core_busy_percent",
        "server_core_steal_percent",
        "server_core_others_percent",
    ] {
        assert!(
            (0.0..=200.0).contains(&number(report, key)),
            "{key}: {report}"
        );
    }
}

#[test]
fn pairs_closed_and_open_loop() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--rate-limit", "0"]);
    let url = format!("ws://{}", server.addr());
    let pid = server.child.id().to_string();
    let common = [
        "pairs",
        "--url",
        &url,
        "--no-auth",
        "--pairs",
        "2",
        "--server-pid",
        &pid,
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ];
    let closed = bench(&[&common[..], &["--closed-loop"]].concat());
    check_pairs(&closed);
    assert_eq!(closed["mode"], "closed");

    let open = bench(&[&common[..], &["--rate", "50"]].concat());
    check_pairs(&open);
    assert_eq!(open["mode"], "open");
    assert_eq!(open["offered_per_sec"], 200.0);
    // 4 sides at 50 messages/s for 1.2 s, on schedule: 240 messages.
    let sent = number(&open, "sent");
    assert!((236.0..=240.0).contains(&sent), "{open}");
}

#[test]
fn pairs_needs_a_way_to_authenticate() {
    let out = Command::new(CHATD)
        .args(["bench", "pairs", "--url", "ws://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-secret FILE and --no-auth"),
        "{stderr}"
    );
}

#[test]
fn idle_over_tls_with_tokens() {
    let server = start_server(&[]);
    let flags = tls_flags(&server);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let report = bench(
        &[
            &["idle"][..],
            &flags,
            &["--connections", "20", "--duration", "1"],
        ]
        .concat(),
    );
    assert_eq!(report["connections"], 20);
    assert_eq!(report["dropped"], 0);
    let (base, held) = (
        number(&report, "server_rss_baseline_kib"),
        number(&report, "server_rss_kib"),
    );
    assert!(base > 0.0 && held > 0.0, "{report}");
    let per_connection = number(&report, "rss_per_connection_kib");
    assert_eq!(per_connection, (held - base) / 20.0, "{report}");
}

#[test]
fn connect_over_tls_with_tokens() {
    let server = start_server(&[]);
    let flags = tls_flags(&server);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let args = [
        &["connect"][..],
        &flags,
        &["--connections", "20", "--concurrency", "4"],
    ];
    let report = bench(&args.concat());
    assert_eq!(report["tls"], true);
    assert_eq!(report["auth"], true);
    assert_eq!(report["handshakes"], 20, "{report}");
    assert_eq!(report["errors"], json!({}), "{report}");
    assert!(number(&report, "handshakes_per_sec") > 0.0);
    check_latency(&report, "handshake");
    assert!(number(&report, "server_cpu_ms_per_handshake") >= 0.0);
}

#[test]
fn store_inserts_and_exports() {
    let report = bench(&["store", "--messages", "2000", "--rooms", "10"]);
    assert_eq!(report["messages"], 2000);
    assert_eq!(report["exported"], 2000);
    assert!(number(&report, "inserts_per_sec") > 0.0);
    assert!(number(&report, "export_per_sec") > 0.0);
    let batches = number(&report, "batches");
    assert!((1.0..=2000.0).contains(&batches), "{report}");
    assert!(number(&report, "peak_rss_kib") > 0.0);
}
