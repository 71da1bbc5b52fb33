//! Tokens: `prism_ID_SECRET`. The ID is public and finds the token's row;
//! the SECRET is checked against its Argon2id hash (the store keeps
//! nothing else of it). A secret checked once is remembered in memory as a
//! SHA-256 digest, compared in constant time, so only a token's first
//! request pays for Argon2. Failed attempts are counted per client
//! address: past a few a minute, that address waits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::TokenRecord;

const PREFIX: &str = "prism_";
/// Hex digits of the public id and of the secret.
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 64;

/// Failed attempts a client address may make per window.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the oldest windows go first.
const MAX_CLIENTS: usize = 10_000;

/// A new token: what to print once, and what to store.
pub struct Minted {
    pub token: String,
    pub id: String,
    /// The secret's Argon2id hash (PHC string).
    pub hash: String,
}

/// Makes a token from 40 random bytes of the system's generator.
pub fn mint() -> Result<Minted, String> {
    let mut bytes = [0u8; (ID_LEN + SECRET_LEN) / 2];
    crate::random::fill(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (id, secret) = hex.split_at(ID_LEN);
    let hash = Argon2::default()
        .hash_password(secret.as_bytes())
        .map_err(|e| format!("cannot hash the token: {e}"))?
        .to_string();
    Ok(Minted {
        token: format!("{PREFIX}{id}_{secret}"),
        id: id.to_owned(),
        hash,
    })
}

/// A token's public id and secret, if it has a token's shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(id, ID_LEN) && hex(secret, SECRET_LEN)).then_some((id, secret))
}

/// Checks secrets against stored hashes, remembering the ones that
/// matched.
#[derive(Default)]
pub struct Verifier {
    checked: Mutex<HashMap<String, [u8; 32]>>,
}

impl Verifier {
    /// Whether `secret` is one this process already checked for `id`
    /// (constant time; no Argon2).
    pub fn known(&self, id: &str, secret: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.lock()
            .get(id)
            .is_some_and(|known| bool::from(known.ct_eq(&digest)))
    }

