//! The API (`[api]`) of a `prism daemon` on the lab, over HTTPS with a
//! certificate of a CA of the test's own: tokens and their scopes, expiry
//! and revocation, the body limit, the event stream, and deploys made by
//! `prism deploy --remote --wait` (a real client through the real proxy
//! under load): a new image rolls out with no failed request and only its
//! line of the commented fleet.toml changes; an image that never turns
//! healthy is rolled back with exit 1, still with no failed request.
//! Failed attempts are limited per client address last (it shuts out
//! 127.0.0.1 for a minute).

use crate::common;
use crate::deploy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Lab, free_port, prism_command, text};
use deploy::{Deploy, Load, client, field, get};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The API's address, and the CA its certificate is from.
struct Api {
    url: String,
    ca: PathBuf,
    dir: PathBuf,
}

impl Api {
    /// `curl` with `token` (from a file: never in argv): status and body.
    fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let headers = self.dir.join("headers");
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\n"));
        std::fs::write(&headers, format!("{auth}Content-Type: application/json\n"))
            .expect("write headers");
        let out = self.dir.join("out");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.ca)
            .args(["-X", method, "-H"])
            .arg(format!("@{}", headers.display()))
            .arg("-o")
            .arg(&out)
            .args(["-w", "%{http_code}"]);
        if let Some(body) = body {
            let file = self.dir.join("body");
            std::fs::write(&file, body).expect("write body");
            cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        }
        let done = cmd
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl");
        let status = text(&done.stdout).trim().parse().unwrap_or(0);
        (status, std::fs::read_to_string(&out).unwrap_or_default())
    }

    /// `prism deploy web web=IMAGE --wait --timeout T` through the API, under
    /// `load` through the proxy: the exit code, stdout and stderr, once no
    /// request of the load failed.
    async fn deploy(
        &self,
        token: &str,
        image: &str,
        timeout: &str,
        load: Load,
    ) -> (Option<i32>, String, String) {
        let image = format!("web={image}");
        let out = self.prism(
            token,
            &["deploy", "web", &image, "--wait", "--timeout", timeout],
        );
        let stats = load.stop().await;
        let failures = stats.failures.lock().expect("failures").clone();
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0, "{failures:#?}");
        assert!(stats.total.load(Ordering::Relaxed) > 100);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }

    /// The newest change of app web, as `prism history --remote` lists it.
    fn newest_change(&self, token: &str) -> String {
        let out = self.prism(token, &["history", "web", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        history[0]["change"].as_str().unwrap_or_default().to_owned()
    }

    /// `prism ARGS --remote URL --ca CA` with PRISM_TOKEN = `token`.
    fn prism(&self, token: &str, args: &[&str]) -> Output {
        prism_command(args)
            .args(["--remote", &self.url, "--ca"])
            .arg(&self.ca)
            .env("PRISM_TOKEN", token)
            .output()
            .expect("run prism")
    }
}

/// A CA of the test's own, and a certificate for localhost from it.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "prism api test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf");
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca).expect("sign");
    let files = (dir.join("ca.pem"), dir.join("api.pem"), dir.join("api.key"));
    std::fs::write(&files.0, ca.pem()).expect("write");
    std::fs::write(&files.1, cert.pem()).expect("write");
    std::fs::write(&files.2, key.serialize_pem()).expect("write");
    (files.0, files.1, files.2)
}

