//! Human units in fleet.toml: sizes (`256M`), CPU shares (`500m`, `1.5`) and
//! durations (`5s`). Each type parses from the string users write and
//! deserializes with an error that says what was expected.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A number of bytes. Suffixes are binary, as Docker reads them:
/// `256M` is 256 MiB. `K`, `M`, `G`, `T`, optionally followed by `i`/`iB`/`B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

/// CPU in thousandths of a core: `500m` is half a core, `2` is two cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millicores(pub u64);

/// A duration written as `5s`, `250ms`, `1m30s` or `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval(pub Duration);

const SIZE_EXPECTED: &str = "a size such as 256M, 1.5G or 512Mi";

/// The largest size taken: 1 PiB. Far beyond any machine, and small
/// enough that sums over thousands of services cannot overflow.
pub(crate) const MAX_SIZE: u64 = 1 << 50;
/// The longest duration taken: a year. Far beyond any timeout or
/// interval, and small enough that adding it to a clock cannot overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
const CPU_EXPECTED: &str = "a CPU amount such as 500m, 0.5 or 2";
const DURATION_EXPECTED: &str = "a duration such as 5s, 250ms or 1m30s";

impl FromStr for Bytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        if num.is_empty() {
            return Err(format!("expected {SIZE_EXPECTED}, found {s:?}"));
        }
        if unit.is_empty() {
            return Err(format!(
                "{s:?} has no unit; write {SIZE_EXPECTED} (a bare number would be bytes)"
            ));
        }
        let shift = match unit.to_ascii_uppercase().trim_end_matches('B') {
            "" => 0,
            "K" | "KI" => 10,
            "M" | "MI" => 20,
            "G" | "GI" => 30,
            "T" | "TI" => 40,
            _ => {
                return Err(format!(
                    "unknown size unit {unit:?} in {s:?}; expected {SIZE_EXPECTED}"
                ));
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("expected {SIZE_EXPECTED}, found {s:?}"))?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes > MAX_SIZE as f64 {
            return Err(format!("{s:?} is too large: sizes go up to 1P"));
        }
        Ok(Bytes(bytes.round() as u64))
    }
}

impl fmt::Display for Bytes {
    /// The shortest exact binary form: `256M`, `1G`, `1536K`, or bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let size = 1u64 << shift;
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        if self.0 >= 1 << 20 {
            return write!(f, "{:.1}M", self.0 as f64 / (1u64 << 20) as f64);
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for Millicores {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, scale) = match t.strip_suffix('m') {
            Some(milli) => (milli, 1.0),
            None => (t, 1000.0),
        };
        match num.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && (v * scale).round() >= 1.0 && v * scale < 1e9 => {
                Ok(Millicores((v * scale).round() as u64))
            }
            Ok(v) if v > 0.0 => Err(format!("CPU must be at least 1m, found {s:?}")),
            Ok(_) => Err(format!("CPU must be more than zero, found {s:?}")),
            Err(_) => Err(format!("expected {CPU_EXPECTED}, found {s:?}")),
        }
    }
}

impl fmt::Display for Millicores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl FromStr for Interval {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.trim().is_empty() && s.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!("{s:?} has no unit; write {DURATION_EXPECTED}"));
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => Err(format!("duration must be more than zero, found {s:?}")),
            Ok(d) if d > MAX_DURATION => Err(format!(
                "{s:?} is too long: durations go up to a year (366d)"
            )),
            Ok(d) => Ok(Interval(d)),
            Err(_) => Err(format!("expected {DURATION_EXPECTED}, found {s:?}")),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Deserializes a unit type from a string, or from a number where a bare
/// number has an obvious meaning (CPU cores); the error says what was expected.
struct UnitVisitor<T> {
    expected: &'static str,
    accept_number: bool,
    _marker: std::marker::PhantomData<T>,
}

impl<T: FromStr<Err = String>> Visitor<'_> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.number(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.number(v)
    }
}

impl<T: FromStr<Err = String>> UnitVisitor<T> {
    fn number<E: de::Error>(self, v: impl fmt::Display) -> Result<T, E> {
        if self.accept_number {
            v.to_string().parse().map_err(E::custom)
        } else {
            Err(E::custom(format!(
                "expected {}, found the bare number {v}; write it as a string with a unit",
                self.expected
            )))
        }
    }
}

fn visitor<T>(expected: &'static str, accept_number: bool) -> UnitVisitor<T> {
    UnitVisitor {
        expected,
        accept_number,
        _marker: std::marker::PhantomData,
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(visitor(SIZE_EXPECTED, false))
    }
}

