//! The operator's box in the mesh: its own WireGuard interface (kernel
//! WireGuard, else `wireguard-go`), set with wireguard-tools and iproute2,
//! so that the proxy and the health checks reach containers at their mesh
//! addresses. Needs CAP_NET_ADMIN (root, or the systemd unit's
//! `AmbientCapabilities`); without it the mesh's nodes still work among
//! themselves and an event says why the box is not in.
//!
//! Its private key is a file beside the state file (0600), made by
//! `wg genkey` once; only the public key goes anywhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::reconcile::{KEEPALIVE_S, MeshSettings, Peer};
use crate::store::{Level, NewEvent, Writer};

/// A local command's deadline: each answers at once.
const STEP: Duration = Duration::from_secs(10);

pub struct LocalMesh {
    pub settings: MeshSettings,
    key_file: PathBuf,
    /// `None` when the key could not be made or read (wireguard-tools
    /// missing): nodes are then set up without the operator as a peer.
    pub public_key: Option<String>,
    /// The peers last set, to skip a pass that changes nothing.
    applied: Mutex<Option<Vec<Peer>>>,
    /// The last failure told, so that a box that cannot join says so once.
    told: Mutex<Option<String>>,
}

impl LocalMesh {
    /// Reads the box's key beside `state`, making it the first time.
    pub async fn new(settings: MeshSettings, state: &Path) -> LocalMesh {
        let key_file = state.with_file_name(format!(
            "{}.mesh.key",
            state
                .file_stem()
                .map_or_else(|| "prism".into(), |s| s.to_string_lossy())
        ));
        let public_key = match ensure_key(&key_file).await {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "the operator's box cannot join the mesh");
                None
            }
        };
        LocalMesh {
            settings,
            key_file,
            public_key,
            applied: Mutex::new(None),
            told: Mutex::new(None),
        }
    }

    /// [`Self::join`], telling the event log what changed and, once, why
    /// the box cannot join.
    pub async fn join_reporting(&self, peers: &[Peer], journal: &Writer) {
        let result = self.join(peers).await;
        let mut told = match self.told.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(changed) => {
                if changed {
                    let message = format!(
                        "the operator's box is in the mesh on {} with {} node(s)",
                        self.settings.interface,
                        peers.len()
                    );
                    tracing::info!("{message}");
                    journal.event(NewEvent::info("mesh.operator", message));
                }
                *told = None;
            }
            Err(e) if told.as_deref() != Some(e.as_str()) => {
                let message = format!(
                    "the operator's box cannot join the mesh ({e}): the proxy and health checks cannot reach containers; it needs root or CAP_NET_ADMIN, and wireguard-tools"
                );
                tracing::error!("{message}");
                journal.event(NewEvent::new(Level::Error, "mesh.operator", message));
                *told = Some(e);
            }
            Err(_) => {}
        }
    }

    /// Whether this box reaches mesh address `ip` now: its interface is
    /// up with a peer for that address's node.
    pub fn reaches(&self, ip: std::net::Ipv4Addr) -> bool {
        Path::new("/sys/class/net")
            .join(&self.settings.interface)
            .exists()
            && self.applied.lock().is_ok_and(|a| {
                a.as_ref()
                    .is_some_and(|peers| peers.iter().any(|p| p.allowed.contains(&ip)))
            })
    }

    /// Brings the box's interface to `peers` (every node with a key).
    /// `Ok(true)` when something changed.
    pub async fn join(&self, peers: &[Peer]) -> Result<bool, String> {
        let iface = &self.settings.interface;
        let up = Path::new("/sys/class/net").join(iface).exists();
        if up
            && self
                .applied
                .lock()
                .is_ok_and(|a| a.as_deref() == Some(peers))
        {
            return Ok(false);
        }
        if self.public_key.is_none() {
            return Err("no key (is wireguard-tools installed?)".into());
        }
        if !up {
            self.create().await?;
        }
        let address = self
            .settings
            .operator_address()
            .ok_or("the cidr has no first /24")?;
        run(
            "ip",
            &["address", "replace", &format!("{address}/32"), "dev", iface],
        )
        .await?;
        run("ip", &["link", "set", "up", "dev", iface]).await?;
        let cidr = self.settings.cidr.to_string();
        let src = address.to_string();
        run(
            "ip",
            &["route", "replace", &cidr, "dev", iface, "src", &src],
        )
        .await?;
        self.set_peers(peers).await?;
        if let Ok(mut a) = self.applied.lock() {
            *a = Some(peers.to_vec());
        }
        Ok(true)
    }

    async fn create(&self) -> Result<(), String> {
        let iface = &self.settings.interface;
        if run("ip", &["link", "add", "dev", iface, "type", "wireguard"])
            .await
            .is_ok()
        {
            return Ok(());
        }
        // No WireGuard in this kernel: the userspace one, which runs on
        // in the background after this returns (and after Prism exits, as
        // the kernel's would).
        run("wireguard-go", &[iface.as_str()]).await?;
        for _ in 0..50 {
            if Path::new("/sys/class/net").join(iface).exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("wireguard-go made no interface {iface}"))
    }

    /// `wg syncconf` from a config on stdin: the key read here, never in
    /// an argument or a file of its own.
    async fn set_peers(&self, peers: &[Peer]) -> Result<(), String> {
        let key = tokio::fs::read_to_string(&self.key_file)
            .await
            .map_err(|e| format!("reading {}: {e}", self.key_file.display()))?;
        let mut conf = format!("[Interface]\nPrivateKey = {}\n", key.trim());
        for p in peers {
            conf.push_str(&format!(
                "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\nPersistentKeepalive = {KEEPALIVE_S}\n",
                p.public_key, p.allowed
            ));
            if let Some(e) = &p.endpoint {
                conf.push_str(&format!("Endpoint = {e}\n"));
            }
        }
        let iface = &self.settings.interface;
        run_with_input("wg", &["syncconf", iface, "/dev/stdin"], &conf).await
    }

    /// Takes the box's interface down (tests, and `prism` leaving a mesh).
    pub async fn leave(&self) -> Result<(), String> {
        run("ip", &["link", "del", "dev", &self.settings.interface]).await
    }
}

/// The public key of the box's private key, making that first if missing.
async fn ensure_key(file: &Path) -> Result<String, String> {
    if !file.exists() {
        let key = output("wg", &["genkey"], None).await?;
        write_private(file, key.trim()).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let key = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let public = output("wg", &["pubkey"], Some(key.trim())).await?;
    Ok(public.trim().to_owned())
}

fn write_private(file: &Path, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = file.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{key}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

async fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args, None).await.map(|_| ())
}

async fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    output(program, args, Some(input)).await.map(|_| ())
}

/// Runs a local program; its stdout, or an error naming it with stderr.
async fn output(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let out = tokio::time::timeout(STEP, child.wait_with_output())
        .await
        .map_err(|_| format!("{what}: no answer within {}s", STEP.as_secs()))?
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
