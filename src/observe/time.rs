//! RFC 3339 times as Docker writes them (`2026-11-22T00:02:08.56112532Z`)
//! to milliseconds since the Unix epoch, the store's time format.

/// Docker's "never", Go's zero `time.Time` (`0001-01-01T00:00:00Z`), in
/// epoch milliseconds.
const DOCKER_ZERO_MS: i64 = -62_135_596_800_000;

/// A Docker timestamp: `None` for Docker's zero time (not started, not
/// finished), otherwise milliseconds since the epoch (fraction truncated).
pub(crate) fn docker_time(s: &str) -> Result<Option<i64>, String> {
    let ms = rfc3339_ms(s)?;
    Ok((ms != DOCKER_ZERO_MS).then_some(ms))
}

/// An RFC 3339 time to epoch milliseconds (fraction truncated).
pub(crate) fn rfc3339_ms(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times() {
        assert_eq!(rfc3339_ms("0001-01-01T00:00:00Z"), Ok(DOCKER_ZERO_MS));
        assert_eq!(docker_time("0001-01-01T00:00:00Z"), Ok(None));
        assert_eq!(docker_time("0001-01-01T00:00:00.000Z"), Ok(None));
        assert_eq!(
            docker_time("0001-01-01T00:00:01Z"),
            Ok(Some(DOCKER_ZERO_MS + 1_000))
        );
        assert_eq!(docker_time("1970-01-01T00:00:00Z"), Ok(Some(0)));
        // Go drops trailing zeros of the fraction: 8 digits here.
        assert_eq!(
            docker_time("2026-11-22T00:02:08.56112532Z"),
            Ok(Some(1_795_305_728_561))
        );
        assert_eq!(
            docker_time("2026-11-22T00:02:20.182804453Z"),
            Ok(Some(1_795_305_740_182))
        );
        assert_eq!(rfc3339_ms("2000-02-29T12:00:00.5Z"), Ok(951_825_600_500));
        assert_eq!(
            rfc3339_ms("2026-11-22T02:02:08+02:00"),
            Ok(1_795_305_728_000)
        );
        assert_eq!(
            rfc3339_ms("2026-11-21T23:32:08-00:30"),
            Ok(1_795_305_728_000)
        );
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59Z"), Ok(-1_000));
    }

    #[test]
    fn bad_times() {
        for s in [
            "",
            "yesterday",
            "2026-11-22",
            "2026-11-22T00:02:08",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T00:02:08.Z",
            "2026-11-22T00:02:08.5",
            "2026-11-22T00:02:08+0200",
            "2026-11-22T00:02:08Zjunk",
            "2026-11-2xT00:02:08Z",
            "+026-11-22T00:02:08Z",
            "２026-11-22T00:02:08Z",
        ] {
            let e = docker_time(s).expect_err(s);
            assert!(e.contains("not an RFC 3339 time"), "{s}: {e}");
        }
    }
}