    /// Whether `secret` is the secret of `record` (`None`: no token has
    /// the id; the same work is done, so timing does not tell). Slow on
    /// purpose (Argon2) unless [`Verifier::known`].
    pub fn verify(&self, record: Option<&TokenRecord>, id: &str, secret: &str) -> bool {
        let Some(record) = record else {
            let _ = Argon2::default().verify_password(secret.as_bytes(), DUMMY_HASH);
            return false;
        };
        if self.known(id, secret) {
            return true;
        }
        let ok = Argon2::default()
            .verify_password(secret.as_bytes(), record.hash.as_str())
            .is_ok();
        if ok {
            let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            self.lock().insert(id.to_owned(), digest);
        }
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.checked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An Argon2id hash of nothing anyone holds, for ids no token has.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$cHJpc20tZHVtbXktc2FsdA$YFo1W8GpQH8hl+vIvnSaD0dh2iMX6U8fSJzmWoD9c0g";

/// The client an address counts as: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64).
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Failed attempts per client address, in fixed windows.
pub struct Limiter {
    max: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(MAX_FAILURES, FAILURE_WINDOW)
    }
}

impl Limiter {
    pub fn new(max: u32, window: Duration) -> Limiter {
        Limiter {
            max,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must wait, when it used up its attempts.
    pub fn wait(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let seen = self.lock();
        let (start, failures) = seen.get(&client(ip))?;
        let end = *start + self.window;
        (failures >= &self.max && now < end).then(|| end - now)
    }

    /// Counts an attempt of `ip` as failed (before it is checked, so that
    /// attempts made at once cannot each get a free try).
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut seen = self.lock();
        if seen.len() >= MAX_CLIENTS {
            let window = self.window;
            seen.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            // Still full: the oldest window goes.
            if seen.len() >= MAX_CLIENTS
                && let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(client(ip)).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Takes back an attempt counted by [`Limiter::failed`] that succeeded.
    pub fn forgive(&self, ip: IpAddr) {
        if let Some(entry) = self.lock().get_mut(&client(ip)) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Scope;

    fn record(m: &Minted) -> TokenRecord {
        TokenRecord {
            id: m.id.clone(),
            name: "ci".into(),
            scope: Scope::Deploy,
            hash: m.hash.clone(),
            created: 0,
            expires: None,
            revoked: None,
            last_used: None,
        }
    }

    #[test]
    fn a_minted_token_verifies_and_nothing_else_does() {
        let m = mint().expect("mint");
        let (id, secret) = parse(&m.token).expect("its own shape");
        assert_eq!(id, m.id);
        assert!(!m.hash.contains(secret), "the hash is not the secret");
        assert!(m.hash.starts_with("$argon2id$"));
        let v = Verifier::default();
        let r = record(&m);
        assert!(v.verify(Some(&r), id, secret));
        // Remembered: the second check takes the digest path.
        assert!(v.verify(Some(&r), id, secret));
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
        assert!(!v.verify(Some(&r), id, &wrong));
        assert!(!v.verify(None, id, secret));
        // The stand-in for unknown ids is a hash Argon2 works through.
        assert!(matches!(
            Argon2::default().verify_password(secret.as_bytes(), DUMMY_HASH),
            Err(argon2::password_hash::Error::PasswordInvalid)
        ));
        let other = mint().expect("another");
        assert_ne!(other.token, m.token);
        assert!(!v.verify(Some(&record(&other)), &other.id, secret));
    }

    #[test]
    fn a_full_table_drops_its_oldest_window() {
        let l = Limiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(u32::try_from(i).unwrap()));
            l.failed(ip, t0 + Duration::from_millis(u64::try_from(i).unwrap()));
        }
        l.failed([192, 0, 2, 1].into(), t0 + Duration::from_secs(1));
        assert_eq!(l.lock().len(), MAX_CLIENTS);
        assert!(l.wait([0, 0, 0, 0].into(), t0).is_none(), "the oldest went");
        assert!(
            l.wait([192, 0, 2, 1].into(), t0 + Duration::from_secs(1))
                .is_some()
        );
    }

    #[test]
    fn only_the_token_shape_parses() {
        let good = format!("prism_{}_{}", "a".repeat(16), "0".repeat(64));
        assert!(parse(&good).is_some());
        for bad in [
            String::new(),
            "prism_".into(),
            good.replace("prism_", "prysm_"),
            good.to_uppercase(),
            format!("{good}0"),
            format!("prism_{}_{}", "a".repeat(15), "0".repeat(65)),
            format!("prism_{}_{}", "g".repeat(16), "0".repeat(64)),
        ] {
            assert!(parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_address_waits_after_too_many_failures_until_its_window_ends() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = [10, 0, 0, 9].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.wait(ip, t0), None);
            l.failed(ip, t0);
        }
        assert_eq!(l.wait(ip, t0), Some(Duration::from_secs(60)));
        assert_eq!(
            l.wait(ip, t0 + Duration::from_secs(45)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(l.wait(other, t0), None);
        assert_eq!(l.wait(ip, t0 + Duration::from_secs(60)), None);
        l.failed(ip, t0 + Duration::from_secs(61));
        assert_eq!(l.wait(ip, t0 + Duration::from_secs(61)), None);
        // An attempt that succeeded is taken back.
        l.failed(ip, t0 + Duration::from_secs(62));
        l.forgive(ip);
        l.failed(ip, t0 + Duration::from_secs(62));
        assert_eq!(l.wait(ip, t0 + Duration::from_secs(62)), None);
        // Addresses of one IPv6 /64 are one client.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for _ in 0..3 {
            l.failed(a, t0);
        }
        assert!(l.wait(b, t0).is_some());
        assert!(l.wait("2001:db8:1:3::1".parse().unwrap(), t0).is_none());
    }
}
