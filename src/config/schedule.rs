//! A job's `schedule`: five-field cron (or an `@` macro), parsed once when
//! fleet.toml loads, by the parser and settings tokio-cron-scheduler
//! itself uses (six fields, seconds first), so what `prism validate`
//! accepts is exactly what the scheduler runs.

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::de::{self, Deserializer};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written in fleet.toml.
    text: String,
    /// The scheduler's six-field form.
    six: String,
    cron: Cron,
}

impl Schedule {
    /// The form tokio-cron-scheduler takes: seconds first.
    pub(crate) fn six_fields(&self) -> &str {
        &self.six
    }

    pub fn cron(&self) -> &Cron {
        &self.cron
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.six == other.six
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(expr: &str) -> Result<Schedule, String> {
        let text = expr.trim();
        let six = if text.starts_with('@') {
            text.to_owned()
        } else if text.split_whitespace().count() == 5 {
            format!("0 {text}")
        } else {
            return Err(format!(
                "{expr:?} is not a cron expression of five fields (minute hour day-of-month month day-of-week), e.g. \"*/5 * * * *\""
            ));
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(&six)
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
        Ok(Schedule {
            text: text.to_owned(),
            six,
            cron,
        })
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_or_a_macro_as_the_scheduler_reads_them() {
        let s: Schedule = "*/5 2 * * 1-5".parse().expect("valid");
        assert_eq!(s.six_fields(), "0 */5 2 * * 1-5");
        assert_eq!(s.to_string(), "*/5 2 * * 1-5");
        let s: Schedule = "@hourly".parse().expect("a macro");
        assert_eq!(s.six_fields(), "@hourly");
        assert!("* * * * *".parse::<Schedule>().is_ok());
    }

    #[test]
    fn other_shapes_are_refused_saying_why() {
        let six = "0 * * * * *".parse::<Schedule>().expect_err("six fields");
        assert!(six.contains("five fields"), "{six}");
        assert!("61 * * * *".parse::<Schedule>().is_err());
        assert!("every minute".parse::<Schedule>().is_err());
        assert!("@sometimes".parse::<Schedule>().is_err());
    }

    #[test]
    fn whatever_parses_the_scheduler_takes() {
        // The scheduler's own constructor, on the form handed to it.
        for expr in ["*/5 2 * * 1-5", "@daily", "0 0 1 1 *", "30 4 * * sun"] {
            let s: Schedule = expr.parse().expect(expr);
            tokio_cron_scheduler::Job::new_async(s.six_fields(), |_, _| Box::pin(async {}))
                .unwrap_or_else(|e| {
                    panic!("{expr}: the scheduler refused {}: {e}", s.six_fields())
                });
        }
    }
}
