//! TLS on the HTTPS listener: a certificate per SNI host name, from the
//! files fleet.toml lists and from ACME, swapped in whole while serving;
//! and the pending ACME challenge answers (HTTP-01 tokens, TLS-ALPN-01
//! certificates: alpn.rs).
//!
//! A handshake whose SNI names no host Prism holds a certificate for (or
//! that sends no SNI at all, e.g. a client dialling the IP) fails: Prism
//! has no default certificate, so it never shows one site's names to a
//! client asking for another.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;

/// A certificate file or key that could not be used, named by its field in
/// fleet.toml.
#[derive(Debug, thiserror::Error)]
#[error("{field} ({}): {message}", path.display())]
pub struct TlsError {
    /// The field in fleet.toml, e.g. `proxy.certificates[0].cert`.
    pub field: String,
    pub path: PathBuf,
    pub message: String,
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (SANs, else the subject's CN), lower case; wildcards as
    /// `*.example.com`.
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// When to get a new one: once two thirds of its lifetime have passed
    /// (30 days before expiry for a 90-day certificate).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life * 2 / 3
    }

    /// Whether it serves `host` (exactly or by a one-label wildcard).
    pub fn covers(&self, host: &str) -> bool {
        let host = normalize(host);
        self.names.iter().any(|n| matches(n, &host))
    }
}

/// A certificate and key, ready for rustls, with what they say.
#[derive(Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded").field("info", &self.info).finish()
    }
}

/// The crypto provider: aws-lc, the one the AWS SDK already builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM chain (leaf first) and its private key, and checks that
/// they belong together. Errors name the file and say what is wrong.
pub(crate) fn load_pem(cert: &[u8], key: &[u8]) -> Result<Loaded, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("no CERTIFICATE block in the file".into());
    };
    let info = cert_info(leaf)?;
    let key =
        PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("not a PEM private key: {e}"))?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the key cannot be used with the certificate: {e}"))?;
    Ok(Loaded {
        key: Arc::new(key),
        info,
    })
}

