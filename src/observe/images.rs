//! The images a node holds (`GET /images/json`), and whether one a service
//! names is among them. Pure.
//!
//! Docker lists an image by the names it was pulled or tagged as, in its
//! own normal form: Docker Hub's `docker.io/` and `library/` dropped, and
//! `:latest` added to a name without tag or digest. A reference from
//! fleet.toml is brought to the same form before it is looked up.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::error::{ParseError, Probe, from_json};

/// Every image on the node, with tags (`docker image ls`), dangling ones
/// included.
pub(crate) const IMAGES_PATH: &str = "/images/json";

/// The names of a node's images: `repo:tag` and `repo@digest`, and the
/// image id each names, when listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Images {
    names: BTreeSet<String>,
    ids: BTreeMap<String, String>,
}

impl Images {
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Images {
        Images {
            names: names
                .into_iter()
                .filter(|n| !n.as_ref().starts_with("<none>"))
                .map(|n| normal(n.as_ref()))
                .collect(),
            ids: BTreeMap::new(),
        }
    }

    /// The id (`sha256:` and 64 hex digits) of the image `image` names,
    /// when the node has it.
    pub fn id_of(&self, image: &str) -> Option<&str> {
        self.ids.get(&normal(image)).map(String::as_str)
    }

    /// Whether `image`, as fleet.toml names it, is on the node.
    pub fn contains(&self, image: &str) -> bool {
        self.names.contains(&normal(image))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// `redis` → `redis:latest`, `docker.io/library/redis:7` → `redis:7`,
/// `reg:5000/app` → `reg:5000/app:latest`; with a digest, the digest alone
/// (`redis:7@sha256:…` → `redis@sha256:…`, as Docker lists it).
fn normal(image: &str) -> String {
    let mut name = image.trim();
    for prefix in ["docker.io/", "index.docker.io/"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest;
        }
    }
    if let Some(rest) = name.strip_prefix("library/") {
        name = rest;
    }
    if let Some((repo, digest)) = name.split_once('@') {
        // A tag sits after the last path segment's colon (a registry's
        // port sits before a slash).
        let segment = repo.rfind('/').map_or(0, |i| i + 1);
        let repo = match repo[segment..].rfind(':') {
            Some(colon) => &repo[..segment + colon],
            None => repo,
        };
        return format!("{repo}@{digest}");
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// `GET /images/json`: every name of every image (either list may be
/// null, or hold `<none>:<none>` for an image without one).
pub(crate) fn parse_image_list(status: u16, body: &[u8]) -> Result<Images, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", expecting = "an image list entry")]
    struct Raw {
        #[serde(default)]
        id: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        #[serde(default)]
        repo_digests: Option<Vec<String>>,
    }
    let text = super::api::ok_text(Probe::ImageList, status, body)?;
    let raw: Vec<Raw> = from_json(Probe::ImageList, text)?;
    let mut ids = BTreeMap::new();
    let mut names = Vec::new();
    for r in raw {
        let all = r
            .repo_tags
            .unwrap_or_default()
            .into_iter()
            .chain(r.repo_digests.unwrap_or_default());
        for name in all.filter(|n| !n.starts_with("<none>")) {
            if is_image_id(&r.id) {
                ids.insert(normal(&name), r.id.clone());
            }
            names.push(name);
        }
    }
    let mut images = Images::new(names);
    images.ids = ids;
    Ok(images)
}

/// `sha256:` and 64 hex digits: safe in an API path.
fn is_image_id(id: &str) -> bool {
    id.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `GET /images/{id}/json` of an image, by its id.
pub(crate) fn inspect_image_path(id: &str) -> Option<String> {
    is_image_id(id).then(|| format!("/images/{id}/json"))
}

/// The paths an image declares as volumes (`Config.Volumes`), sorted.
pub(crate) fn parse_image_volumes(status: u16, body: &[u8]) -> Result<Vec<String>, ParseError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", expecting = "an image object")]
    struct Raw {
        #[serde(default)]
        config: Option<RawConfig>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct RawConfig {
        #[serde(default)]
        volumes: Option<BTreeMap<String, serde_json::Value>>,
    }
    let text = super::api::ok_text(Probe::ImageList, status, body)?;
    let raw: Raw = from_json(Probe::ImageList, text)?;
    Ok(raw
        .config
        .and_then(|c| c.volumes)
        .unwrap_or_default()
        .into_keys()
        .filter(|p| p.starts_with('/'))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"[
      {"Containers":-1,"Created":1700000000,"Id":"sha256:aa","Labels":null,"ParentId":"",
       "RepoDigests":["172.31.250.2:5000/prism/testapp@sha256:1111"],
       "RepoTags":["172.31.250.2:5000/prism/testapp:1","testapp:local"],
       "SharedSize":-1,"Size":4000000,"VirtualSize":4000000},
      {"Id":"sha256:bb","RepoDigests":["redis@sha256:2222"],"RepoTags":["redis:7-alpine","redis:latest"]},
      {"Id":"sha256:cc","RepoDigests":["<none>@<none>"],"RepoTags":["<none>:<none>"]},
      {"Id":"sha256:dd","RepoDigests":null,"RepoTags":null},
      {"Id":"sha256:ee","RepoTags":["bitnami/postgresql:16"]}
    ]"#;

    #[test]
    fn names_are_read_and_looked_up_as_docker_lists_them() {
        let images = parse_image_list(200, LIST.as_bytes()).expect("parse");
        assert_eq!(images.len(), 7, "{images:?}");
        for present in [
            "172.31.250.2:5000/prism/testapp:1",
            "172.31.250.2:5000/prism/testapp@sha256:1111",
            "testapp:local",
            "redis:7-alpine",
            "redis",
            "docker.io/library/redis:7-alpine",
            "index.docker.io/library/redis",
            "redis@sha256:2222",
            "redis:7-alpine@sha256:2222",
            "docker.io/bitnami/postgresql:16",
        ] {
            assert!(images.contains(present), "{present}");
        }
        for absent in [
            "172.31.250.2:5000/prism/testapp",
            "172.31.250.2:5000/prism/testapp:2",
            "172.31.250.2:5000/testapp:1",
            "redis:7",
            "postgresql:16",
            "<none>:<none>",
            "testapp",
        ] {
            assert!(!images.contains(absent), "{absent}");
        }
        assert!(parse_image_list(200, b"[]").expect("empty").is_empty());
    }

    #[test]
    fn docker_errors_and_other_shapes_are_errors() {
        let err = parse_image_list(500, br#"{"message":"daemon is busy"}"#).expect_err("500");
        assert!(err.to_string().contains("daemon is busy"), "{err}");
        assert_eq!(err.probe(), Probe::ImageList);
        assert!(parse_image_list(200, br#"{"RepoTags":[]}"#).is_err());
        assert!(parse_image_list(200, br#"[{"RepoTags":"x:1"}]"#).is_err());
    }

    #[test]
    fn references_take_docker_s_normal_form() {
        assert_eq!(normal("redis"), "redis:latest");
        assert_eq!(normal("docker.io/library/redis:7"), "redis:7");
        assert_eq!(normal("reg:5000/app"), "reg:5000/app:latest");
        assert_eq!(normal("reg:5000/app:2"), "reg:5000/app:2");
        assert_eq!(normal("app@sha256:ff"), "app@sha256:ff");
        assert_eq!(normal("redis:7@sha256:ff"), "redis@sha256:ff");
        assert_eq!(
            normal("docker.io/library/redis:7@sha256:ff"),
            "redis@sha256:ff"
        );
        assert_eq!(normal("reg:5000/app:2@sha256:ff"), "reg:5000/app@sha256:ff");
        assert_eq!(normal("reg:5000/app@sha256:ff"), "reg:5000/app@sha256:ff");
        assert_eq!(normal("ghcr.io/acme/blog:1.4.2"), "ghcr.io/acme/blog:1.4.2");
    }
}