/// `prism token create NAME --scope SCOPE [--expires E]` on the fleet: the
/// token printed.
fn token(file: &Path, name: &str, scope: &str, expires: Option<&str>) -> String {
    let mut args = vec!["-c", file.to_str().expect("utf-8"), "token", "create", name];
    args.extend(["--scope", scope]);
    if let Some(e) = expires {
        args.extend(["--expires", e]);
    }
    let out = prism_command(&args).output().expect("token create");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Waits until `instances` containers answer through the proxy with
/// `app` (`None`: the first image, which names none).
async fn serving(d: &Deploy<'_>, http: &deploy::HttpClient, app: Option<&str>) {
    let started = Instant::now();
    loop {
        let mut seen = std::collections::BTreeSet::new();
        let mut alone = true;
        for _ in 0..8 {
            match get(http, &d.addr, &d.host, "/").await {
                Ok((200, body)) if field(&body, "app").as_deref() == app => {
                    seen.insert(field(&body, "hostname"));
                }
                _ => {
                    alone = false;
                    break;
                }
            }
        }
        if alone && seen.len() == d.instances as usize {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{app:?} not served by {} containers: {:#?}",
            d.instances,
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn deploys_through_the_api_with_scoped_tokens_and_roll_back_when_unhealthy() {
    let lab = Lab::load();
    let v2 = lab
        .testapp_variants
        .get("2")
        .expect("lab/lab up makes testapp:2")
        .clone();
    let bad = lab
        .testapp_variants
        .get("unhealthy")
        .expect("testapp:unhealthy")
        .clone();
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(certs.path());
    let port = free_port();
    let extra = format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nhost = \"localhost\"\n\n\
         [[proxy.certificates]]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let d = Deploy::start_with(&lab, "api", 2, "", None, &extra);
    let http = client();
    serving(&d, &http, None).await;
    let api = Api {
        url: format!("https://localhost:{port}"),
        ca,
        dir: certs.path().to_owned(),
    };
    let file = d.file().to_owned();
    let reader = token(&file, "reader", "read", None);
    let deployer = token(&file, "deployer", "deploy", None);
    let admin = token(&file, "admin", "admin", None);
    let brief = token(&file, "brief", "admin", Some("1s"));
    let gone = token(&file, "gone", "admin", None);
    let late = token(&file, "late", "read", None);
    assert!(reader.starts_with("prism_") && reader != deployer);
    // The store keeps a hash, never the token: not in the file, nor in
    // its write-ahead log.
    let store = prism::store::Store::open(&d.state()).expect("the state file");
    let kept = store.tokens().expect("tokens");
    assert_eq!(kept.len(), 6);
    assert!(kept.iter().all(|t| t.hash.starts_with("$argon2id$")));
    for file in [d.state(), d.state().with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let secret = &deployer[23..];
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{}",
            file.display()
        );
    }
    drop(store);
    // A token used (and so remembered by the API) stops working when
    // revoked, at once.
    assert_eq!(api.call(Some(&gone), "GET", "/v1/fleet", None).0, 200);
    let out = prism_command(&[
        "-c",
        file.to_str().expect("utf-8"),
        "token",
        "revoke",
        "gone",
    ])
    .output()
    .expect("revoke");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // 401 without a token, with a wrong, revoked or expired one; 403
    // beyond the token's scope; RFC 7807 problems.
    let (status, body) = api.call(None, "GET", "/v1/fleet", None);
    assert_eq!(status, 401, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).expect("a problem");
    assert_eq!(problem["status"], 401);
    let forged = format!(
        "{}{}",
        &reader[..reader.len() - 1],
        if reader.ends_with('0') { '1' } else { '0' }
    );
    assert_eq!(api.call(Some(&forged), "GET", "/v1/fleet", None).0, 401);
    let (status, body) = api.call(Some(&gone), "GET", "/v1/fleet", None);
    assert!(status == 401 && body.contains("revoked"), "{status} {body}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = api.call(Some(&brief), "GET", "/v1/fleet", None);
    assert!(status == 401 && body.contains("expired"), "{status} {body}");
    let (status, body) = api.call(Some(&reader), "GET", "/v1/fleet", None);
    assert_eq!(status, 200, "{body}");
    let fleet: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(fleet["fleet"], d.name.as_str());
    assert!(
        fleet["nodes"].as_array().is_some_and(|n| !n.is_empty()),
        "{body}"
    );
    let deploy_path = "/v1/apps/web/deploy";
    let v2_body = format!("{{\"services\": {{\"web\": {v2:?}}}}}");
    let (status, body) = api.call(Some(&reader), "POST", deploy_path, Some(&v2_body));
    assert!(
        status == 403 && body.contains("needs deploy"),
        "{status} {body}"
    );
    assert_eq!(
        api.call(Some(&deployer), "POST", "/v1/reconcile", None).0,
        403
    );
    assert_eq!(api.call(Some(&admin), "POST", "/v1/reconcile", None).0, 202);
    assert_eq!(
        api.call(Some(&admin), "POST", "/v1/nodes/i-nope/drain", None)
            .0,
        404
    );
    let (status, body) = api.call(Some(&reader), "GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert!(body.contains("/v1/apps/{app}/deploy"), "{body}");
    let huge = format!("{{\"services\": {{\"web\": \"{}\"}}}}", "x".repeat(100_000));
    assert_eq!(
        api.call(Some(&deployer), "POST", deploy_path, Some(&huge))
            .0,
        413
    );
    let (status, body) = api.call(
        Some(&deployer),
        "POST",
        "/v1/apps/nope/deploy",
        Some(&v2_body),
    );
    assert!(status == 404 && body.contains("no app"), "{status} {body}");
    // Without --ca the command line does not trust the test's CA.
    let out = prism_command(&["history", "--remote", &api.url])
        .env("PRISM_TOKEN", &reader)
        .output()
        .expect("prism");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("certificate"),
        "{}",
        text(&out.stderr)
    );

    // The event stream, followed from now.
    let headers = certs.path().join("sse-headers");
    std::fs::write(&headers, format!("Authorization: Bearer {reader}\n")).expect("write");
    let mut events = Command::new("curl")
        .args(["-sSN", "--max-time", "300", "--cacert"])
        .arg(&api.ca)
        .arg("-H")
        .arg(format!("@{}", headers.display()))
        .arg(format!("{}/v1/events", api.url))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl events");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A deploy of a new image under load: no failed request, only the
    // image line changes, and it is in the history under the token.
    let before = d.text();
    let load = Load::start(&d.addr, &d.host, 8, Duration::from_millis(5));
    let (code, stdout, stderr) = api.deploy(&deployer, &v2, "3m", load).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("rolled out"), "{stdout}");
    serving(&d, &http, Some("image-2")).await;
    let after = d.text();
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(before.lines().count(), after.lines().count());
    assert_eq!(
        changed,
        [(
            format!(
                "image = \"{}\"  # what `prism deploy` sets",
                lab.testapp_image
            )
            .as_str(),
            format!("image = \"{v2}\"  # what `prism deploy` sets").as_str()
        )]
    );
    let out = api.prism(&reader, &["history", "web", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(history[0]["who"], "token deployer");
    assert_eq!(history[0]["change"], format!("web={v2}").as_str());

    // `prism rollback` through the API: the first image again, the file
    // as it was before the deploy.
    let out = api.prism(&deployer, &["rollback", "web", "--wait", "--timeout", "3m"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        d.text(),
        before,
        "rolled back to the file before the deploy"
    );
    serving(&d, &http, None).await;
    let newest = api.newest_change(&reader);
    assert!(newest.starts_with("rollback of #1"), "{newest}");

    // An image that never turns healthy: the old containers keep serving,
    // the deploy fails and puts the previous image back.
    let load = Load::start(&d.addr, &d.host, 8, Duration::from_millis(5));
    let (code, stdout, stderr) = api.deploy(&deployer, &bad, "40s", load).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    assert_eq!(d.text(), before, "the previous image is back in fleet.toml");
    serving(&d, &http, None).await;
    let newest = api.newest_change(&reader);
    assert!(newest.starts_with("rollback of #"), "{newest}");

    // The stream carried the deploys, naming the token.
    let _ = events.kill();
    let streamed = events.wait_with_output().expect("curl events");
    let streamed = text(&streamed.stdout);
    assert!(streamed.contains("event: api.change"), "{streamed}");
    assert!(streamed.contains("by token deployer"), "{streamed}");
    assert!(
        !streamed.contains(&deployer),
        "the token itself is never in an event"
    );
    assert!(
        !d.logs().iter().any(|l| l.contains(&deployer[20..])),
        "nor in a log"
    );

    // Failed attempts: past ten a minute from one address, 429, with
    // Retry-After, for any token not checked before; one the API already
    // checked goes on working (a shared address is not shut out).
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(api.call(Some(&forged), "GET", "/v1/fleet", None).0);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let (status, body) = api.call(Some(&late), "GET", "/v1/fleet", None);
    assert_eq!(status, 429, "{body}");
    assert_eq!(api.call(Some(&reader), "GET", "/v1/fleet", None).0, 200);
}
