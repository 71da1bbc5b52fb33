//! The labels Prism puts on every container it runs, in one place: what
//! `docker run` is given, what `docker ps` filters on and what is read back.

use std::collections::BTreeMap;
use std::fmt;

/// The fleet (`[fleet] name`) a container belongs to.
pub const FLEET: &str = "prism.fleet";
/// The app (`[apps.NAME]`).
pub(crate) const APP: &str = "prism.app";
/// The service within the app (`[apps.APP.services.NAME]`).
pub(crate) const SERVICE: &str = "prism.service";
/// The pod's instance number, decimal from 0.
pub(crate) const INSTANCE: &str = "prism.instance";
/// Hash of the service spec the container was created from.
pub(crate) const SPEC: &str = "prism.spec";

/// The names (never the values) of the container's secret variables,
/// comma-separated: what shows them hides their values, whatever
/// fleet.toml says now.
pub(crate) const SECRETS: &str = "prism.secrets";

/// On a pod's local volume: its name in fleet.toml.
pub(crate) const VOLUME: &str = "prism.volume";

/// Every Prism label, in the order they are written and checked.
pub(crate) const ALL: [&str; 5] = [FLEET, APP, SERVICE, INSTANCE, SPEC];

/// A scheduled job's run: the job's name (`[apps.APP.jobs.NAME]`). Job
/// containers carry no service or instance label, so they are never
/// mistaken for a pod's.
pub(crate) const JOB: &str = "prism.job";
/// When a job's run must have ended, unix seconds: its timeout, written on
/// the container itself so that any later applier enforces it.
pub(crate) const DEADLINE: &str = "prism.deadline";
/// On a job run's watchdog: the run it ends.
pub(crate) const WATCHDOG: &str = "prism.watchdog";

/// A scheduled job's container, by its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct JobLabels {
    pub fleet: String,
    pub app: String,
    pub job: String,
    /// Unix seconds.
    pub deadline: i64,
}

impl JobLabels {
    /// `--label …` for `docker run`.
    pub(crate) fn run_args(&self) -> Vec<String> {
        let deadline = self.deadline.to_string();
        [
            (FLEET, self.fleet.as_str()),
            (APP, &self.app),
            (JOB, &self.job),
            (DEADLINE, &deadline),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["--label".to_owned(), format!("{key}={value}")])
        .collect()
    }

    fn from_labels(labels: &BTreeMap<String, String>) -> Option<JobLabels> {
        let get = |key: &str| labels.get(key).filter(|v| !v.is_empty()).cloned();
        let deadline = get(DEADLINE)?;
        Some(JobLabels {
            fleet: get(FLEET)?,
            app: get(APP)?,
            job: get(JOB)?,
            deadline: deadline.parse().ok().filter(|d: &i64| *d > 0)?,
        })
    }
}

/// A Prism container's identity, read from (or written to) its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrismLabels {
    pub fleet: String,
    pub app: String,
    pub service: String,
    pub instance: u32,
    pub spec: String,
}

impl PrismLabels {
    /// `--label prism.fleet=… --label prism.app=… …` for `docker run`/`create`.
    pub(crate) fn run_args(&self) -> Vec<String> {
        let instance = self.instance.to_string();
        let values = [
            self.fleet.as_str(),
            &self.app,
            &self.service,
            &instance,
            &self.spec,
        ];
        ALL.iter()
            .zip(values)
            .flat_map(|(key, value)| ["--label".to_owned(), format!("{key}={value}")])
            .collect()
    }

    /// Reads the five labels; every one must be present and non-empty, and
    /// the instance a plain decimal number (as `run_args` writes it).
    pub(crate) fn from_labels(
        labels: &BTreeMap<String, String>,
    ) -> Result<PrismLabels, LabelProblem> {
        let get = |key: &'static str| match labels.get(key) {
            None => Err(LabelProblem::Missing(key)),
            Some(v) if v.is_empty() => Err(LabelProblem::Empty(key)),
            Some(v) => Ok(v.clone()),
        };
        let fleet = get(FLEET)?;
        let app = get(APP)?;
        let service = get(SERVICE)?;
        let raw_instance = get(INSTANCE)?;
        let instance =
            parse_instance(&raw_instance).ok_or(LabelProblem::BadInstance(raw_instance))?;
        let spec = get(SPEC)?;
        Ok(PrismLabels {
            fleet,
            app,
            service,
            instance,
            spec,
        })
    }
}

/// Only what `u32::to_string` writes: no sign, no leading zero, no spaces.
fn parse_instance(s: &str) -> Option<u32> {
    let canonical = s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// Whose a container is, by its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Started by Prism: all its labels are there and well formed.
    Prism(PrismLabels),
    /// A run of a scheduled job, started by Prism.
    Job(JobLabels),
    /// Not Prism's to manage (made by hand, by another tool, or damaged):
    /// report it, never touch it.
    Foreign(LabelProblem),
}

