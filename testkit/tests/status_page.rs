//! The MDS's status page (`--http`, `/`), loaded in headless Chromium
//! (Debian's; scripts/install-test-deps installs it): after its script has
//! fetched /api/status and rendered, the page shows each chunk daemon with
//! its rack, state and replicas, the file and chunk counts, health, and the
//! mount's session; a killed daemon shows as dead and the cluster as degraded.

use std::process::Command;
use std::time::{Duration, Instant};
use weft_testkit::{pattern, TestCluster};

/// The DOM of `url` once its scripts ran (Chromium's virtual time runs the
/// fetch and the render before the dump).
fn rendered_dom(url: &str) -> String {
    let profile = tempfile::Builder::new()
        .prefix("weft-chromium-")
        .tempdir()
        .unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium (scripts/install-test-deps installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(url: &str, png: &str) {
    let profile = tempfile::Builder::new()
        .prefix("weft-chromium-")
        .tempdir()
        .unwrap();
    let status = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--hide-scrollbars",
            "--window-size=1100,820",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={png}"))
        .arg(url)
        .status()
        .expect("chromium");
    assert!(status.success());
}

/// The rendered DOM, taken again until `ok` holds (the page shows what the
/// MDS knows at the time of the fetch) or 30 s pass.
fn dom_until(url: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let dom = rendered_dom(url);
        if ok(&dom) {
            return dom;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "page never showed {what}:\n{dom}"
        );
    }
}

#[test]
fn status_page_renders_daemons_counts_and_health_in_chromium() {
    let mut c = TestCluster::start_with(3, |s| {
        s.http = true;
        s.chunk_size = Some(1 << 20);
        s.racks = vec!["rack-a".into(), "rack-b".into(), "rack-c".into()];
    });
    let mnt = c.mount();
    std::fs::write(mnt.join("f"), pattern(3 << 20, 7)).unwrap();
    let url = format!("http://{}/", c.cluster.mds.http.clone().unwrap());

    let dom = dom_until(&url, "3 healthy daemons and the file", |d| {
        d.matches("class=\"daemon\"").count() == 3
            && d.contains("class=\"healthy\">healthy<")
            && d.contains("id=\"t-files\"><b>1</b>")
    });
    for rack in ["rack-a", "rack-b", "rack-c"] {
        assert!(
            dom.contains(&format!("class=\"rack\">{rack}<")),
            "{rack} missing:\n{dom}"
        );
    }
    // 3 chunks of 1 MiB, a replica of each on every daemon.
    assert!(dom.contains("id=\"t-chunks\"><b>3</b>"), "{dom}");
    assert_eq!(dom.matches("class=\"replicas\">3<").count(), 3, "{dom}");
    assert_eq!(dom.matches("class=\"alive\">alive<").count(), 3, "{dom}");
    assert_eq!(dom.matches("class=\"session\"").count(), 1, "{dom}");
    assert!(dom.contains("id=\"t-missing\"><b>0</b>"), "{dom}");

    // WEFT_STATUS_SCREENSHOT=PATH saves the page as a PNG (docs/status-page.png).
    if let Ok(png) = std::env::var("WEFT_STATUS_SCREENSHOT") {
        screenshot(&url, &png);
    }

    // A daemon dies: the page says so within the MDS's dead-after time.
    c.cluster.chunkds[1].crash();
    let dom = dom_until(&url, "a dead daemon", |d| {
        d.contains("class=\"dead\">dead<") && d.contains("class=\"degraded\">degraded<")
    });
    assert_eq!(dom.matches("class=\"alive\">alive<").count(), 2, "{dom}");
}