impl<'de> serde::Deserialize<'de> for Millicores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(visitor(CPU_EXPECTED, true))
    }
}

impl<'de> serde::Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(visitor(DURATION_EXPECTED, false))
    }
}

impl serde::Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl serde::Serialize for Millicores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary_like_docker() {
        let cases = [
            ("256M", 256 << 20),
            ("256m", 256 << 20),
            ("1G", 1 << 30),
            ("1.5G", 3 << 29),
            ("512Mi", 512 << 20),
            ("64MB", 64 << 20),
            ("2GiB", 2 << 30),
            ("100K", 100 << 10),
            ("1T", 1 << 40),
            ("1024B", 1024),
            (" 8M ", 8 << 20),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Bytes>(), Ok(Bytes(want)), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_was_expected() {
        for text in ["", "M", "256", "256Q", "1.2.3G", "-1G", "G1"] {
            let err = text.parse::<Bytes>().expect_err(text);
            assert!(
                err.contains("256M") || err.contains("unit"),
                "{text}: {err}"
            );
        }
        assert!("256".parse::<Bytes>().unwrap_err().contains("no unit"));
    }

    #[test]
    fn sizes_display_in_short_form() {
        assert_eq!(Bytes(256 << 20).to_string(), "256M");
        assert_eq!(Bytes(1 << 30).to_string(), "1G");
        assert_eq!(Bytes(1536 << 10).to_string(), "1536K");
        assert_eq!(Bytes(7).to_string(), "7B");
    }

    #[test]
    fn cpu_accepts_millicores_and_cores() {
        assert_eq!("500m".parse::<Millicores>(), Ok(Millicores(500)));
        assert_eq!("0.5".parse::<Millicores>(), Ok(Millicores(500)));
        assert_eq!("2".parse::<Millicores>(), Ok(Millicores(2000)));
        assert_eq!("1.25".parse::<Millicores>(), Ok(Millicores(1250)));
        assert!("0".parse::<Millicores>().is_err());
        assert!(
            "0.4m"
                .parse::<Millicores>()
                .unwrap_err()
                .contains("at least 1m")
        );
        assert!("0.0004".parse::<Millicores>().is_err());
        assert!("-1".parse::<Millicores>().is_err());
        assert!("lots".parse::<Millicores>().is_err());
        assert_eq!(Millicores(1500).to_string(), "1500m");
        assert_eq!(Millicores(2000).to_string(), "2");
    }

    #[test]
    fn durations_use_humantime() {
        assert_eq!(
            "5s".parse::<Interval>(),
            Ok(Interval(Duration::from_secs(5)))
        );
        assert_eq!(
            "250ms".parse::<Interval>(),
            Ok(Interval(Duration::from_millis(250)))
        );
        assert_eq!(
            "1m30s".parse::<Interval>(),
            Ok(Interval(Duration::from_secs(90)))
        );
        assert!("5".parse::<Interval>().is_err());
        assert!("0s".parse::<Interval>().is_err());
        assert!("soon".parse::<Interval>().is_err());
    }

    #[test]
    fn sizes_and_durations_beyond_their_bounds_are_refused() {
        assert_eq!("1024T".parse::<Bytes>(), Ok(Bytes(MAX_SIZE)));
        for text in ["1025T", "16000000T"] {
            let err = text.parse::<Bytes>().expect_err(text);
            assert!(err.contains("too large"), "{text}: {err}");
        }
        assert_eq!("366d".parse::<Interval>(), Ok(Interval(MAX_DURATION)));
        for text in ["367d", "2y"] {
            let err = text.parse::<Interval>().expect_err(text);
            assert!(err.contains("too long"), "{text}: {err}");
        }
        // Past what a duration can hold at all: refused, not a panic.
        assert!("300000000000y".parse::<Interval>().is_err());
    }

    #[test]
    fn numbers_are_refused_where_a_unit_is_needed() {
        let err = toml::from_str::<std::collections::BTreeMap<String, Bytes>>("m = 256")
            .expect_err("bare number");
        assert!(err.message().contains("bare number 256"), "{err}");
        let cpu: std::collections::BTreeMap<String, Millicores> =
            toml::from_str("c = 2\nd = 0.5").expect("numbers are cores");
        assert_eq!(cpu["c"], Millicores(2000));
        assert_eq!(cpu["d"], Millicores(500));
    }
}
