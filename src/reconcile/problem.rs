//! What the planner could not do, as RFC 7807 problem details (`type`,
//! `title`, `detail`) plus the pod concerned; `prism plan --json` prints
//! them as they serialize.

use std::fmt;

use serde::Serialize;

use super::desired::PodKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// No ready node has room for the pod: it does not run.
    CannotPlace,
    /// The pod's node is draining and no other node has room: it stays
    /// where it is until it can move or the node goes.
    CannotMove,
    /// The pod holds data on a node that does not answer: it stays until
    /// the node is provably stopped.
    HoldsData,
    /// The pod's durable volumes are in a zone with no ready node.
    NoNodeInZone,
}

impl ProblemKind {
    /// The RFC 7807 `type`, a URI naming the kind of problem.
    pub fn uri(self) -> &'static str {
        match self {
            ProblemKind::CannotPlace => "urn:prism:problem:cannot-place",
            ProblemKind::CannotMove => "urn:prism:problem:cannot-move",
            ProblemKind::HoldsData => "urn:prism:problem:holds-data",
            ProblemKind::NoNodeInZone => "urn:prism:problem:no-node-in-zone",
        }
    }

    /// The RFC 7807 `title`: the same for every problem of the kind.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::CannotPlace => "Pod cannot be placed",
            ProblemKind::CannotMove => "Pod cannot leave its draining node",
            ProblemKind::HoldsData => "Pod waits until its node is provably stopped",
            ProblemKind::NoNodeInZone => "Pod waits for a node in its volumes' zone",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub kind: ProblemKind,
    pub pod: PodKey,
    /// What happened here, e.g. "blog/1 needs 768M of memory; the largest
    /// free space is 512M, on node i-0abc".
    pub detail: String,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Problem", 5)?;
        st.serialize_field("type", self.kind.uri())?;
        st.serialize_field("title", self.kind.title())?;
        st.serialize_field("detail", &self.detail)?;
        st.serialize_field("app", &self.pod.app)?;
        st.serialize_field("instance", &self.pod.instance)?;
        st.end()
    }
}

impl fmt::Display for Problem {
    /// A `prism plan` line: `! cannot place: blog/1 needs …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ProblemKind::CannotPlace => "cannot place",
            ProblemKind::CannotMove => "cannot move",
            ProblemKind::HoldsData => "holds data",
            ProblemKind::NoNodeInZone => "no node in zone",
        };
        write!(f, "! {what}: {}", self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7807_fields() {
        let p = Problem {
            kind: ProblemKind::CannotPlace,
            pod: PodKey::new("blog", 1),
            detail: "blog/1 needs 768M of memory; the largest free space is 512M, on node i-1"
                .into(),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "type": "urn:prism:problem:cannot-place",
                "title": "Pod cannot be placed",
                "detail": "blog/1 needs 768M of memory; the largest free space is 512M, on node i-1",
                "app": "blog",
                "instance": 1,
            })
        );
        assert_eq!(
            p.to_string(),
            "! cannot place: blog/1 needs 768M of memory; the largest free space is 512M, on node i-1"
        );
    }
}
