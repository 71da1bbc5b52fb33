//! `prism daemon` with its proxy in front of the lab: hosts from fleet.toml
//! reach the test app wherever it runs, and a spec change redeploys it
//! without a failed request, draining requests in flight before the old
//! containers stop; so does removing the app.

use crate::common;
use crate::deploy;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Lab;
use deploy::{Deploy, Load, client, field, get};

/// The value of the sample `name` (with its labels, as printed) in a
/// Prometheus text page.
fn metric(page: &str, sample: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A deploy of `instances` of v1 named `name`, once every instance
/// answers through the proxy, and a client for it.
async fn serving<'a>(lab: &'a Lab, name: &str, instances: u32) -> (Deploy<'a>, deploy::HttpClient) {
    let d = Deploy::start(lab, name, instances, "v1");
    let http = client();
    if let Err(e) = d.wait_serving(&http, "v1", Duration::from_secs(120)).await {
        panic!("{e:#}\n{:#?}", d.logs());
    }
    (d, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_spec_change_redeploys_behind_the_proxy_without_a_failed_request() {
    let lab = Lab::load();
    let (mut d, http) = serving(&lab, "route", 2).await;

    // The host reaches the app; the app sees the client's Host.
    let (status, body) = get(&http, &d.addr, &d.host, "/").await.expect("GET");
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "host").as_deref(), Some(d.host.as_str()));
    // Any case and a port in Host are the same host.
    let upper = format!("{}:80", d.host.to_uppercase());
    let (status, _) = get(&http, &d.addr, &upper, "/").await.expect("GET");
    assert_eq!(status, 200);
    // A host no service declares is 404.
    let (status, body) = get(&http, &d.addr, "nobody.test", "/").await.expect("GET");
    assert_eq!(status, 404, "{body}");

    // The admin listener counts nodes, pods, passes and requests.
    let (status, page) = get(&http, &d.admin, "localhost", "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metric(&page, "prism_nodes{state=\"ready\"}").is_some_and(|n| n >= 2.0),
        "{page}"
    );
    assert_eq!(metric(&page, "prism_pods_placed"), Some(2.0), "{page}");
    assert!(
        metric(&page, "prism_reconcile_duration_seconds_count").is_some_and(|n| n >= 1.0),
        "{page}"
    );
    let requests = format!(
        "prism_proxy_requests_total{{host=\"{}\",code=\"200\"}}",
        d.host
    );
    assert!(
        metric(&page, &requests).is_some_and(|n| n >= 1.0),
        "{requests} in {page}"
    );
    let (status, _) = get(&http, &d.admin, "localhost", "/healthz")
        .await
        .expect("healthz");
    assert_eq!(status, 200);

    // An edit that does not load changes nothing: logged, v1 still served.
    let good = d.text();
    d.write_raw(&good.replace("memory = \"32M\"", "memroy = \"32M\""));
    let refused = tokio::task::block_in_place(|| {
        common::retry(Duration::from_secs(20), || {
            let logs = d.logs();
            anyhow::ensure!(
                logs.iter()
                    .any(|l| l.contains("cannot be used") && l.contains("memroy")),
                "no refusal logged yet"
            );
            Ok(())
        })
    });
    refused.unwrap_or_else(|e| panic!("{e:#}\n{:#?}", d.logs()));
    d.wait_serving(&http, "v1", Duration::from_secs(5))
        .await
        .expect("v1 still served");

    // Redeploy under load, with a slow request in flight on an old
    // container when the switch comes.
    let old = tokio::task::block_in_place(|| d.containers());
    assert_eq!(old.len(), 2, "{old:#?}");
    let load = Load::start(&d.addr, &d.host, 4, Duration::from_millis(5));
    let slow = {
        let (http, addr, host) = (client(), d.addr.clone(), d.host.clone());
        tokio::spawn(async move { get(&http, &addr, &host, "/slow?ms=8000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.write("v2");
    let replaced = d.wait_replaced(&old, Duration::from_secs(150)).await;
    let slow = slow.await.expect("slow request task");
    // A little more load on the new containers alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop().await;
    let logs = d.logs();
    if let Err(e) = replaced {
        panic!("{e:#}\n{logs:#?}");
    }

    let total = stats.total.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let failures = stats.failures.lock().unwrap().clone();
    assert_eq!(failed, 0, "{failed} of {total} failed: {failures:#?}");
    assert!(total > 100, "too little load to prove anything: {total}");
    let versions = stats.versions.lock().unwrap().clone();
    assert_eq!(versions.first().map(String::as_str), Some("v1"));
    let first_v2 = versions.iter().position(|v| v == "v2").expect("v2 served");
    assert!(
        versions[first_v2..]
            .iter()
            .rev()
            .take(50)
            .all(|v| v == "v2"),
        "the last answers all come from v2"
    );
    // The slow request was let finish on its old container.
    let (status, body) = slow.expect("slow request answered");
    assert_eq!((status, body.trim()), (200, "slept 8000 ms"));
    // The drain waited for it: some old container drained only after
    // seconds.
    let waited: Vec<u64> = logs
        .iter()
        .filter(|l| l.contains("proxy: drained"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["waited_ms"].as_u64())
        .collect();
    assert_eq!(waited.len(), 2, "both old containers drained: {logs:#?}");
    assert!(
        waited.iter().any(|ms| *ms >= 2000),
        "a drain waited for the slow request: {waited:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("fleet.toml changed")),
        "{logs:#?}"
    );

    assert_eq!(d.stop(), Some(0), "{:#?}", d.logs());
    eprintln!(
        "redeploy under load: {total} requests, {failed} failed; drains waited {waited:?} ms"
    );
}

/// Removing an app from fleet.toml drains it as a move does: its host
/// leaves the routes at once, a request in flight finishes, and only then
/// is the container stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_removed_app_is_drained_before_it_stops() {
    let lab = Lab::load();
    let (mut d, http) = serving(&lab, "remove", 1).await;
    let slow = {
        let (http, addr, host) = (client(), d.addr.clone(), d.host.clone());
        tokio::spawn(async move { get(&http, &addr, &host, "/slow?ms=6000").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = d.text();
    let cut = text.find("[apps.").expect("an app in fleet.toml");
    // All the fleet's pods go: the guard against mass change lets that
    // through once it has seen it for its hold (1 s here).
    d.write_raw(&format!("{}[guard]\nhold = \"1s\"\n", &text[..cut]));

    // The host is unknown from the next pass on, while the slow request
    // still runs.
    let unrouted = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok((404, _)) = get(&http, &d.addr, &d.host, "/").await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(unrouted.is_ok(), "the host still routes: {:#?}", d.logs());
    assert!(!slow.is_finished(), "the slow request ended too soon");

    let gone = tokio::task::block_in_place(|| {
        common::retry(Duration::from_secs(60), || {
            let left = d.containers();
            anyhow::ensure!(left.is_empty(), "still there: {left:?}");
            Ok(())
        })
    });
    let slow = slow.await.expect("slow request task");
    let logs = d.logs();
    gone.unwrap_or_else(|e| panic!("{e:#}\n{logs:#?}"));
    let (status, body) = slow.unwrap_or_else(|e| panic!("slow request: {e:#}\n{logs:#?}"));
    assert_eq!((status, body.trim()), (200, "slept 6000 ms"), "{logs:#?}");
    let waited: Vec<u64> = logs
        .iter()
        .filter(|l| l.contains("proxy: drained"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["waited_ms"].as_u64())
        .collect();
    assert!(
        waited.len() == 1 && waited[0] >= 2000,
        "the removal waited for the slow request: {waited:?}\n{logs:#?}"
    );
    assert_eq!(d.stop(), Some(0), "{:#?}", d.logs());
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_daemon_stops_at_once_when_its_port_is_taken() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let file = lab.own_fleet(dir.path(), &format!("t{}busy", std::process::id()), "");
    let text = std::fs::read_to_string(&file).expect("read");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("listen ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = text.replace(
        "[proxy]\n",
        &format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    std::fs::write(&file, text).expect("write");
    let out = common::prism_command(&["-c", file.to_str().expect("utf-8"), "daemon"])
        .output()
        .expect("run prism");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Nothing was started: a set-up problem, as for a lock held elsewhere.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} (proxy)")),
        "{stderr}"
    );
    // The lock was released: a run now may apply.
    let state = prism::store::Store::open_existing(&dir.path().join("state.db"))
        .expect("state")
        .expect("exists");
    assert_eq!(state.lock_info().expect("lock"), None);
}
