//! Operating weft: every process's /metrics passes `promtool check metrics`;
//! a real Prometheus (Debian's, on loopback) scrapes a cluster doing I/O
//! through a real mount and PromQL answers with the expected series; every
//! metric the Grafana dashboard and the alert rules query is exported; the
//! alert rules pass `promtool check rules` and `promtool test rules`.
//! Needs promtool and prometheus (scripts/install-test-deps installs them).

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use weft_testkit::{http, pattern, wait_until, TestCluster};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{tool} is missing: run scripts/install-test-deps");
}

/// Every (job, HTTP address) of the cluster.
fn endpoints(c: &TestCluster) -> Vec<(&'static str, String)> {
    let cl = &c.cluster;
    let mut v = vec![("weft-mds", cl.mds.http.clone().expect("mds http"))];
    for d in &cl.chunkds {
        v.push(("weft-chunkd", d.http.clone().expect("chunkd http")));
    }
    for m in &cl.mounts {
        v.push(("weftfs", m.proc.http.clone().expect("weftfs http")));
    }
    v
}

fn scrape(addr: &str) -> String {
    let (status, body) = http::get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET {addr}/metrics: {body}");
    body
}

/// The value of the one sample `name{labels...}` in an exposition.
fn sample(exposition: &str, series: &str) -> f64 {
    let line = exposition
        .lines()
        .find(|l| l.split(' ').next() == Some(series))
        .unwrap_or_else(|| panic!("no sample {series}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn promtool_check_metrics(addr: &str, exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics of {addr} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server on a loopback port, stopped by PID on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, String)]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("weft-prom-")
            .tempdir()
            .unwrap();
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for job in ["weft-mds", "weft-chunkd", "weftfs"] {
            let addrs: Vec<String> = targets
                .iter()
                .filter(|(j, _)| *j == job)
                .map(|(_, a)| format!("\"{a}\""))
                .collect();
            cfg += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                addrs.join(", ")
            );
        }
        std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
        // A free loopback port (Prometheus cannot report one it picked).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.console.templates=/dev/null")
            .arg("--web.console.libraries=/dev/null")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_until("Prometheus ready", Duration::from_secs(60), || {
            matches!(http::get(&p.addr, "/-/ready"), Ok((200, _)))
        });
        p
    }

    /// The instant vector `q` as (labels, value) pairs.
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let (status, body) = http::get(
            &self.addr,
            &format!("/api/v1/query?query={}", http::encode(q)),
        )
        .expect("query");
        assert_eq!(status, 200, "query {q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
                )
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Metric names a PromQL expression uses (weft's own and `up`).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            cur.push(ch);
        } else {
            if cur.starts_with("weft_") {
                out.insert(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("dist/grafana/weft.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(out.len() > 20, "the dashboard has too few queries");
    out
}

fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("dist/prometheus/alerts.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_a_cluster_doing_io() {
    require("promtool");
    require("prometheus");
    let mut c = TestCluster::start_with(3, |s| {
        s.http = true;
        s.chunk_size = Some(1 << 20);
        s.racks = vec!["ra".into(), "rb".into(), "rc".into()];
    });
    let mnt = c.mount();

    // I/O through the mount: 6 MiB written, fsynced, read back; a miss.
    let data = pattern(6 << 20, 15);
    let path = mnt.join("big");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    for i in 0..20 {
        std::fs::write(mnt.join(format!("small{i}")), b"x").unwrap();
    }
    let back = std::fs::read(&path).unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    let err = std::fs::metadata(mnt.join("absent")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

    let eps = endpoints(&c);
    assert_eq!(eps.len(), 5);
    let mut exported = BTreeSet::new();
    for (job, addr) in &eps {
        let text = scrape(addr);
        promtool_check_metrics(addr, &text);
        exported.extend(http::exported_names(&text));
        match *job {
            "weftfs" => {
                assert!(sample(&text, "weft_client_written_bytes_total") >= data.len() as f64);
                assert!(sample(&text, "weft_client_fuse_requests_total{op=\"write\"}") > 0.0);
                assert!(sample(&text, "weft_client_mds_requests_total{op=\"create\"}") >= 21.0);
                assert!(sample(&text, "weft_client_chunk_requests_total{op=\"sync\"}") >= 1.0);
            }
            "weft-mds" => {
                assert!(sample(&text, "weft_mds_requests_total{op=\"create\"}") >= 21.0);
                assert_eq!(sample(&text, "weft_mds_chunkds_alive"), 3.0);
                assert_eq!(sample(&text, "weft_mds_sessions"), 1.0);
                assert!(sample(&text, "weft_mds_wal_written_bytes_total") > 0.0);
                assert!(sample(&text, "weft_mds_wal_fdatasync_duration_seconds_count") > 0.0);
                assert!(sample(&text, "weft_mds_files") >= 21.0);
                // A single MDS leads its group of one, nothing left to apply.
                assert_eq!(sample(&text, "weft_mds_is_leader"), 1.0);
                assert_eq!(sample(&text, "weft_mds_has_leader"), 1.0);
                assert!(sample(&text, "weft_mds_term") >= 1.0);
                assert!(sample(&text, "weft_mds_last_log_index") > 0.0);
                assert!(
                    sample(&text, "weft_mds_applied_index")
                        >= sample(&text, "weft_mds_last_log_index") - 1.0
                );
            }
            _ => {
                // 6 chunks of "big" and one segment, where the 20 small
                // files are packed; 3 replicas on 3 daemons.
                assert_eq!(sample(&text, "weft_chunkd_replicas"), 7.0, "{addr}");
            }
        }
    }
    // The lookup of "absent" reached weftfs's error path (ENOENT).
    let fs_text = scrape(&eps[4].1);
    assert!(sample(&fs_text, "weft_client_fuse_errors_total{errno=\"ENOENT\"}") >= 1.0);

    // Every metric the dashboard and the alert rules query is exported.
    for expr in dashboard_exprs().iter().chain(alert_exprs().iter()) {
        for name in names_in(expr) {
            assert!(
                exported.contains(&name),
                "`{expr}` uses {name}, which no daemon exports"
            );
        }
    }

    // A real Prometheus scrapes all five while I/O goes on.
    let prom = Prometheus::start(&eps);
    let more = pattern(3 << 20, 16);
    std::fs::write(mnt.join("more"), &more).unwrap();
    wait_until(
        "Prometheus to scrape every target twice",
        Duration::from_secs(60),
        || {
            let up = prom.query("count_over_time(up[1m]) >= 2");
            up.len() == 5
        },
    );
    let up = prom.query("up");
    assert_eq!(up.len(), 5, "{}", prom.log());
    assert!(
        up.iter().all(|(_, v)| *v == 1.0),
        "a target is down: {up:?}"
    );
    let written = prom.query("sum(weft_client_written_bytes_total)");
    assert!(
        written[0].1 >= (data.len() + more.len()) as f64,
        "{written:?}"
    );
    // Each byte lands on three replicas.
    let stored = prom.query("sum(weft_chunkd_written_bytes_total)");
    assert!(
        stored[0].1 >= 3.0 * (data.len() + more.len()) as f64,
        "{stored:?}"
    );
    let alive = prom.query("weft_mds_chunkd_alive");
    let racks: BTreeSet<String> = alive
        .iter()
        .map(|(m, _)| m["rack"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(racks, ["ra", "rb", "rc"].map(String::from).into());
    assert!(alive.iter().all(|(_, v)| *v == 1.0));
    let cap = prom.query("sum(weft_mds_chunkd_capacity_bytes) - sum(weft_mds_chunkd_used_bytes)");
    assert!(cap[0].1 > 0.0, "{cap:?}");
    let p99 = prom
        .query("histogram_quantile(0.99, sum by (le) (weft_mds_request_duration_seconds_bucket))");
    assert!(p99[0].1 > 0.0 && p99[0].1 <= 10.0, "MDS p99 {p99:?}");
    assert_eq!(prom.query("weft_mds_chunks_missing")[0].1, 0.0);
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    require("promtool");
    let dir = repo_root().join("dist/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn weft_stats_prints_a_line_per_interval_with_rates_and_health() {
    let mut c = TestCluster::start_with(3, |s| s.chunk_size = Some(1 << 20));
    let mnt = c.mount();
    let mds = c.mds_addr();
    // Writes go on while `weft stats` watches: 2 MiB files, each fsynced.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, mnt) = (stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            let data = pattern(2 << 20, 3);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut f = std::fs::File::create(mnt.join(format!("w{}", i % 8))).unwrap();
                f.write_all(&data).unwrap();
                f.sync_all().unwrap();
                i += 1;
            }
        })
    };
    // A bad address first: the next one answers.
    let out = Command::new(weft_testkit::bin("weft"))
        .args([
            "stats",
            "--mds",
            &format!("127.0.0.1:1,{mds}"),
            "--interval",
            "1",
            "--count",
            "4",
        ])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "a header and 4 lines:\n{text}");
    assert!(lines[0].contains("meta/s") && lines[0].contains("write MiB/s"));
    let mut wrote = 0.0f64;
    for l in &lines[1..] {
        let f: Vec<&str> = l.split_whitespace().collect();
        // time meta/s lat ... read write daemons under missing
        let n = f.len();
        assert_eq!(f[n - 3], "3/3", "{l}");
        // Chunks just allocated count as missing until a replica reports
        // them (a heartbeat later), so only the column's presence is checked.
        assert!(f[n - 1].parse::<u64>().is_ok(), "{l}");
        wrote = wrote.max(f[n - 4].parse().unwrap());
        assert!(
            f[1].parse::<f64>().unwrap() > 0.0,
            "metadata requests/s: {l}"
        );
    }
    // Every replica counts its writes: at least a few MiB/s in some second.
    assert!(wrote >= 1.0, "no write rate shown:\n{text}");

    let bad = Command::new(weft_testkit::bin("weft"))
        .args(["stats", "--mds", &mds, "--interval", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--interval 0"));
}
