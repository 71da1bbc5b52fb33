//! Host key trust: never accept a key we cannot vouch for. `pin` trusts the
//! first key an instance shows and refuses any other for that instance id
//! afterwards; `known_hosts` checks an OpenSSH file. The decision is pure;
//! the SSH handler only reports what it saw.

use std::path::PathBuf;

use russh::keys::{HashAlg, PublicKey};

/// What we know before connecting.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A key is pinned for this instance: only it is accepted.
    Pinned(PublicKey),
    /// Nothing pinned yet: accept, and the caller pins what was seen.
    FirstUse,
    /// Check the host's entry in an OpenSSH known_hosts file.
    KnownHosts {
        file: PathBuf,
        host: String,
        port: u16,
    },
}

/// The handler's decision about the key the server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Accepted on first use; must be pinned once the login succeeds.
    FirstUse,
    Mismatch {
        expected: String,
        offered: String,
    },
    Unknown {
        offered: String,
    },
    /// known_hosts could not be read.
    Unreadable {
        reason: String,
    },
}

impl Verdict {
    pub fn accepts(&self) -> bool {
        matches!(self, Verdict::Accepted | Verdict::FirstUse)
    }
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

pub(crate) fn judge(trust: &Trust, offered: &PublicKey) -> Verdict {
    match trust {
        Trust::Pinned(expected) if expected.key_data() == offered.key_data() => Verdict::Accepted,
        Trust::Pinned(expected) => Verdict::Mismatch {
            expected: fingerprint(expected),
            offered: fingerprint(offered),
        },
        Trust::FirstUse => Verdict::FirstUse,
        Trust::KnownHosts { file, host, port } => {
            match russh::keys::check_known_hosts_path(host, *port, offered, file) {
                Ok(true) => Verdict::Accepted,
                Ok(false) => Verdict::Unknown {
                    offered: fingerprint(offered),
                },
                Err(russh::keys::Error::KeyChanged { line }) => Verdict::Mismatch {
                    expected: format!("the key at {}:{line}", file.display()),
                    offered: fingerprint(offered),
                },
                Err(e) => Verdict::Unreadable {
                    reason: format!("{}: {e}", file.display()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJQKBhZZyA7PFP7f8i+5MjZMAh+o2ZllfNzlHHj98qx3 a";
    const B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJIVjhACU+uYIPC5P9F+6LfoNA8+0PeIhIaIOmi/HND b";

    /// As a server offers it: algorithm and key, no comment.
    fn key(text: &str) -> PublicKey {
        let bare: Vec<&str> = text.split_whitespace().take(2).collect();
        PublicKey::from_openssh(&bare.join(" ")).expect("test key parses")
    }

    #[test]
    fn pinned_key_accepts_only_itself() {
        let trust = Trust::Pinned(key(A));
        assert_eq!(judge(&trust, &key(A)), Verdict::Accepted);
        match judge(&trust, &key(B)) {
            Verdict::Mismatch { expected, offered } => {
                assert_eq!(expected, fingerprint(&key(A)));
                assert_eq!(offered, fingerprint(&key(B)));
                assert!(offered.starts_with("SHA256:"));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn first_use_is_accepted_for_pinning() {
        assert_eq!(judge(&Trust::FirstUse, &key(A)), Verdict::FirstUse);
        assert!(Verdict::FirstUse.accepts());
    }

    #[test]
    fn known_hosts_accepts_listed_refuses_unknown_and_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("10.0.0.1 {A}\n")).expect("write");
        let kh = |host: &str| Trust::KnownHosts {
            file: file.clone(),
            host: host.into(),
            port: 22,
        };
        assert_eq!(judge(&kh("10.0.0.1"), &key(A)), Verdict::Accepted);
        assert!(matches!(
            judge(&kh("10.0.0.2"), &key(A)),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(
            judge(&kh("10.0.0.1"), &key(B)),
            Verdict::Mismatch { .. }
        ));
        let missing = Trust::KnownHosts {
            file: dir.path().join("absent"),
            host: "10.0.0.1".into(),
            port: 22,
        };
        assert!(!judge(&missing, &key(A)).accepts());
    }
}
