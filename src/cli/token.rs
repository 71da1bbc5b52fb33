//! `prism token create|list|revoke`: the API's tokens, kept in the state
//! file as a hash. A token is printed once, when it is made.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::Failure;
use super::table::{age, render};
use crate::store::{Scope, Store, TokenRecord, now_ms};

/// `--scope` on the command line.
pub fn scope_arg(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| format!("{s:?} is not a scope: use read, deploy or admin"))
}

/// `--expires` on the command line: `90d`, `12h`, up to ten years.
pub fn expires_arg(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 90d, 12h)"))?;
    if d.is_zero() || d > Duration::from_secs(10 * 366 * 86_400) {
        return Err(format!("{s:?}: use a duration from 1s to 10 years"));
    }
    Ok(d)
}

fn name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

pub fn create(
    state: &Path,
    name: &str,
    scope: Scope,
    expires: Option<Duration>,
) -> Result<(), Failure> {
    if !name_ok(name) {
        return Err(Failure::Usage(format!(
            "{name:?} is not a usable token name: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
        )));
    }
    let minted = crate::api::mint().map_err(Failure::Usage)?;
    let now = now_ms();
    let expires_at =
        expires.map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    let record = TokenRecord {
        id: minted.id,
        name: name.to_owned(),
        scope,
        hash: minted.hash,
        created: now,
        expires: expires_at,
        revoked: None,
        last_used: None,
    };
    if !Store::open(state)?.add_token(&record)? {
        return Err(Failure::Usage(format!(
            "a token named {name} exists: revoke it first (prism token revoke {name}) or choose another name"
        )));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", minted.token)?;
    let mut err = std::io::stderr().lock();
    let until = expires.map_or_else(
        || "it does not expire".to_owned(),
        |d| format!("it expires in {}", humantime::format_duration(d)),
    );
    writeln!(
        err,
        "token {name} (scope {}) made; {until}. It is shown only now: keep it in your CI's secrets as PRISM_TOKEN.",
        scope.as_str()
    )?;
    Ok(())
}

pub fn list(state: &Path, json: bool) -> Result<(), Failure> {
    let tokens = match Store::open_read_only(state)? {
        Some(store) => store.tokens()?,
        None => Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &tokens)?;
        writeln!(out)?;
        return Ok(());
    }
    if tokens.is_empty() {
        writeln!(
            out,
            "no token (prism token create NAME --scope read|deploy|admin)"
        )?;
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let state = match (t.revoked, t.expires) {
                (Some(at), _) => format!("revoked {}", age(now, at)),
                (None, Some(e)) if e <= now => "expired".to_owned(),
                (None, Some(e)) => format!(
                    "expires in {}",
                    humantime::format_duration(Duration::from_secs(
                        u64::try_from(e.saturating_sub(now) / 1000).unwrap_or(0)
                    ))
                ),
                (None, None) => "live".to_owned(),
            };
            vec![
                t.name.clone(),
                t.scope.as_str().to_owned(),
                age(now, t.created),
                t.last_used
                    .map_or_else(|| "never".to_owned(), |u| age(now, u)),
                state,
            ]
        })
        .collect();
    out.write_all(render(&["NAME", "SCOPE", "MADE", "USED", "STATE"], &rows).as_bytes())?;
    Ok(())
}

pub fn revoke(state: &Path, name: &str) -> Result<(), Failure> {
    let store = Store::open_existing(state)?
        .ok_or_else(|| Failure::Usage(format!("no token named {name} (no state file yet)")))?;
    if !store.revoke_token(name, now_ms())? {
        return Err(Failure::Usage(format!(
            "no live token named {name} (prism token list)"
        )));
    }
    println!("token {name} revoked: the API refuses it from now on");
    Ok(())
}
