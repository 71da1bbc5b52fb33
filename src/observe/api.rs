//! The Docker Engine API requests a probe makes, and what their answers
//! mean. Pure: paths are built and answers judged here; the SSH layer
//! (`Pool::docker_get`) carries them to the node's Docker socket.
//!
//! | request | parser | expect |
//! |---|---|---|
//! | [`VERSION_PATH`] | [`parse_version`] | 200 |
//! | [`list_containers_path`] | [`parse_container_list`] | 200 |
//! | [`inspect_container_path`] | [`parse_container_inspect`] | 200, or 404: the container is gone |
//! | [`super::IMAGES_PATH`] | [`super::parse_image_list`] | 200 |
//!
//! Paths carry no API version (`/v1.41/…`): the daemon answers in its
//! own, the fields read here have kept their shape across versions, and a
//! pinned version fails on daemons that have dropped it.

use serde::Deserialize;
use serde_json::Value;

use super::containers::{ContainerId, ContainerState, parse_container};
use super::error::{ParseError, Probe, clip, from_json};
use super::labels;

/// The daemon's version and its components'.
pub const VERSION_PATH: &str = "/version";

/// Every container of the fleet, in any state (`docker ps -a --filter
/// label=prism.fleet=<fleet>`). The query is URL-encoded, so a fleet name
/// cannot add parameters.
pub fn list_containers_path(fleet: &str) -> String {
    let filters = serde_json::json!({ "label": [format!("{}={fleet}", labels::FLEET)] });
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("all", "1")
        .append_pair("filters", &filters.to_string())
        .finish();
    format!("/containers/json?{query}")
}

/// The fleet's Docker volumes (`docker volume ls --filter
/// label=prism.fleet=<fleet>`), the query URL-encoded.
pub fn list_volumes_path(fleet: &str) -> String {
    let filters = serde_json::json!({ "label": [format!("{}={fleet}", labels::FLEET)] });
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("filters", &filters.to_string())
        .finish();
    format!("/volumes?{query}")
}

/// The names of `GET /volumes`.
pub fn parse_volume_list(
    status: u16,
    body: &[u8],
) -> Result<std::collections::BTreeSet<String>, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", expecting = "a volume list")]
    struct Raw {
        #[serde(default)]
        volumes: Option<Vec<RawVolume>>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct RawVolume {
        name: String,
    }
    let raw: Raw = from_json(
        Probe::ContainerList,
        ok_text(Probe::ContainerList, status, body)?,
    )?;
    Ok(raw
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect())
}

/// One container, as `docker container inspect` shows it. A
/// [`ContainerId`] is hex digits only, so it needs no escaping.
pub fn inspect_container_path(id: &ContainerId) -> String {
    format!("/containers/{id}/json")
}

/// `Version` of `GET /version` (`20.10.24+dfsg1`).
pub fn parse_version(status: u16, body: &[u8]) -> Result<String, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", expecting = "Docker's version object")]
    struct Raw {
        version: String,
    }
    let raw: Raw = from_json(Probe::Version, ok_text(Probe::Version, status, body)?)?;
    if raw.version.trim().is_empty() {
        return Err(ParseError::malformed(
            Probe::Version,
            None,
            "Version is empty",
        ));
    }
    Ok(raw.version)
}

/// The ids of `GET /containers/json`, in its order (the rest of each
/// entry is read by inspecting it).
pub fn parse_container_list(status: u16, body: &[u8]) -> Result<Vec<ContainerId>, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", expecting = "a container list entry")]
    struct Raw {
        id: String,
    }
    let text = ok_text(Probe::ContainerList, status, body)?;
    let raw: Vec<Raw> = from_json(Probe::ContainerList, text)?;
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            ContainerId::parse(&c.id).ok_or_else(|| {
                ParseError::malformed(
                    Probe::ContainerList,
                    None,
                    format!("[{i}].Id {:?} is not a container id", clip(&c.id)),
                )
            })
        })
        .collect()
}

/// `GET /containers/{id}/json`: the container, or `None` when Docker no
/// longer knows it (removed since it was listed: not an error).
pub fn parse_container_inspect(
    status: u16,
    body: &[u8],
) -> Result<Option<ContainerState>, ParseError> {
    if status == 404 {
        return Ok(None);
    }
    parse_container(ok_text(Probe::ContainerInspect, status, body)?).map(Some)
}

/// The body of a 200 answer as text; any other status is Docker's error,
/// with the message it gave (`{"message": "…"}`).
pub(super) fn ok_text(probe: Probe, status: u16, body: &[u8]) -> Result<&str, ParseError> {
    if status != 200 {
        return Err(ParseError::Status {
            probe,
            status,
            message: error_message(body),
        });
    }
    std::str::from_utf8(body)
        .map_err(|e| ParseError::malformed(probe, None, format!("the answer is not UTF-8: {e}")))
}

fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned());
    if message.is_empty() {
        "no message".to_owned()
    } else {
        clip(&message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{Identity, RunState};

    // Answers of a lab node's dockerd (20.10.24, API 1.41): see fixtures/.
    const VERSION: &str = include_str!("fixtures/api_version.json");
    const LIST: &str = include_str!("fixtures/api_containers.json");
    const BAD_FILTER: &str = include_str!("fixtures/api_containers_bad_filter.json");
    const INSPECT: &str = include_str!("fixtures/api_inspect.json");
    const GONE: &str = include_str!("fixtures/api_inspect_404.json");

    fn id(s: &str) -> ContainerId {
        ContainerId::parse(s).unwrap()
    }

    #[test]
    fn the_list_query_is_encoded_and_decodes_to_the_filter() {
        let path = list_containers_path("lab");
        assert_eq!(
            path,
            "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22prism.fleet%3Dlab%22%5D%7D"
        );
        // A fleet name that looks like more parameters stays one value.
        let path = list_containers_path("a&all=0 \"b\"#");
        let (_, query) = path.split_once('?').unwrap();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(pairs.len(), 2, "{path}");
        assert_eq!(pairs[0], ("all".into(), "1".into()));
        assert_eq!(pairs[1].0, "filters");
        let filters: Value = serde_json::from_str(&pairs[1].1).unwrap();
        assert_eq!(
            filters,
            serde_json::json!({ "label": ["prism.fleet=a&all=0 \"b\"#"] })
        );
        assert!(!path.contains(['#', ' ', '"']), "{path}");
    }

    #[test]
    fn inspect_path_is_the_full_id() {
        let c = id(&"ab".repeat(32));
        assert_eq!(
            inspect_container_path(&c),
            format!("/containers/{}/json", "ab".repeat(32))
        );
    }

    #[test]
    fn version() {
        assert_eq!(
            parse_version(200, VERSION.as_bytes()),
            Ok("20.10.24+dfsg1".into())
        );
        for (body, want) in [
            ("", "EOF while parsing"),
            ("[]", "expected Docker's version object"),
            (r#"{"ApiVersion":"1.41"}"#, "missing field `Version`"),
            (r#"{"Version":" "}"#, "Version is empty"),
        ] {
            let err = parse_version(200, body.as_bytes()).unwrap_err();
            assert_eq!(err.probe(), Probe::Version);
            assert!(err.to_string().contains(want), "{body:?}: {err}");
        }
    }

    #[test]
    fn container_list() {
        assert_eq!(
            parse_container_list(200, LIST.as_bytes()),
            Ok(vec![
                id("76a971a57e7cebf8f34de122c554b40c0283ac3bdb232ef5c8745d7885f73262"),
                id("1daf797e62f7ed7de3c44004a272a1aed25b0127cc837522d9f24c3fa7d87ff0"),
            ])
        );
        assert_eq!(parse_container_list(200, b"[]\n"), Ok(vec![]));
        let short = LIST.replacen(
            "76a971a57e7cebf8f34de122c554b40c0283ac3bdb232ef5c8745d7885f73262",
            "76a971a57e7c",
            1,
        );
        assert_eq!(
            parse_container_list(200, short.as_bytes())
                .unwrap_err()
                .to_string(),
            "output of `GET /containers/json`: [0].Id \"76a971a57e7c\" is not a container id"
        );
        let err = parse_container_list(200, br#"{"Id":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("expected a sequence"), "{err}");
    }

    #[test]
    fn container_inspect() {
        let web = parse_container_inspect(200, INSPECT.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            web.id,
            id("1daf797e62f7ed7de3c44004a272a1aed25b0127cc837522d9f24c3fa7d87ff0")
        );
        assert_eq!(web.name, "prism-fixture-web-0");
        assert_eq!(web.state, RunState::Running);
        assert_eq!(web.started_at, Some(1_795_307_349_840));
        assert_eq!(web.finished_at, None);
        assert_eq!(web.ports.len(), 1);
        assert_eq!(web.ports[0].to_string(), "127.0.0.1:32768->8080/tcp");
        let Identity::Prism(labels) = &web.identity else {
            panic!("not Prism's: {:?}", web.identity);
        };
        assert_eq!(
            (labels.fleet.as_str(), labels.service.as_str()),
            ("fixture", "web")
        );
        // Removed between list and inspect: gone, not an error.
        assert_eq!(parse_container_inspect(404, GONE.as_bytes()), Ok(None));
        // A list (what the CLI prints) is not one container.
        let err = parse_container_inspect(200, format!("[{INSPECT}]").as_bytes()).unwrap_err();
        assert_eq!(err.probe(), Probe::ContainerInspect);
        assert!(err.to_string().contains("at [0]: invalid type"), "{err}");
        let err = parse_container_inspect(200, b"{}").unwrap_err();
        assert!(err.to_string().contains("missing field `Id`"), "{err}");
    }

    #[test]
    fn error_statuses_carry_dockers_message() {
        let err = parse_container_list(500, BAD_FILTER.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ParseError::Status {
                probe: Probe::ContainerList,
                status: 500,
                message: "unexpected end of JSON input".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            "`GET /containers/json`: Docker answered 500: unexpected end of JSON input"
        );
        // 404 only means "gone" for one container; for the others it is an error.
        let err = parse_version(404, b"404 page not found\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`GET /version`: Docker answered 404: 404 page not found"
        );
        let err = parse_container_inspect(503, b"").unwrap_err();
        assert!(
            err.to_string().ends_with("answered 503: no message"),
            "{err}"
        );
        let err = parse_version(200, b"\xff\xfe").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
