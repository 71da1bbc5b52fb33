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

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to epoch milliseconds.
pub(crate) fn rfc3339_ms(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{s:?} is not an RFC 3339 time ({why})");
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(bad("too short"));
    }
    let shape_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !shape_ok {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    // Bytes, not str slices: a multi-byte character must not panic.
    let num = |from: usize, to: usize| -> Result<i64, String> {
        b[from..to].iter().try_fold(0_i64, |n, c| {
            if c.is_ascii_digit() {
                Ok(n * 10 + i64::from(c - b'0'))
            } else {
                Err(bad("expected digits"))
            }
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }

    // b[17..19] are ASCII digits, so 19 is a character boundary.
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("empty fraction"));
        }
        // Milliseconds: the first three digits; the rest is truncated.
        for (c, scale) in frac.bytes().take(digits.min(3)).zip([100, 10, 1]) {
            millis += i64::from(c - b'0') * scale;
        }
        rest = &frac[digits..];
    }
    let offset_minutes = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) =>
        {
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return Err(bad("no such offset"));
            }
            let total = h * 60 + m;
            if *sign == b'-' { -total } else { total }
        }
        _ => return Err(bad("expected Z or an offset such as +02:00")),
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
