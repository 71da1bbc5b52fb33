//! The route table: which instances serve a request, by Host and path.
//!
//! Built by a pure function from fleet.toml's `hosts` and the instances the
//! operator knows of; the proxy only ever reads it. A host is exact
//! (`blog.example.com`) or a wildcard (`*.example.com`, any name below
//! example.com but not example.com itself), optionally with a path prefix
//! (`example.com/api`). An exact host wins over any wildcard, a longer
//! wildcard over a shorter one, and within a host the longest prefix that
//! matches on a segment boundary wins.

use std::collections::HashMap;

use crate::config::Fleet;

/// One running instance of a service, as the operator publishes it: where
/// its port is published and whether its health check passes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Upstream {
    pub app: String,
    pub service: String,
    pub instance: u32,
    /// The node's name, for logs and metrics.
    pub node: String,
    /// The node's address (IP or host name) the proxy connects to.
    pub address: String,
    /// The host port the container's port is published on.
    pub port: u16,
    pub healthy: bool,
}

impl Upstream {
    /// `address:port` (IPv6 in brackets): the key the proxy knows an
    /// instance by, for draining and metrics.
    pub fn endpoint(&self) -> String {
        endpoint(&self.address, self.port)
    }
}

pub fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// One `hosts` entry of one service and the instances behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The entry as written in fleet.toml, lowercased: also the `host`
    /// label of the proxy's metrics, so their number stays bounded.
    pub pattern: String,
    /// `/` when the entry has no path.
    pub prefix: String,
    pub app: String,
    pub service: String,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// Every instance of the service, healthy or not.
    pub upstreams: Vec<Upstream>,
}

/// Routes by host, ready for lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Exact host name to indexes into `routes`, longest prefix first.
    exact: HashMap<String, Vec<usize>>,
    /// `.example.com` for `*.example.com`, longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    /// Entries left out because another service already has them.
    conflicts: Vec<String>,
}

