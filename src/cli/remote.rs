//! The command line against an operator's API (`--remote URL` or
//! PRISM_REMOTE, the token in PRISM_TOKEN): HTTPS verified against the
//! system's roots, or only the CA of `--ca FILE`; plain HTTP only to a
//! loopback address, so a token never crosses a network in clear.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::Failure;

/// A request's answer takes this long at most, beyond what it waits for.
const SLACK: Duration = Duration::from_secs(60);

/// The API at one URL, with one token.
pub struct Remote {
    base: String,
    token: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A failure the API answered with (a problem), or reaching it.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Setup(String),
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The API refused: `status` and its detail.
    #[error("the API answered {status}: {detail}")]
    Refused { status: u16, detail: String },
}

impl RemoteError {
    /// Bad input or auth is 2, the rest 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteError::Setup(_) => 2,
            RemoteError::Refused { status, .. } if (400..500).contains(status) => 2,
            _ => 1,
        }
    }
}

impl Remote {
    /// The API at `url`, with the token from PRISM_TOKEN.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Remote, RemoteError> {
        let token = std::env::var("PRISM_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                RemoteError::Setup(
                    "--remote needs the token in PRISM_TOKEN (never on the command line)".into(),
                )
            })?;
        let uri: Uri = url
            .parse()
            .map_err(|e| RemoteError::Setup(format!("--remote {url:?} is not a URL: {e}")))?;
        let host = uri.host().unwrap_or("");
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback(host) => {}
            Some("http") => {
                return Err(RemoteError::Setup(format!(
                    "--remote {url}: plain http only to this machine (127.0.0.1, ::1, localhost); use https"
                )));
            }
            _ => {
                return Err(RemoteError::Setup(format!(
                    "--remote {url:?}: use https://HOST:PORT"
                )));
            }
        }
        let roots = roots(ca)?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::proxy::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| RemoteError::Setup(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Remote {
            base: url.trim_end_matches('/').to_owned(),
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `method path` with `body` as JSON; the answer's JSON. `wait`: how
    /// long the API may take to answer (a deploy that waits).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        wait: Duration,
    ) -> Result<serde_json::Value, RemoteError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |reason: String| RemoteError::Unreachable {
            url: url.clone(),
            reason,
        };
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| unreachable(crate::proxy::chain(&e)))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, RemoteError>((status, body))
        };
        // A wait that fails waits again for the rollback.
        let (status, body) = tokio::time::timeout(wait.saturating_mul(2) + SLACK, answer)
            .await
            .map_err(|_| unreachable("no answer in time".into()))??;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(
            |_| serde_json::json!({ "detail": String::from_utf8_lossy(&body).trim().to_owned() }),
        );
        if status.is_success() {
            return Ok(json);
        }
        let detail = json["detail"]
            .as_str()
            .map_or_else(|| json.to_string(), str::to_owned);
        Err(RemoteError::Refused {
            status: status.as_u16(),
            detail: match status {
                StatusCode::UNAUTHORIZED => format!("{detail} (check PRISM_TOKEN)"),
                _ => detail,
            },
        })
    }
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Failure {
        Failure::Remote(e)
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The CA of `ca` alone, or the system's roots.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, RemoteError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(file) => {
            let bad = |why: String| RemoteError::Setup(format!("--ca {}: {why}", file.display()));
            let pem = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("cannot use the certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad("no CERTIFICATE in the file".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(RemoteError::Setup(
                    "no trusted CA certificates found on this system; pass --ca FILE".into(),
                ));
            }
        }
    }
    Ok(roots)
}
