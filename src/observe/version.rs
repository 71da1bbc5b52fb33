//! `docker version`, asked only when sshd could not connect to a Docker
//! socket that looked usable: whether the daemon answers the CLI tells a
//! stopped daemon from an sshd that refuses to forward to the socket.

/// `docker version --format {{.Server.Version}}`.
pub(crate) fn docker_version_argv() -> Vec<String> {
    ["docker", "version", "--format", "{{.Server.Version}}"]
        .map(String::from)
        .into()
}

/// The daemon's version, or Docker's own message of why it did not answer
/// (`Cannot connect to the Docker daemon at …`, `permission denied …`).
pub(crate) fn parse_docker_version(
    status: Option<u32>,
    stdout: &str,
    stderr: &str,
) -> Result<String, String> {
    let last = |text: &str| {
        text.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map(str::to_owned)
    };
    // Warnings (a broken config file) may precede the version.
    match (status, last(stdout)) {
        (Some(0), Some(v)) if v.starts_with(|c: char| c.is_ascii_digit()) => Ok(v),
        _ => Err(last(stderr).or_else(|| last(stdout)).unwrap_or_else(|| {
            status.map_or_else(
                || "docker version was killed".to_owned(),
                |s| format!("docker version exited with status {s}"),
            )
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv() {
        assert_eq!(
            docker_version_argv(),
            ["docker", "version", "--format", "{{.Server.Version}}"]
        );
    }

    #[test]
    fn answers() {
        assert_eq!(
            parse_docker_version(Some(0), "20.10.24+dfsg1\n", ""),
            Ok("20.10.24+dfsg1".into())
        );
        assert_eq!(
            parse_docker_version(
                Some(0),
                "WARNING: Error loading config file: /root/.docker/config.json\n20.10.24+dfsg1\n",
                ""
            ),
            Ok("20.10.24+dfsg1".into())
        );
        // Docker 20.10's messages (exit status 1).
        let down = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?";
        assert_eq!(
            parse_docker_version(Some(1), "\n", &format!("{down}\n")),
            Err(down.into())
        );
        let denied = "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: Get \"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version\": dial unix /var/run/docker.sock: connect: permission denied";
        assert_eq!(
            parse_docker_version(Some(1), "", denied),
            Err(denied.into())
        );
        assert_eq!(
            parse_docker_version(Some(137), "", ""),
            Err("docker version exited with status 137".into())
        );
        assert_eq!(
            parse_docker_version(None, "", ""),
            Err("docker version was killed".into())
        );
        // Exit 0 without a version is no answer either.
        assert_eq!(
            parse_docker_version(Some(0), "Client: Docker Engine\n", ""),
            Err("Client: Docker Engine".into())
        );
    }
}
