//! Enums kept as text columns, read and written as the enums themselves:
//! a state that is not one of the enum's words is an error when read,
//! never a string compared with literals further on.

use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};

use super::{Level, RequestKind, RequestState, Scope, Verdict};
use crate::cloud::Lifecycle;
use crate::config::Provider;
use crate::reconcile::{HoldKind, NodeState};

macro_rules! text_column {
    ($($t:ty: $what:literal),* $(,)?) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = value.as_str()?;
                <$t>::parse(s)
                    .ok_or_else(|| FromSqlError::Other(format!("unknown {} {s:?}", $what).into()))
            }
        }
    )*};
}

text_column! {
    NodeState: "node state",
    Lifecycle: "lifecycle",
    Provider: "provider",
    Verdict: "verdict",
    Level: "event level",
    RequestKind: "request kind",
    RequestState: "request state",
    HoldKind: "hold",
    Scope: "token scope",
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn enums_round_trip_and_unknown_words_are_errors() {
        let conn = Connection::open_in_memory().expect("open");
        for state in NodeState::ALL {
            let back: NodeState = conn
                .query_row("SELECT ?1", [state], |r| r.get(0))
                .expect("round trip");
            assert_eq!(back, state);
        }
        let back: Lifecycle = conn
            .query_row("SELECT ?1", [Lifecycle::OnDemand], |r| r.get(0))
            .expect("lifecycle");
        assert_eq!(back, Lifecycle::OnDemand);
        let err = conn
            .query_row("SELECT 'sleeping'", [], |r| r.get::<_, NodeState>(0))
            .expect_err("not a state");
        assert!(
            err.to_string().contains("unknown node state \"sleeping\""),
            "{err}"
        );
    }
}