impl Identity {
    pub(crate) fn from_labels(labels: &BTreeMap<String, String>) -> Identity {
        match PrismLabels::from_labels(labels) {
            Ok(l) => Identity::Prism(l),
            Err(p) => match JobLabels::from_labels(labels) {
                Some(job) if !labels.contains_key(SERVICE) => Identity::Job(job),
                _ => Identity::Foreign(p),
            },
        }
    }

    pub fn prism(&self) -> Option<&PrismLabels> {
        match self {
            Identity::Prism(l) => Some(l),
            Identity::Job(_) | Identity::Foreign(_) => None,
        }
    }

    pub fn job(&self) -> Option<&JobLabels> {
        match self {
            Identity::Job(j) => Some(j),
            Identity::Prism(_) | Identity::Foreign(_) => None,
        }
    }
}

/// The first thing wrong with a container's Prism labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelProblem {
    Missing(&'static str),
    Empty(&'static str),
    /// `prism.instance` is not a plain decimal number.
    BadInstance(String),
}

impl fmt::Display for LabelProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelProblem::Missing(key) => write!(f, "no label {key}"),
            LabelProblem::Empty(key) => write!(f, "label {key} is empty"),
            LabelProblem::BadInstance(v) => {
                write!(f, "label {INSTANCE}={v:?} is not an instance number")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web0() -> PrismLabels {
        PrismLabels {
            fleet: "lab".into(),
            app: "demo".into(),
            service: "web".into(),
            instance: 0,
            spec: "abc123".into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    /// Turns `--label k=v` args back into a label map.
    fn from_run_args(args: &[String]) -> BTreeMap<String, String> {
        args.chunks(2)
            .map(|pair| {
                assert_eq!(pair[0], "--label");
                let (k, v) = pair[1].split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn run_args_round_trip() {
        let labels = PrismLabels {
            instance: 12,
            ..web0()
        };
        let args = labels.run_args();
        assert_eq!(
            args,
            [
                "--label",
                "prism.fleet=lab",
                "--label",
                "prism.app=demo",
                "--label",
                "prism.service=web",
                "--label",
                "prism.instance=12",
                "--label",
                "prism.spec=abc123"
            ]
        );
        assert_eq!(PrismLabels::from_labels(&from_run_args(&args)), Ok(labels));
    }

    #[test]
    fn other_labels_are_ignored() {
        let mut m = from_run_args(&web0().run_args());
        m.insert("com.example.team".into(), "ops".into());
        m.insert("prism.extra".into(), "x".into());
        assert_eq!(Identity::from_labels(&m), Identity::Prism(web0()));
    }

    #[test]
    fn problems_are_named() {
        let full = from_run_args(&web0().run_args());
        for key in ALL {
            let mut m = full.clone();
            m.remove(key);
            assert_eq!(
                PrismLabels::from_labels(&m),
                Err(LabelProblem::Missing(key))
            );
            m.insert(key.into(), String::new());
            assert_eq!(PrismLabels::from_labels(&m), Err(LabelProblem::Empty(key)));
        }
        assert_eq!(
            Identity::from_labels(&map(&[])),
            Identity::Foreign(LabelProblem::Missing(FLEET))
        );
        assert_eq!(
            LabelProblem::Missing(SPEC).to_string(),
            "no label prism.spec"
        );
    }

    #[test]
    fn job_containers_are_known_by_their_labels() {
        let job = JobLabels {
            fleet: "lab".into(),
            app: "blog".into(),
            job: "schedule".into(),
            deadline: 1_700_000_060,
        };
        let m = from_run_args(&job.run_args());
        assert_eq!(Identity::from_labels(&m), Identity::Job(job.clone()));
        // Without a deadline, or with a service label too: not a job run.
        let mut m1 = m.clone();
        m1.remove(DEADLINE);
        assert!(matches!(Identity::from_labels(&m1), Identity::Foreign(_)));
        let mut m2 = m.clone();
        m2.insert(DEADLINE.into(), "soon".into());
        assert!(matches!(Identity::from_labels(&m2), Identity::Foreign(_)));
        let mut m3 = m;
        m3.insert(SERVICE.into(), "web".into());
        assert!(matches!(Identity::from_labels(&m3), Identity::Foreign(_)));
    }

    #[test]
    fn instance_must_be_plain_decimal() {
        let mut m = from_run_args(&web0().run_args());
        for ok in [("0", 0), ("7", 7), ("4294967295", u32::MAX)] {
            m.insert(INSTANCE.into(), ok.0.into());
            assert_eq!(PrismLabels::from_labels(&m).map(|l| l.instance), Ok(ok.1));
        }
        for bad in ["x", "-1", "+1", "01", " 1", "1.0", "4294967296", "１"] {
            m.insert(INSTANCE.into(), bad.into());
            assert_eq!(
                PrismLabels::from_labels(&m),
                Err(LabelProblem::BadInstance(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            LabelProblem::BadInstance("x".into()).to_string(),
            "label prism.instance=\"x\" is not an instance number"
        );
    }
}