impl RouteTable {
    /// Every service's `hosts` in `fleet`, each routed to that service's
    /// entries in `upstreams`. `upstreams` of services without hosts are
    /// ignored. Services are read in name order, so when two entries end
    /// up the same (`a.com/api` and `A.com/api/`) the first keeps it and
    /// the other is listed in `conflicts`.
    pub fn build(fleet: &Fleet, upstreams: &[Upstream]) -> RouteTable {
        let mut table = RouteTable::default();
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        for (app_name, app) in &fleet.apps {
            for (svc_name, svc) in &app.services {
                let max_body = svc.max_body.unwrap_or(fleet.proxy.max_body).0;
                let mut mine: Vec<Upstream> = upstreams
                    .iter()
                    .filter(|u| &u.app == app_name && &u.service == svc_name)
                    .cloned()
                    .collect();
                mine.sort();
                for entry in &svc.hosts {
                    let (host, prefix) = split_entry(entry);
                    let owner = format!("apps.{app_name}.services.{svc_name}");
                    if let Some(first) = seen.get(&(host.clone(), prefix.clone())) {
                        table
                            .conflicts
                            .push(format!("{entry} in {owner} is already routed to {first}"));
                        continue;
                    }
                    seen.insert((host.clone(), prefix.clone()), owner);
                    table.routes.push(Route {
                        pattern: entry.to_ascii_lowercase(),
                        prefix,
                        app: app_name.clone(),
                        service: svc_name.clone(),
                        max_body,
                        upstreams: mine.clone(),
                    });
                    let index = table.routes.len() - 1;
                    match host.strip_prefix('*') {
                        Some(suffix) => {
                            match table.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                                Some((_, list)) => list.push(index),
                                None => table.wildcard.push((suffix.to_owned(), vec![index])),
                            }
                        }
                        None => table.exact.entry(host).or_default().push(index),
                    }
                }
            }
        }
        let routes = &table.routes;
        let by_prefix = |list: &mut Vec<usize>| {
            list.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.len()));
        };
        table.exact.values_mut().for_each(by_prefix);
        table.wildcard.iter_mut().for_each(|(_, l)| by_prefix(l));
        table
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// The route for a request's host (as sent: any case, maybe with a
    /// port or a trailing dot) and path.
    #[cfg(test)]
    pub(crate) fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        self.lookup_index(host, path).map(|i| &self.routes[i])
    }

    /// As `lookup`, the route's index in `routes()`.
    pub(crate) fn lookup_index(&self, host: &str, path: &str) -> Option<usize> {
        let host = normalize_host(host)?;
        let host = host.as_ref();
        let matching = |list: &[usize]| {
            list.iter()
                .copied()
                .find(|&i| prefix_matches(&self.routes[i].prefix, path))
        };
        if let Some(found) = self.exact.get(host).and_then(|l| matching(l)) {
            return Some(found);
        }
        self.wildcard
            .iter()
            .filter(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .find_map(|(_, list)| matching(list))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub(crate) fn conflicts(&self) -> &[String] {
        &self.conflicts
    }
}

/// `Example.com/api/` to (`example.com`, `/api`); no path gives `/`.
fn split_entry(entry: &str) -> (String, String) {
    let (host, path) = match entry.find('/') {
        Some(i) => entry.split_at(i),
        None => (entry, "/"),
    };
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() { "/" } else { path };
    (host.to_ascii_lowercase(), prefix.to_owned())
}

/// The name part of a Host header, lowercased, without port or final dot.
/// `None` for an empty name.
pub(crate) fn normalize_host(host: &str) -> Option<std::borrow::Cow<'_, str>> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:8080
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(name.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(name))
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, never `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fleet(apps: &str) -> Fleet {
        let text = format!(
            "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n[proxy]\nmax_body = \"1M\"\n{apps}"
        );
        crate::config::parse(Path::new("fleet.toml"), &text).unwrap()
    }

    fn up(app: &str, service: &str, instance: u32, port: u16, healthy: bool) -> Upstream {
        Upstream {
            app: app.into(),
            service: service.into(),
            instance,
            node: "node1".into(),
            address: "10.0.0.1".into(),
            port,
            healthy,
        }
    }

    const APPS: &str = r#"
[apps.blog.services.web]
image = "blog"
port = 8080
hosts = ["blog.example.com", "*.example.com"]
[apps.api.services.web]
image = "api"
port = 8000
hosts = ["example.com/api", "Blog.Example.com/api/"]
max_body = "50M"
[apps.shop.services.web]
image = "shop"
port = 8000
hosts = ["*.shop.example.com", "example.com"]
[apps.shop.services.queue]
image = "shop"
"#;

    /// (app, pattern) of the route chosen for host and path.
    fn route(t: &RouteTable, host: &str, path: &str) -> Option<(String, String)> {
        t.lookup(host, path)
            .map(|r| (r.app.clone(), r.pattern.clone()))
    }

    fn pair(app: &str, pattern: &str) -> Option<(String, String)> {
        Some((app.into(), pattern.into()))
    }

    #[test]
    fn exact_hosts_win_over_wildcards_and_longest_prefix_wins() {
        let t = RouteTable::build(&fleet(APPS), &[]);
        assert_eq!(
            route(&t, "blog.example.com", "/"),
            pair("blog", "blog.example.com")
        );
        assert_eq!(
            route(&t, "blog.example.com", "/api/users"),
            pair("api", "blog.example.com/api/")
        );
        assert_eq!(
            route(&t, "blog.example.com", "/apiary"),
            pair("blog", "blog.example.com")
        );
        assert_eq!(
            route(&t, "example.com", "/api?x=1"),
            pair("api", "example.com/api")
        );
        assert_eq!(route(&t, "example.com", "/"), pair("shop", "example.com"));
    }

    #[test]
    fn wildcards_match_names_below_never_the_name_itself() {
        let t = RouteTable::build(&fleet(APPS), &[]);
        assert_eq!(
            route(&t, "www.example.com", "/"),
            pair("blog", "*.example.com")
        );
        assert_eq!(
            route(&t, "a.b.example.com", "/"),
            pair("blog", "*.example.com")
        );
        // The longer wildcard wins.
        assert_eq!(
            route(&t, "eu.shop.example.com", "/"),
            pair("shop", "*.shop.example.com")
        );
        assert_eq!(
            route(&t, "shop.example.com", "/"),
            pair("blog", "*.example.com")
        );
        assert_eq!(route(&t, "example.org", "/"), None);
        assert_eq!(route(&t, "xexample.com", "/"), None);
    }

    #[test]
    fn host_header_forms_are_normalized() {
        let t = RouteTable::build(&fleet(APPS), &[]);
        for host in [
            "BLOG.example.com",
            "blog.example.com:8080",
            "blog.example.com.",
            "blog.example.com.:80",
        ] {
            assert_eq!(
                route(&t, host, "/"),
                pair("blog", "blog.example.com"),
                "{host}"
            );
        }
        assert_eq!(route(&t, "", "/"), None);
        assert_eq!(route(&t, ":80", "/"), None);
        assert_eq!(route(&t, "[::1]:80", "/"), None);
    }

    #[test]
    fn an_exact_host_whose_prefixes_miss_falls_back_to_wildcards() {
        let t = RouteTable::build(
            &fleet(
                r#"
[apps.api.services.web]
image = "api"
port = 1
hosts = ["a.example.com/api"]
[apps.www.services.web]
image = "www"
port = 1
hosts = ["*.example.com"]
"#,
            ),
            &[],
        );
        assert_eq!(
            route(&t, "a.example.com", "/api/x"),
            pair("api", "a.example.com/api")
        );
        assert_eq!(
            route(&t, "a.example.com", "/"),
            pair("www", "*.example.com")
        );
    }

    #[test]
    fn upstreams_go_to_their_own_service_with_its_body_limit() {
        let ups = [
            up("blog", "web", 1, 30001, true),
            up("blog", "web", 0, 30000, false),
            up("shop", "web", 0, 30002, true),
            up("shop", "queue", 0, 30003, true),
            up("gone", "web", 0, 30004, true),
        ];
        let t = RouteTable::build(&fleet(APPS), &ups);
        let blog = t.lookup("blog.example.com", "/").unwrap();
        assert_eq!(blog.upstreams, vec![ups[1].clone(), ups[0].clone()]);
        assert_eq!(blog.max_body, 1 << 20);
        let shop = t.lookup("example.com", "/").unwrap();
        assert_eq!(shop.upstreams, vec![ups[2].clone()]);
        let api = t.lookup("example.com", "/api").unwrap();
        assert!(api.upstreams.is_empty());
        assert_eq!(api.max_body, 50 << 20);
        // One route per hosts entry; the queue has none.
        assert_eq!(t.routes().len(), 6);
        assert!(t.conflicts().is_empty());
    }

    #[test]
    fn the_same_entry_twice_keeps_the_first_and_says_so() {
        let t = RouteTable::build(
            &fleet(
                r#"
[apps.a.services.web]
image = "a"
port = 1
hosts = ["x.com/api"]
[apps.b.services.web]
image = "b"
port = 1
hosts = ["X.com/api/"]
"#,
            ),
            &[],
        );
        assert_eq!(route(&t, "x.com", "/api"), pair("a", "x.com/api"));
        assert_eq!(t.conflicts().len(), 1);
        assert!(t.conflicts()[0].contains("apps.b.services.web"));
    }

    #[test]
    fn endpoints_bracket_ipv6() {
        let mut u = up("a", "web", 0, 8080, true);
        assert_eq!(u.endpoint(), "10.0.0.1:8080");
        u.address = "fd00::1".into();
        assert_eq!(u.endpoint(), "[fd00::1]:8080");
    }
}