/// The names and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                names.push(normalize(n));
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(normalize(cn));
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
            Err(_) => UNIX_EPOCH,
        }
    };
    Ok(CertInfo {
        names,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether certificate name `pattern` serves `host` (both normalized): a
/// wildcard stands for exactly one label, as browsers read it.
fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

/// The certificates by SNI name, as served right now.
#[derive(Default)]
struct SniTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent of `*.`: `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniTable {
    fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = normalize(sni);
        if let Some(key) = self.exact.get(&sni) {
            return Some(Arc::clone(key));
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// A certificate file pair from fleet.toml, as last read.
struct FileCert {
    field: String,
    cert: PathBuf,
    key: PathBuf,
    stamp: (Option<SystemTime>, Option<SystemTime>),
    loaded: Loaded,
}

#[derive(Default)]
struct Sources {
    files: Vec<FileCert>,
    /// Certificates from ACME, by host.
    issued: BTreeMap<String, Loaded>,
}

impl Sources {
    /// Files first, in their order (the first to list a name serves it),
    /// then ACME certificates for names no file has exactly.
    fn table(&self) -> SniTable {
        let mut t = SniTable::default();
        for f in &self.files {
            for name in &f.loaded.info.names {
                let slot = match name.strip_prefix("*.") {
                    Some(parent) => t.wildcard.entry(parent.to_owned()),
                    None => t.exact.entry(name.clone()),
                };
                slot.or_insert_with(|| Arc::clone(&f.loaded.key));
            }
        }
        for (host, loaded) in &self.issued {
            t.exact
                .entry(host.clone())
                .or_insert_with(|| Arc::clone(&loaded.key));
        }
        t
    }
}

#[derive(Debug)]
struct Resolver(Arc<ArcSwap<SniTable>>);

impl fmt::Debug for SniTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniTable")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.0.load().lookup(hello.server_name()?);
        if key.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "proxy: no certificate for this name");
        }
        key
    }
}

/// The proxy's certificates and pending ACME answers; shared by every
/// worker, changed while serving.
pub struct Tls {
    table: Arc<ArcSwap<SniTable>>,
    sources: Mutex<Sources>,
    /// HTTP-01 tokens and their key authorizations, served on the HTTP
    /// listener at `/.well-known/acme-challenge/<token>`.
    challenges: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01 challenge certificates by host, served only to
    /// validation handshakes (see alpn.rs).
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("table", &self.table.load())
            .finish()
    }
}

impl Default for Tls {
    fn default() -> Self {
        Tls::new()
    }
}

impl Tls {
    /// No certificates yet: every handshake fails until some are added.
    pub fn new() -> Tls {
        Tls {
            table: Arc::new(ArcSwap::from_pointee(SniTable::default())),
            sources: Mutex::new(Sources::default()),
            challenges: Mutex::new(HashMap::new()),
            alpn_challenges: Mutex::new(HashMap::new()),
        }
    }

    /// The rustls settings of the HTTPS listener: certificates by SNI from
    /// this store (as it changes), ALPN h2 then http/1.1.
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(&self.table))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, sources: &Sources) {
        self.table.store(Arc::new(sources.table()));
    }

    /// Reads the certificate files of `[[proxy.certificates]]` (paths from
    /// fleet.toml's folder) and serves them from now on, in place of the
    /// files read before. Nothing changes when one fails.
    pub fn load_files(&self, config: &Config) -> Result<(), TlsError> {
        let mut files = Vec::new();
        for (i, c) in config.fleet.proxy.certificates.iter().enumerate() {
            let field = format!("proxy.certificates[{i}]");
            files.push(read_pair(
                field,
                config.resolve(&c.cert),
                config.resolve(&c.key),
            )?);
        }
        for f in &files {
            if f.loaded.info.names.is_empty() {
                return Err(TlsError {
                    field: format!("{}.cert", f.field),
                    path: f.cert.clone(),
                    message: "the certificate names no host (no DNS SAN, no CN)".into(),
                });
            }
        }
        let mut sources = self.sources();
        sources.files = files;
        self.publish(&sources);
        Ok(())
    }

    /// Reads again the certificate files that changed on disk since they
    /// were read (a renewed certificate put in place by another tool) and
    /// serves them. A pair that fails to load keeps the old one serving;
    /// the failure is returned for the log. Returns how many changed.
    pub fn reload_changed_files(&self) -> (usize, Vec<TlsError>) {
        let mut sources = self.sources();
        let mut changed = 0;
        let mut errors = Vec::new();
        for f in &mut sources.files {
            if stamp(&f.cert, &f.key) == f.stamp {
                continue;
            }
            match read_pair(f.field.clone(), f.cert.clone(), f.key.clone()) {
                Ok(new) => {
                    *f = new;
                    changed += 1;
                }
                Err(e) => errors.push(e),
            }
        }
        if changed > 0 {
            self.publish(&sources);
        }
        (changed, errors)
    }

    /// Whether a certificate file serves `host` (then ACME leaves it alone).
    pub fn files_cover(&self, host: &str) -> bool {
        self.sources()
            .files
            .iter()
            .any(|f| f.loaded.info.covers(host))
    }

    /// Serves `loaded` (from ACME) for `host` from now on.
    pub fn install(&self, host: &str, loaded: Loaded) {
        let mut sources = self.sources();
        sources.issued.insert(normalize(host), loaded);
        self.publish(&sources);
    }

    /// The ACME certificate served for `host`, if any.
    pub fn issued(&self, host: &str) -> Option<CertInfo> {
        self.sources()
            .issued
            .get(&normalize(host))
            .map(|l| l.info.clone())
    }

    /// Every name served and when its certificate expires, with where it
    /// came from (`file` or `acme`); for the metrics.
    pub(crate) fn expiries(&self) -> Vec<(String, &'static str, SystemTime)> {
        let sources = self.sources();
        let files = sources.files.iter().flat_map(|f| {
            f.loaded
                .info
                .names
                .iter()
                .map(|n| (n.clone(), "file", f.loaded.info.not_after))
        });
        let issued = sources
            .issued
            .iter()
            .map(|(h, l)| (h.clone(), "acme", l.info.not_after));
        files.chain(issued).collect()
    }

    /// Whether a handshake naming `sni` would get a certificate.
    pub fn serves(&self, sni: &str) -> bool {
        self.table.load().lookup(sni).is_some()
    }

    pub(crate) fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    pub(crate) fn remove_challenge(&self, token: &str) {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The answer to an HTTP-01 challenge for `token`, while one is pending.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn alpn_challenges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.alpn_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Answers TLS-ALPN-01 validations of `host` from now on: a
    /// self-signed certificate carrying `digest` (the SHA-256 of the key
    /// authorization), shown only to handshakes offering `acme-tls/1`
    /// alone. The error says why the certificate could not be made.
    pub fn set_alpn_challenge(&self, host: &str, digest: &[u8]) -> Result<(), String> {
        let key = super::alpn::challenge_certificate(&normalize(host), digest)?;
        self.alpn_challenges()
            .insert(normalize(host), Arc::new(key));
        Ok(())
    }

    /// Stops answering TLS-ALPN-01 validations of `host`.
    pub fn remove_alpn_challenge(&self, host: &str) {
        self.alpn_challenges().remove(&normalize(host));
    }

    /// The settings for a handshake that is a TLS-ALPN-01 validation of a
    /// host with a pending challenge; `None` for every other handshake
    /// (those take [`Tls::server_config`]'s).
    pub(crate) fn validation_config(&self, hello: &ClientHello<'_>) -> Option<Arc<ServerConfig>> {
        if !super::alpn::is_validation(hello) {
            return None;
        }
        let key = self
            .alpn_challenges()
            .get(&normalize(hello.server_name()?))?
            .clone();
        match super::alpn::validation_config(key) {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::warn!(error = %e, "ACME: cannot answer a TLS-ALPN-01 validation");
                None
            }
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn read_pair(field: String, cert: PathBuf, key: PathBuf) -> Result<FileCert, TlsError> {
    let stamp = stamp(&cert, &key);
    let read = |which: &str, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError {
            field: format!("{field}.{which}"),
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })
    };
    let cert_pem = read("cert", &cert)?;
    let key_pem = read("key", &key)?;
    let loaded = load_pem(&cert_pem, &key_pem).map_err(|message| TlsError {
        field: field.clone(),
        path: cert.clone(),
        message,
    })?;
    Ok(FileCert {
        field,
        cert,
        key,
        stamp,
        loaded,
    })
}

/// The hosts ACME should get certificates for: every app host (its path
/// dropped) and the API's host, that is not a wildcard (neither HTTP-01 nor TLS-ALPN-01 can
/// prove those) and that no certificate file serves. Sorted, without
/// duplicates.
pub fn acme_hosts(config: &Config, files_cover: impl Fn(&str) -> bool) -> Vec<String> {
    let mut hosts: Vec<String> = config
        .fleet
        .apps
        .values()
        .flat_map(|app| app.services.values())
        .flat_map(|svc| svc.hosts.iter())
        .chain(config.fleet.api.iter().flat_map(|a| a.host.iter()))
        .map(|h| normalize(h.split('/').next().unwrap_or(h)))
        .filter(|h| !h.starts_with("*.") && !h.is_empty() && !files_cover(h))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stand_for_one_label() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("example.com", "example.com"));
        assert!(!matches("example.com", "a.example.com"));
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            names: vec!["a.example.com".into()],
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86400),
        };
        assert_eq!(info.renew_at(), start + Duration::from_secs(60 * 86400));
        assert!(info.covers("A.Example.com."));
        assert!(!info.covers("b.example.com"));
    }

    fn loaded(names: &[&str]) -> Loaded {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        load_pem(
            c.cert.pem().as_bytes(),
            c.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap()
    }

    fn file(loaded: Loaded) -> FileCert {
        FileCert {
            field: "proxy.certificates[0]".into(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            stamp: (None, None),
            loaded,
        }
    }

    #[test]
    fn sni_prefers_exact_names_then_the_first_file_then_acme() {
        let (first, second, wild, acme) = (
            loaded(&["a.test", "*.w.test"]),
            loaded(&["a.test", "b.test"]),
            loaded(&["*.w.test", "c.test"]),
            loaded(&["a.test", "d.test"]),
        );
        let sources = Sources {
            files: vec![
                file(first.clone()),
                file(second.clone()),
                file(wild.clone()),
            ],
            issued: [
                ("a.test".into(), acme.clone()),
                ("d.test".into(), acme.clone()),
            ]
            .into(),
        };
        let t = sources.table();
        let is = |sni: &str, l: &Loaded| t.lookup(sni).is_some_and(|k| Arc::ptr_eq(&k, &l.key));
        assert!(is("a.test", &first), "the first file wins, over ACME too");
        assert!(is("B.Test.", &second));
        assert!(is("x.w.test", &first));
        assert!(is("c.test", &wild));
        assert!(is("d.test", &acme));
        assert!(t.lookup("w.test").is_none());
        assert!(t.lookup("x.y.w.test").is_none());
        assert!(t.lookup("e.test").is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let err = load_pem(
            a.cert.pem().as_bytes(),
            b.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("cannot be used"), "{err}");
        let err = load_pem(b"", a.signing_key.serialize_pem().as_bytes()).unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn acme_takes_exact_hosts_not_covered_by_files() {
        let text = r#"
            [fleet]
            name = "t"
            [discovery]
            provider = "ec2"
            [apps.a.services.web]
            image = "x"
            port = 80
            hosts = ["Blog.example.com/api", "blog.example.com", "*.apps.example.com", "shop.example.com", "covered.example.org"]
        "#;
        let fleet = crate::config::parse(Path::new("fleet.toml"), text).unwrap();
        let config = Config {
            file: PathBuf::from("fleet.toml"),
            fleet,
            warnings: Vec::new(),
        };
        let hosts = acme_hosts(&config, |h| h.ends_with(".example.org"));
        assert_eq!(hosts, ["blog.example.com", "shop.example.com"]);
    }
}
