//! `docker info`: the engine's own view of the node.

use serde::Deserialize;
use serde_json::Value;

use super::error::{ParseError, Probe, from_json};

/// `docker info --format '{{json .}}'`: one JSON object on one line.
/// Exit status is 0 even when the daemon is down (see [`parse_docker_info`]).
pub fn docker_info_argv() -> Vec<String> {
    ["docker", "info", "--format", "{{json .}}"]
        .map(String::from)
        .into()
}

/// The fields Prism uses; the rest of `docker info` is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerInfo {
    /// `20.10.24+dfsg1` as the distribution builds it.
    pub server_version: String,
    /// The node's host name.
    pub name: String,
    pub ncpu: u32,
    /// Bytes.
    pub mem_total: u64,
    pub containers_running: u32,
    pub containers_paused: u32,
    pub containers_stopped: u32,
    /// `x86_64`, `aarch64`: which images can run.
    pub architecture: String,
    /// `linux`.
    pub os_type: String,
    pub operating_system: String,
    pub kernel_version: String,
    /// Where images and containers live (`/var/lib/docker`).
    pub docker_root_dir: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", expecting = "docker info's JSON object")]
struct RawInfo {
    server_version: String,
    name: String,
    #[serde(rename = "NCPU")]
    ncpu: u32,
    mem_total: u64,
    containers_running: u32,
    containers_paused: u32,
    containers_stopped: u32,
    architecture: String,
    #[serde(rename = "OSType")]
    os_type: String,
    operating_system: String,
    kernel_version: String,
    docker_root_dir: String,
}

/// Parses `docker info`'s JSON. A daemon that is down or refuses the user
/// still gives exit 0 and a JSON object with only `ServerErrors`: that is
/// `ParseError::DockerUnavailable` with Docker's messages.
pub fn parse_docker_info(stdout: &str) -> Result<DockerInfo, ParseError> {
    if stdout.trim().is_empty() {
        return Err(ParseError::malformed(
            Probe::DockerInfo,
            None,
            "no output (expected a JSON object)",
        ));
    }
    // An object first: serde would also take a struct from an array.
    let object: serde_json::Map<String, Value> = from_json(Probe::DockerInfo, stdout)?;
    match object.get("ServerErrors") {
        None | Some(Value::Null) => {}
        Some(Value::Array(errors)) if errors.is_empty() => {}
        Some(Value::Array(errors)) => {
            let messages = errors
                .iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect();
            return Err(ParseError::DockerUnavailable {
                probe: Probe::DockerInfo,
                messages,
            });
        }
        Some(other) => {
            return Err(ParseError::malformed(
                Probe::DockerInfo,
                None,
                format!("ServerErrors is {other}, not a list"),
            ));
        }
    }
    let raw: RawInfo = serde_path_to_error::deserialize(Value::Object(object))
        .map_err(|e| ParseError::json(Probe::DockerInfo, &e.path().to_string(), e.inner()))?;
    Ok(DockerInfo {
        server_version: raw.server_version,
        name: raw.name,
        ncpu: raw.ncpu,
        mem_total: raw.mem_total,
        containers_running: raw.containers_running,
        containers_paused: raw.containers_paused,
        containers_stopped: raw.containers_stopped,
        architecture: raw.architecture,
        os_type: raw.os_type,
        operating_system: raw.operating_system,
        kernel_version: raw.kernel_version,
        docker_root_dir: raw.docker_root_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = include_str!("fixtures/info.json");
    const DAEMON_DOWN: &str = include_str!("fixtures/info_daemon_down.json");

    #[test]
    fn argv() {
        assert_eq!(
            docker_info_argv(),
            ["docker", "info", "--format", "{{json .}}"]
        );
    }

    #[test]
    fn lab_node() {
        let info = parse_docker_info(INFO).unwrap();
        assert_eq!(
            info,
            DockerInfo {
                server_version: "20.10.24+dfsg1".into(),
                name: "node1".into(),
                ncpu: 2,
                mem_total: 25_276_514_304,
                containers_running: 6,
                containers_paused: 1,
                containers_stopped: 3,
                architecture: "x86_64".into(),
                os_type: "linux".into(),
                operating_system: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel_version: "6.18.44-fc-v595".into(),
                docker_root_dir: "/var/lib/docker".into(),
            }
        );
    }

    #[test]
    fn daemon_down_is_its_own_error() {
        let err = parse_docker_info(DAEMON_DOWN).unwrap_err();
        assert_eq!(
            err,
            ParseError::DockerUnavailable {
                probe: Probe::DockerInfo,
                messages: vec![
                    "Cannot connect to the Docker daemon at unix:///nonexistent.sock. Is the docker daemon running?"
                        .into()
                ],
            }
        );
        assert_eq!(
            err.to_string(),
            "`docker info`: the Docker daemon did not answer: Cannot connect to the Docker daemon at \
             unix:///nonexistent.sock. Is the docker daemon running?"
        );
        // Captured as a user outside the docker group.
        let denied = r#"{"ServerErrors":["permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/info\": dial unix /var/run/docker.sock: connect: permission denied"],"ClientInfo":{"Debug":false,"Context":"default","Plugins":[],"Warnings":null}}"#;
        assert!(matches!(
            parse_docker_info(denied),
            Err(ParseError::DockerUnavailable { messages, .. }) if messages[0].starts_with("permission denied")
        ));
    }

    #[test]
    fn empty_server_errors_are_no_errors() {
        let with_empty = INFO.replacen('{', r#"{"ServerErrors":[],"#, 1);
        assert_eq!(parse_docker_info(&with_empty), parse_docker_info(INFO));
        let with_null = INFO.replacen('{', r#"{"ServerErrors":null,"#, 1);
        assert!(parse_docker_info(&with_null).is_ok());
    }

    #[test]
    fn malformed() {
        let cases = [
            ("", None, "no output"),
            ("   \n", None, "no output"),
            ("garbage\n", Some(1), "expected value"),
            (&INFO[..INFO.len() / 2], Some(1), "EOF while parsing"),
            (r#"{"ServerVersion":"20"}"#, None, "missing field `Name`"),
            (
                r#"[1,2]"#,
                Some(1),
                "invalid type: sequence, expected a map",
            ),
            (
                r#"{"ServerErrors":"down"}"#,
                None,
                "ServerErrors is \"down\", not a list",
            ),
        ];
        for (text, line, want) in cases {
            let err = parse_docker_info(text).unwrap_err();
            assert_eq!(err.probe(), Probe::DockerInfo);
            assert_eq!(err.line(), line, "{text:?}");
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
        let wrong_type = INFO.replace(r#""NCPU":2"#, r#""NCPU":"two""#);
        let err = parse_docker_info(&wrong_type).unwrap_err();
        assert_eq!(
            err.to_string(),
            "output of `docker info`: at NCPU: invalid type: string \"two\", expected u32"
        );
        let two_docs = format!("{}{}", INFO.trim(), INFO);
        let err = parse_docker_info(&two_docs).unwrap_err();
        assert!(err.to_string().contains("trailing characters"), "{err}");
    }
}
