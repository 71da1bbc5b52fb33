//! Rules that span fields: names, references, duplicates, cycles and
//! whether a pod can fit on any node at all. Pure: reads the parsed fleet,
//! returns every problem found, not only the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::diagnostic::{Diagnostic, FieldPath, nearest};
use super::schema::{App, EbsType, Fleet, Health, Provider, Service, VolumeKind};
use super::units::{Bytes, Millicores};

/// Docker refuses memory limits under 6 MiB.
const MIN_MEMORY: Bytes = Bytes(6 << 20);
/// The proxy's bounds on `max_header_size`.
const MIN_HEADER_SIZE: Bytes = Bytes(8 << 10);
const MAX_HEADER_SIZE: Bytes = Bytes(1 << 20);

/// What is worth a warning in a fleet that passed [`validate`].
pub fn warnings(fleet: &Fleet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if let Some(net) = fleet.network.as_ref()
        && let Some(cidr) = net.net()
    {
        for (pool, what) in DOCKER_POOLS {
            let pool: ipnet::Ipv4Net = match pool.parse() {
                Ok(p) => p,
                Err(_) => continue,
            };
            if pool.contains(&cidr.network()) || cidr.contains(&pool.network()) {
                out.push(
                    Diagnostic::new(
                        FieldPath::of(["network", "cidr"]),
                        format!("{} overlaps {pool}, {what}", net.cidr),
                    )
                    .with_help("containers could not reach addresses there; the default 10.210.0.0/16 is clear of them")
                    .warning(),
                );
            }
        }
    }
    out
}

/// Address ranges a mesh should stay clear of.
const DOCKER_POOLS: [(&str, &str); 3] = [
    (
        "172.17.0.0/16",
        "where Docker's default bridge lives on every node",
    ),
    (
        "172.16.0.0/12",
        "which Docker's default address pools take networks from (and the lab's 172.31.250.0/24)",
    ),
    (
        "192.168.0.0/16",
        "which Docker's default address pools take networks from",
    ),
];

pub fn validate(fleet: &Fleet) -> Vec<Diagnostic> {
    let mut v = Checker::default();
    v.fleet_section(fleet);
    v.discovery(fleet);
    v.ssh(fleet);
    v.proxy(fleet);
    v.lifecycle(fleet);
    v.network(fleet);
    v.api(fleet);
    v.registries(fleet);
    for (name, app) in &fleet.apps {
        v.app(name, app);
        v.app_volumes(name, app, fleet.discovery.provider);
    }
    v.duplicate_hosts(fleet);
    v.capacity(fleet);
    v.problems
}

/// Pods of one app at most: far beyond a fleet Prism is for, and a bound
/// on what one line of fleet.toml can make the planner do.
pub const MAX_INSTANCES: u32 = 1000;

#[derive(Default)]
struct Checker {
    problems: Vec<Diagnostic>,
}

impl Checker {
    fn err(&mut self, path: FieldPath, message: impl Into<String>) {
        self.problems.push(Diagnostic::new(path, message));
    }

    fn err_help(&mut self, path: FieldPath, message: impl Into<String>, help: impl Into<String>) {
        self.problems
            .push(Diagnostic::new(path, message).with_help(help));
    }

    fn fleet_section(&mut self, fleet: &Fleet) {
        let name = &fleet.fleet.name;
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            self.err(
                FieldPath::of(["fleet", "name"]),
                format!("{name:?} is not a usable fleet name: use 1 to 63 letters, digits, '-', '_' or '.'"),
            );
        }
    }

    fn discovery(&mut self, fleet: &Fleet) {
        let d = &fleet.discovery;
        let at = FieldPath::of(["discovery"]);
        match d.provider {
            Provider::Ec2 => {
                if !d.nodes.is_empty() {
                    self.err_help(
                        at.key("nodes"),
                        "nodes only apply to provider = \"static\"",
                        "EC2 instances are found by their tags; remove the list or set provider = \"static\"",
                    );
                }
                if let Some(endpoint) = &d.endpoint
                    && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                {
                    self.err(
                        at.key("endpoint"),
                        format!("expected an http:// or https:// URL, found {endpoint:?}"),
                    );
                }
                if let Some(tags) = &d.tags {
                    if tags.is_empty() {
                        self.err(
                            at.key("tags"),
                            "an empty tag filter would match every instance in the account",
                        );
                    }
                    for key in tags.keys().filter(|k| k.trim().is_empty()) {
                        self.problems.push(
                            Diagnostic::new(
                                at.key("tags").key(key.as_str()),
                                "tag keys cannot be empty",
                            )
                            .at_key(),
                        );
                    }
                }
            }
            Provider::Static => {
                let ec2_only = [
                    ("region", d.region.is_some()),
                    ("endpoint", d.endpoint.is_some()),
                    ("profile", d.profile.is_some()),
                    ("tags", d.tags.is_some()),
                    ("address", d.address.is_some()),
                ];
                for (key, set) in ec2_only {
                    if set {
                        self.err(
                            at.key(key),
                            format!("{key} only applies to provider = \"ec2\""),
                        );
                    }
                }
                if d.nodes.is_empty() {
                    self.err_help(
                        at.key("provider"),
                        "provider = \"static\" needs at least one node",
                        "add [[discovery.nodes]] tables with name and address",
                    );
                }
                let mut names = BTreeSet::new();
                let mut addresses = BTreeSet::new();
                for (i, node) in d.nodes.iter().enumerate() {
                    let here = at.key("nodes").index(i);
                    if !is_dns_label(&node.name) {
                        self.err(here.key("name"), name_rule("node", &node.name));
                    }
                    if !names.insert(node.name.as_str()) {
                        self.err(
                            here.key("name"),
                            format!("node name {:?} is used twice", node.name),
                        );
                    }
                    if node.address.trim().is_empty() || node.address.contains(char::is_whitespace)
                    {
                        self.err(
                            here.key("address"),
                            format!("{:?} is not a host name or IP address", node.address),
                        );
                    }
                    if !addresses.insert(node.address.as_str()) {
                        self.err(
                            here.key("address"),
                            format!("address {:?} is listed twice", node.address),
                        );
                    }
                    if node.port == Some(0) {
                        self.err(here.key("port"), "port must be between 1 and 65535");
                    }
                }
            }
        }
    }

    fn ssh(&mut self, fleet: &Fleet) {
        let ssh = &fleet.ssh;
        if ssh.user.trim().is_empty() {
            self.err(FieldPath::of(["ssh", "user"]), "user cannot be empty");
        }
        if ssh.port == 0 {
            self.err(
                FieldPath::of(["ssh", "port"]),
                "port must be between 1 and 65535",
            );
        }
        if ssh.known_hosts.is_some() && ssh.host_keys == super::schema::HostKeyPolicy::Pin {
            self.err_help(
                FieldPath::of(["ssh", "known_hosts"]),
                "known_hosts is only read when host_keys = \"known_hosts\"",
                "set host_keys = \"known_hosts\" to check keys against this file",
            );
        }
    }

    fn proxy(&mut self, fleet: &Fleet) {
        let p = &fleet.proxy;
        if let Err(e) = p.listen.parse::<SocketAddr>() {
            self.err(
                FieldPath::of(["proxy", "listen"]),
                format!(
                    "expected an address and port such as \"0.0.0.0:80\", found {:?} ({e})",
                    p.listen
                ),
            );
        }
        match p.admin.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_loopback() => self.err(
                FieldPath::of(["proxy", "admin"]),
                format!("the admin listener must be on loopback (127.0.0.1 or ::1), found {addr}"),
            ),
            Ok(_) => {}
            Err(e) => self.err(
                FieldPath::of(["proxy", "admin"]),
                format!(
                    "expected an address and port such as \"127.0.0.1:9090\", found {:?} ({e})",
                    p.admin
                ),
            ),
        }
        let at = FieldPath::of(["proxy"]);
        // hyper needs room for at least 8K of head; past 1M a head is abuse.
        if !(MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&p.max_header_size) {
            self.err(
                at.key("max_header_size"),
                format!(
                    "max_header_size must be between {MIN_HEADER_SIZE} and {MAX_HEADER_SIZE}, found {}",
                    p.max_header_size
                ),
            );
        }
        if let Some(n) = p.workers
            && !(1..=256).contains(&n)
        {
            self.err_help(
                at.key("workers"),
                format!("workers must be between 1 and 256, found {n}"),
                "leave it out for one per CPU",
            );
        }
        if p.max_connections == 0 {
            self.err_help(
                at.key("max_connections"),
                "max_connections must be at least 1",
                "the default is 4096",
            );
        }
        for (i, t) in p.trusted_proxies.iter().enumerate() {
            if super::schema::trusted_net(t).is_none() {
                self.err_help(
                    at.key("trusted_proxies").index(i),
                    format!("{t:?} is not an address or network"),
                    "write an address (10.0.0.5) or a network (10.0.0.0/16, fd00::/8)",
                );
            }
        }
        let api_tls = fleet.api.as_ref().is_some_and(|a| a.host.is_some());
        self.tls(p, api_tls);
    }

    /// `https`, `certificates` and `acme` in [proxy]: only what can be said
    /// without reading the files (the proxy reads them when it starts).
    /// `api_tls`: the API serves HTTPS with the same certificates.
    fn tls(&mut self, p: &super::schema::Proxy, api_tls: bool) {
        let at = FieldPath::of(["proxy"]);
        match &p.https {
            Some(https) => match https.parse::<SocketAddr>() {
                Ok(addr) if p.listen.parse::<SocketAddr>().is_ok_and(|l| l == addr) => self.err(
                    at.key("https"),
                    format!("https and listen are both {addr}: give HTTPS a port of its own"),
                ),
                Ok(_) if p.certificates.is_empty() && p.acme.is_none() => self.err_help(
                    at.key("https"),
                    "HTTPS needs certificates: none are listed and acme is not set",
                    "add [[proxy.certificates]] with cert and key files, or [proxy.acme]",
                ),
                Ok(_) => {}
                Err(e) => self.err(
                    at.key("https"),
                    format!("expected an address and port such as \"0.0.0.0:443\", found {https:?} ({e})"),
                ),
            },
            None if api_tls => {}
            None => {
                let unused = if !p.certificates.is_empty() {
                    Some(("certificates", "certificates are"))
                } else if p.acme.is_some() {
                    Some(("acme", "acme is"))
                } else {
                    None
                };
                if let Some((key, what)) = unused {
                    self.err_help(
                        at.key(key),
                        format!("{what} only used by the HTTPS listener and the API, and neither is set"),
                        "set https = \"0.0.0.0:443\" in [proxy], or host in [api]",
                    );
                }
            }
        }
        for (i, c) in p.certificates.iter().enumerate() {
            let cat = at.key("certificates").index(i);
            for (key, path) in [("cert", &c.cert), ("key", &c.key)] {
                if path.as_os_str().is_empty() {
                    self.err(cat.key(key), format!("{key} must name a PEM file"));
                }
            }
            if !c.cert.as_os_str().is_empty() && c.cert == c.key {
                self.err_help(
                    cat.key("key"),
                    "cert and key are the same file",
                    "keep the private key in a file of its own, readable only by the operator",
                );
            }
        }
        if let Some(acme) = &p.acme {
            let aat = at.key("acme");
            if !acme.directory.starts_with("https://") || acme.directory.len() <= "https://".len() {
                self.err(
                    aat.key("directory"),
                    format!(
                        "expected the CA's directory URL over https, such as \"https://acme-v02.api.letsencrypt.org/directory\", found {:?}",
                        acme.directory
                    ),
                );
            }
            if !is_email(&acme.email) {
                self.err(
                    aat.key("email"),
                    format!(
                        "expected an email address such as \"ops@example.com\", found {:?}",
                        acme.email
                    ),
                );
            }
            if acme.ca.as_ref().is_some_and(|ca| ca.as_os_str().is_empty()) {
                self.err(aat.key("ca"), "ca must name a PEM file");
            }
        }
    }

    fn lifecycle(&mut self, fleet: &Fleet) {
        let l = &fleet.lifecycle;
        let at = FieldPath::of(["lifecycle"]);
        // A blip must never fence: well past a few missed probes.
        if l.fence_after.0 < std::time::Duration::from_secs(10) {
            self.err_help(
                at.key("fence_after"),
                format!(
                    "fence_after must be at least 10s, found {}",
                    humantime::format_duration(l.fence_after.0)
                ),
                "the default is 60s; a node silent for less is not yet provably gone",
            );
        }
        if l.zone_wait.0 < std::time::Duration::from_secs(10) {
            self.err_help(
                at.key("zone_wait"),
                format!(
                    "zone_wait must be at least 10s, found {}",
                    humantime::format_duration(l.zone_wait.0)
                ),
                "the default is 5m: a zone that loses its nodes for a moment keeps its volumes",
            );
        }
        if !(1..=100).contains(&l.lost_after) {
            self.err_help(
                at.key("lost_after"),
                format!(
                    "lost_after must be between 1 and 100 missed probes, found {}",
                    l.lost_after
                ),
                "the default is 2",
            );
        }
        if l.probe_timeout.0 > std::time::Duration::from_secs(60) {
            self.err_help(
                at.key("probe_timeout"),
                format!(
                    "probe_timeout must be at most 1m, found {}",
                    humantime::format_duration(l.probe_timeout.0)
                ),
                "a node that takes longer to answer cannot be told from a dead one in time; the default is 2s",
            );
        }
        if let Some(url) = &l.metadata_url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            let host_ok = rest.is_some_and(|r| {
                let host = r.split('/').next().unwrap_or("");
                !host.is_empty() && !r.chars().any(|c| c.is_whitespace() || c.is_control())
            });
            if !host_ok {
                self.err_help(
                    at.key("metadata_url"),
                    format!("expected an http:// URL with a host, found {url:?}"),
                    format!("EC2's is {:?}", super::schema::EC2_METADATA_URL),
                );
            }
        }
    }

    fn network(&mut self, fleet: &Fleet) {
        let Some(net) = &fleet.network else { return };
        let at = FieldPath::of(["network"]);
        match net.cidr.parse::<ipnet::Ipv4Net>() {
            Err(_) => self.err_help(
                at.key("cidr"),
                format!("{:?} is not an IPv4 network", net.cidr),
                "write it as ADDRESS/PREFIX, e.g. 10.210.0.0/16",
            ),
            Ok(cidr) if !(8..=22).contains(&cidr.prefix_len()) => self.err_help(
                at.key("cidr"),
                format!(
                    "a /{} does not fit a mesh: it needs a /24 for the operator and one per node",
                    cidr.prefix_len()
                ),
                "use a prefix from /8 to /22 (/16: the operator and 255 nodes)",
            ),
            Ok(cidr) if cidr.trunc() != cidr => self.err_help(
                at.key("cidr"),
                format!("{} has bits set past its prefix", net.cidr),
                format!("did you mean {}?", cidr.trunc()),
            ),
            Ok(_) => {}
        }
        if net.port == 0 {
            self.err(at.key("port"), "port must be a UDP port from 1 to 65535");
        }
        if let Err(why) = domain_ok(&net.domain) {
            self.err_help(
                at.key("domain"),
                format!("{:?} is not a usable domain: {why}", net.domain),
                "names are SERVICE.APP.DOMAIN; the default is \"internal\"",
            );
        }
        let iface_ok = (1..=15).contains(&net.interface.len())
            && net
                .interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !iface_ok {
            self.err(
                at.key("interface"),
                format!(
                    "{:?} is not a usable interface name: use 1 to 15 letters, digits, '-' or '_'",
                    net.interface
                ),
            );
        }
    }

    /// `[api]`: HTTPS unless it is plain HTTP on loopback, with a
    /// certificate source for its host.
    fn api(&mut self, fleet: &Fleet) {
        let Some(api) = &fleet.api else { return };
        let at = FieldPath::of(["api"]);
        let addr = match api.listen.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                self.err(
                    at.key("listen"),
                    format!(
                        "expected an address and port such as \"0.0.0.0:9443\", found {:?} ({e})",
                        api.listen
                    ),
                );
                None
            }
        };
        let p = &fleet.proxy;
        let taken = [
            Some(p.listen.as_str()),
            p.https.as_deref(),
            Some(p.admin.as_str()),
        ];
        if let Some(addr) = addr
            && taken
                .iter()
                .flatten()
                .any(|t| t.parse::<SocketAddr>().is_ok_and(|t| t == addr))
        {
            self.err(
                at.key("listen"),
                format!(
                    "{addr} is already one of [proxy]'s listeners: give the API a port of its own"
                ),
            );
        }
        match &api.host {
            None if addr.is_some_and(|a| !a.ip().is_loopback()) => self.err_help(
                at.key("host"),
                "the API answers beyond this machine only over HTTPS, and HTTPS needs the name clients use",
                "set host = \"prism.example.com\" (its certificate from [[proxy.certificates]] or [proxy.acme]), or listen on 127.0.0.1",
            ),
            None => {}
            Some(host) => {
                if let Err(why) = domain_ok(host) {
                    self.err(
                        at.key("host"),
                        format!("{host:?} is not a usable host name: {why}"),
                    );
                }
                if p.certificates.is_empty() && p.acme.is_none() {
                    self.err_help(
                        at.key("host"),
                        "HTTPS needs certificates: none are listed and acme is not set",
                        "add [[proxy.certificates]] with cert and key files covering the host, or [proxy.acme]",
                    );
                }
            }
        }
    }

    fn registries(&mut self, fleet: &Fleet) {
        for (host, reg) in &fleet.registries {
            let at = FieldPath::of(["registries"]).key(host.as_str());
            match (&reg.password_env, &reg.password_file) {
                (Some(_), Some(_)) => self.err(at.key("password_file"), "set password_env or password_file, not both"),
                (None, None) => self.err_help(
                    at,
                    "a registry needs password_env or password_file",
                    "passwords are never written in fleet.toml: name an environment variable or a file",
                ),
                _ => {}
            }
        }
    }

    fn app(&mut self, name: &str, app: &App) {
        let at = FieldPath::of(["apps", name]);
        if !is_dns_label(name) {
            self.err(at.clone(), name_rule("app", name));
        }
        if app.services.is_empty() && app.jobs.is_empty() {
            self.err_help(
                at.clone(),
                "the app has no services and no jobs",
                format!("add a [apps.{name}.services.NAME] table"),
            );
        }
        if app.instances > MAX_INSTANCES {
            self.err(
                at.key("instances"),
                format!(
                    "instances must be at most {MAX_INSTANCES}, found {}",
                    app.instances
                ),
            );
        }
        for (svc_name, svc) in &app.services {
            self.service(
                &at.key("services").key(svc_name.as_str()),
                (name, svc_name),
                svc,
                app,
            );
        }
        self.depends_on_cycles(&at, app);
        for (job_name, job) in &app.jobs {
            let jat = at.key("jobs").key(job_name.as_str());
            if !is_dns_label(job_name) {
                self.err(jat.clone(), name_rule("job", job_name));
            }
            match (&job.service, &job.image) {
                (Some(_), Some(_)) => self.err(jat.key("image"), "set service or image, not both"),
                (None, None) => self.err_help(
                    jat.clone(),
                    "a job needs service or image",
                    "service = \"web\" runs it in that service's image with its env",
                ),
                (Some(svc), None) if !app.services.contains_key(svc) => {
                    let msg = format!("no service {svc:?} in app {name:?}");
                    match nearest(svc, app.services.keys().map(String::as_str)) {
                        Some(near) => self.err_help(
                            jat.key("service"),
                            msg,
                            format!("did you mean `{near}`?"),
                        ),
                        None => self.err(jat.key("service"), msg),
                    }
                }
                _ => {}
            }
            if let Some(image) = &job.image {
                self.image(&jat.key("image"), image);
            }
            if job.command.is_empty() {
                self.err(jat.key("command"), "command cannot be empty");
            }
            self.env_keys(&jat.key("env"), job.env.keys());
            if let Some(mem) = job.memory
                && mem < MIN_MEMORY
            {
                self.err(
                    jat.key("memory"),
                    format!("{mem} is below Docker's minimum of {MIN_MEMORY}"),
                );
            }
        }
    }

    fn image(&mut self, at: &FieldPath, image: &str) {
        if image.trim().is_empty() || image.contains(char::is_whitespace) {
            self.err(
                at.clone(),
                format!(
                    "{image:?} is not an image reference such as \"registry.example.com/blog:1.4\""
                ),
            );
        }
    }

    fn env_keys<'a>(&mut self, at: &FieldPath, keys: impl Iterator<Item = &'a String>) {
        for key in keys {
            let mut chars = key.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                self.problems.push(
                    Diagnostic::new(
                        at.key(key.as_str()),
                        format!(
                            "{key:?} is not a valid environment variable name: use letters, digits and '_', not starting with a digit"
                        ),
                    )
                    .at_key(),
                );
            }
        }
    }

    fn service(
        &mut self,
        at: &FieldPath,
        (app_name, name): (&str, &str),
        svc: &Service,
        app: &App,
    ) {
        if !is_dns_label(name) {
            self.err(at.clone(), name_rule("service", name));
        }
        self.image(&at.key("image"), &svc.image);
        if svc.command.as_ref().is_some_and(Vec::is_empty) {
            self.err(
                at.key("command"),
                "command cannot be empty; leave it out to use the image's own",
            );
        }
        self.env_keys(&at.key("env"), svc.env.keys());
        self.env_keys(&at.key("secrets"), svc.secrets.keys());
        if svc.logs.max_size.0 == 0 {
            self.err(
                at.key("logs").key("max_size"),
                "logs.max_size must be more than 0",
            );
        }
        if svc.logs.max_files == 0 {
            self.err_help(
                at.key("logs").key("max_files"),
                "logs.max_files must be at least 1",
                "the default is 3 files of 10M each",
            );
        }
        for (key, src) in &svc.secrets {
            let sat = at.key("secrets").key(key.as_str());
            match (&src.env, &src.file) {
                (Some(_), Some(_)) => self.err(sat, "set env or file, not both"),
                (None, None) => self.err_help(
                    sat,
                    "a secret needs env or file",
                    "e.g. { env = \"BLOG_APP_KEY\" } reads it from the operator's environment",
                ),
                _ => {}
            }
            if svc.env.contains_key(key) {
                self.err(
                    at.key("env").key(key.as_str()),
                    format!("{key} is set both in env and in secrets"),
                );
            }
        }
        if svc.port == Some(0) {
            self.err(at.key("port"), "port must be between 1 and 65535");
        }
        if !svc.hosts.is_empty() && svc.port.is_none() {
            self.err_help(
                at.key("hosts"),
                "hosts need a port to route to",
                "set port = the port the service listens on",
            );
        }
        for (i, host) in svc.hosts.iter().enumerate() {
            if let Err(e) = check_host(host) {
                self.err(at.key("hosts").index(i), e);
            }
        }
        if svc.max_body.is_some() && svc.hosts.is_empty() {
            self.err_help(
                at.key("max_body"),
                "max_body only applies to a service the proxy routes to",
                "add hosts, or remove max_body",
            );
        }
        if svc.memory < MIN_MEMORY {
            self.err(
                at.key("memory"),
                format!("{} is below Docker's minimum of {MIN_MEMORY}", svc.memory),
            );
        }
        if let Some(h) = &svc.health {
            self.health(&at.key("health"), svc, h, app);
        }
        for (i, dep) in svc.depends_on.iter().enumerate() {
            let dat = at.key("depends_on").index(i);
            if dep == name {
                self.err(dat, format!("{name} cannot depend on itself"));
            } else if !app.services.contains_key(dep) {
                let msg = format!("no service {dep:?} in this app");
                match nearest(dep, app.services.keys().map(String::as_str)) {
                    Some(near) => self.err_help(dat, msg, format!("did you mean `{near}`?")),
                    None => self.err(dat, msg),
                }
            }
        }
        let mut targets = BTreeSet::new();
        for (i, vol) in svc.volumes.iter().enumerate() {
            let vat = at.key("volumes").index(i);
            let mount = match Mount::parse(vol) {
                Ok(m) => m,
                Err(e) => {
                    self.err(vat, e);
                    continue;
                }
            };
            if !targets.insert(mount.target) {
                self.err(
                    vat.clone(),
                    format!("two volumes are mounted at {}", mount.target),
                );
            }
            if let MountSource::Volume(vname) = mount.source
                && !app.volumes.contains_key(vname)
            {
                let msg = format!("no volume {vname:?} in this app");
                let near = nearest(vname, app.volumes.keys().map(String::as_str));
                let help = match near {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!(
                        "declare it: [apps.{app_name}.volumes.{vname}] with kind = \"local\" (a Docker volume on the node), or kind = \"durable\" and a size (an EBS volume that follows the pod)"
                    ),
                };
                self.err_help(vat, msg, help);
            }
        }
    }

    /// `[apps.APP.volumes.NAME]`: names, kinds and the EBS settings.
    fn app_volumes(&mut self, app_name: &str, app: &App, provider: Provider) {
        let at = FieldPath::of(["apps", app_name, "volumes"]);
        for (name, vol) in &app.volumes {
            let vat = at.key(name.as_str());
            if !is_dns_label(name) {
                self.err(vat.clone(), name_rule("volume", name));
            }
            let kind = vol.kind_for(provider);
            if kind == VolumeKind::Local {
                let durable_only = [
                    ("size", vol.size.is_some()),
                    ("iops", vol.iops.is_some()),
                    ("throughput", vol.throughput.is_some()),
                    ("snapshots", vol.snapshots.is_some()),
                    ("from_snapshot", vol.from_snapshot.is_some()),
                ];
                for (key, set) in durable_only {
                    if set {
                        self.err_help(
                            vat.key(key),
                            format!("{key} only applies to durable volumes"),
                            "a local volume is a Docker volume on the node, as large as its disk",
                        );
                    }
                }
                continue;
            }
            if provider == Provider::Static {
                self.err_help(
                    vat.key("kind"),
                    "durable volumes need EC2 discovery: they are EBS volumes",
                    "use kind = \"local\" (a Docker volume on the node, lost with it)",
                );
            }
            match vol.size {
                None => self.err_help(
                    vat.clone(),
                    "a durable volume needs a size",
                    "e.g. size = \"10G\"",
                ),
                Some(size) if size.0 < 1 << 30 || size.0 > 16 << 40 => self.err(
                    vat.key("size"),
                    format!("an EBS volume is 1G to 16T, found {size}"),
                ),
                Some(_) => {}
            }
            let t = vol.ebs_type;
            if let Some(iops) = vol.iops {
                let range = match t {
                    EbsType::Gp3 => Some(3000..=16000),
                    EbsType::Io1 => Some(100..=64000),
                    EbsType::Io2 => Some(100..=256000),
                    _ => None,
                };
                match range {
                    None => self.err(
                        vat.key("iops"),
                        format!("iops only applies to gp3, io1 and io2, not {}", t.as_str()),
                    ),
                    Some(r) if !r.contains(&iops) => self.err(
                        vat.key("iops"),
                        format!(
                            "{} takes {} to {} iops, found {iops}",
                            t.as_str(),
                            r.start(),
                            r.end()
                        ),
                    ),
                    Some(_) => {}
                }
            } else if matches!(t, EbsType::Io1 | EbsType::Io2) {
                self.err(
                    vat.key("type"),
                    format!("type = \"{}\" needs iops", t.as_str()),
                );
            }
            if let Some(tp) = vol.throughput {
                if t != EbsType::Gp3 {
                    self.err(
                        vat.key("throughput"),
                        format!("throughput only applies to gp3, not {}", t.as_str()),
                    );
                } else if !(125..=1000).contains(&tp) {
                    self.err(
                        vat.key("throughput"),
                        format!("gp3 takes 125 to 1000 MiB/s of throughput, found {tp}"),
                    );
                }
            }
            if let Some(snap) = &vol.snapshots
                && !(1..=1000).contains(&snap.keep)
            {
                self.err_help(
                    vat.key("snapshots").key("keep"),
                    format!(
                        "keep must be between 1 and 1000 snapshots, found {}",
                        snap.keep
                    ),
                    "the newest `keep` of the schedule's snapshots are kept, older ones deleted",
                );
            }
            if let Some(id) = &vol.from_snapshot
                && !is_aws_id(id, "snap-")
            {
                self.err(
                    vat.key("from_snapshot"),
                    format!(
                        "expected a snapshot id such as \"snap-0123456789abcdef0\", found {id:?}"
                    ),
                );
            }
        }
    }

    fn health(&mut self, at: &FieldPath, svc: &Service, h: &Health, app: &App) {
        let kinds = [h.http.is_some(), h.tcp.is_some(), h.cmd.is_some()];
        match kinds.iter().filter(|k| **k).count() {
            0 => self.err_help(
                at.clone(),
                "a health check needs one of http, tcp or cmd",
                "e.g. health = { http = \"/up\" }",
            ),
            1 => {}
            _ => self.err(at.clone(), "set only one of http, tcp or cmd"),
        }
        let exposed: BTreeSet<u16> = app.services.values().filter_map(|s| s.port).collect();
        if let Some(path) = &h.http {
            if !path.starts_with('/') {
                self.err(
                    at.key("http"),
                    format!("expected a path starting with '/', found {path:?}"),
                );
            }
            match h.port.or(svc.port) {
                None => self.err_help(
                    at.key("http"),
                    "an http health check needs a port",
                    "set port on the service or health.port",
                ),
                Some(port) if h.port.is_some() && !exposed.contains(&port) => {
                    self.err(
                        at.key("port"),
                        format!("no service of this app exposes port {port}"),
                    );
                }
                Some(_) => {}
            }
        } else if h.port.is_some() {
            self.err(
                at.key("port"),
                "port only applies to http checks; tcp names its own port",
            );
        }
        if let Some(port) = h.tcp
            && !exposed.contains(&port)
        {
            self.err(
                at.key("tcp"),
                format!("no service of this app exposes port {port}"),
            );
        }
        if h.cmd.as_ref().is_some_and(Vec::is_empty) {
            self.err(at.key("cmd"), "cmd cannot be empty");
        }
        if let Some(timeout) = h.timeout
            && timeout > h.interval
        {
            self.err(
                at.key("timeout"),
                format!(
                    "timeout ({timeout}) is longer than interval ({}); checks would overlap",
                    h.interval
                ),
            );
        }
        for (key, n) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if n == 0 {
                self.err(at.key(key), "must be at least 1");
            }
        }
    }

    fn depends_on_cycles(&mut self, at: &FieldPath, app: &App) {
        // Depth-first search; a back edge is a cycle, reported once at the
        // service where it closes.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        fn visit<'a>(
            name: &'a str,
            app: &'a App,
            marks: &mut BTreeMap<&'a str, Mark>,
            stack: &mut Vec<&'a str>,
            cycles: &mut Vec<Vec<&'a str>>,
        ) {
            marks.insert(name, Mark::Active);
            stack.push(name);
            if let Some(svc) = app.services.get(name) {
                for dep in &svc.depends_on {
                    let Some((key, _)) = app.services.get_key_value(dep) else {
                        continue;
                    };
                    match marks.get(key.as_str()).copied().unwrap_or(Mark::New) {
                        Mark::New => visit(key, app, marks, stack, cycles),
                        Mark::Active if key != name => {
                            let from = stack.iter().position(|s| *s == key).unwrap_or(0);
                            let mut cycle = stack[from..].to_vec();
                            cycle.push(key);
                            cycles.push(cycle);
                        }
                        _ => {}
                    }
                }
            }
            stack.pop();
            marks.insert(name, Mark::Done);
        }
        let mut marks = BTreeMap::new();
        let mut cycles = Vec::new();
        for name in app.services.keys() {
            if marks.get(name.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
                visit(name, app, &mut marks, &mut Vec::new(), &mut cycles);
            }
        }
        for cycle in cycles {
            let first = cycle[0];
            self.err(
                at.key("services").key(first).key("depends_on"),
                format!("depends_on forms a cycle: {}", cycle.join(" -> ")),
            );
        }
    }

    fn duplicate_hosts(&mut self, fleet: &Fleet) {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (app_name, app) in &fleet.apps {
            for (svc_name, svc) in &app.services {
                for (i, host) in svc.hosts.iter().enumerate() {
                    let owner = format!("apps.{app_name}.services.{svc_name}");
                    let key = host.to_ascii_lowercase();
                    if let Some(first) = seen.get(&key) {
                        self.err(
                            FieldPath::of(["apps", app_name, "services", svc_name, "hosts"])
                                .index(i),
                            format!("host {host:?} is already routed to {first}"),
                        );
                    } else {
                        seen.insert(key, owner);
                    }
                }
            }
        }
    }

    /// A pod runs on one node, so the sum of its services must fit the
    /// largest node there can be, less the reserve.
    fn capacity(&mut self, fleet: &Fleet) {
        let d = &fleet.discovery;
        let largest_memory = match d.provider {
            Provider::Static => d
                .nodes
                .iter()
                .filter_map(|n| n.memory.or(d.node_memory))
                .max(),
            Provider::Ec2 => d.node_memory,
        };
        let largest_cpu = match d.provider {
            Provider::Static => d.nodes.iter().filter_map(|n| n.cpus.or(d.node_cpus)).max(),
            Provider::Ec2 => d.node_cpus,
        };
        let reserve_mem = fleet.fleet.reserve_memory;
        let reserve_cpu = fleet.fleet.reserve_cpu;
        for (name, app) in &fleet.apps {
            let need = app
                .services
                .values()
                .map(|s| s.memory.0)
                .fold(0, u64::saturating_add);
            if let Some(node) = largest_memory {
                let room = Bytes(node.0.saturating_sub(reserve_mem.0));
                if need > room.0 {
                    let parts: Vec<String> = app
                        .services
                        .iter()
                        .map(|(n, s)| format!("{n} {}", s.memory))
                        .collect();
                    self.err_help(
                        FieldPath::of(["apps", name]),
                        format!(
                            "one instance needs {} of memory ({}), but no node can hold more than {room} ({node} less the {reserve_mem} reserve)",
                            Bytes(need),
                            parts.join(" + "),
                        ),
                        "lower the services' memory, or use larger nodes",
                    );
                }
            }
            let need_cpu = app
                .services
                .values()
                .filter_map(|s| s.cpu)
                .map(|c| c.0)
                .fold(0, u64::saturating_add);
            if let Some(node) = largest_cpu {
                let room = Millicores(node.0.saturating_sub(reserve_cpu.0));
                if need_cpu > room.0 {
                    self.err(
                        FieldPath::of(["apps", name]),
                        format!("one instance needs {} CPU, but no node can give more than {room} ({node} less the {reserve_cpu} reserve)", Millicores(need_cpu)),
                    );
                }
            }
        }
    }
}

fn name_rule(what: &str, name: &str) -> String {
    format!(
        "{name:?} is not a usable {what} name: use 1 to 40 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
    )
}

/// Names that end up in container names and DNS on the app's network.
fn is_dns_label(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && s.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.ends_with('-')
}

/// The mesh's domain: lowercase DNS labels joined by dots, short enough
/// that `INSTANCE.SERVICE.APP.DOMAIN` stays a valid name.
fn domain_ok(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() || domain.len() > 120 {
        return Err("use 1 to 120 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if domain.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(
            "use lowercase labels of letters, digits and '-' joined by '.', with no leading or trailing dot",
        )
    }
}

/// `example.com`, `*.example.com`, optionally followed by a path prefix.
fn check_host(host: &str) -> Result<(), String> {
    let (name, path) = match host.find('/') {
        Some(i) => host.split_at(i),
        None => (host, ""),
    };
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let labels_ok = !bare.is_empty()
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !labels_ok || name.contains(':') {
        return Err(format!(
            "{host:?} is not a host name such as \"blog.example.com\" or \"*.example.com\" (no scheme or port)"
        ));
    }
    if path.contains(char::is_whitespace) {
        return Err(format!("the path in {host:?} cannot contain spaces"));
    }
    Ok(())
}

/// A plausible contact address: one `@` with something on both sides and
/// a dot in the domain. The CA is the judge of the rest.
fn is_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((user, domain)) => {
            !user.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !text.contains(|c: char| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// Where a service's mount comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountSource<'a> {
    /// A volume of the app, by name.
    Volume(&'a str),
    /// A path on the node.
    Host(&'a str),
}

/// One entry of a service's `volumes`: `NAME:/path` or `/host/path:/path`,
/// with an optional `:ro` or `:rw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount<'a> {
    pub source: MountSource<'a>,
    pub target: &'a str,
    pub read_only: bool,
}

impl<'a> Mount<'a> {
    pub fn parse(vol: &'a str) -> Result<Mount<'a>, String> {
        let parts: Vec<&str> = vol.split(':').collect();
        let (src, target, read_only) = match parts.as_slice() {
            [src, dst] | [src, dst, "rw"] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            _ => {
                return Err(format!(
                    "expected \"name:/path\" or \"/host/path:/path\" (optionally \":ro\"), found {vol:?}"
                ));
            }
        };
        if !target.starts_with('/') {
            return Err(format!("the container path in {vol:?} must be absolute"));
        }
        // Docker's --mount reads its value as comma-separated fields.
        if target.contains([',', '"', '=']) || target.contains(char::is_whitespace) {
            return Err(format!(
                "the container path in {vol:?} cannot hold ',', '=', '\"' or spaces"
            ));
        }
        if src.starts_with('/') {
            return Ok(Mount {
                source: MountSource::Host(src),
                target,
                read_only,
            });
        }
        if !is_dns_label(src) {
            return Err(format!(
                "the source in {vol:?} must be a volume of the app (letters, digits and '-') or an absolute host path"
            ));
        }
        Ok(Mount {
            source: MountSource::Volume(src),
            target,
            read_only,
        })
    }
}

/// `snap-` or `vol-` and 8 or 17 hex digits, as EC2 makes them.
fn is_aws_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_challenge_defaults_to_http_01() {
        use super::super::schema::AcmeChallenge;
        let fleet = |acme: &str| {
            let text = format!(
                "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n[proxy]\nhttps = \"0.0.0.0:443\"\nacme = {{ directory = \"https://ca.test/dir\", email = \"ops@example.com\"{acme} }}\n"
            );
            super::super::parse(std::path::Path::new("fleet.toml"), &text)
        };
        let challenge = |acme: &str| fleet(acme).unwrap().proxy.acme.unwrap().challenge;
        assert_eq!(challenge(""), AcmeChallenge::Http01);
        assert_eq!(
            challenge(", challenge = \"http-01\""),
            AcmeChallenge::Http01
        );
        assert_eq!(
            challenge(", challenge = \"tls-alpn-01\""),
            AcmeChallenge::TlsAlpn01
        );
        for bad in ["TLS-ALPN-01", "dns-01", "tls_alpn_01"] {
            let err = fleet(&format!(", challenge = \"{bad}\"")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("proxy.acme.challenge"), "{bad}: {text}");
            assert!(text.contains("`tls-alpn-01`"), "{bad}: {text}");
        }
    }

    #[test]
    fn the_network_section_is_checked_where_it_is_written() {
        let file = std::path::Path::new("fleet.toml");
        let text = |net: &str| {
            format!("[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n[network]\n{net}\n")
        };
        let fleet = super::super::parse(file, &text("")).expect("defaults are valid");
        let net = fleet.network.as_ref().expect("present");
        assert_eq!(
            (net.cidr.as_str(), net.port, net.domain.as_str()),
            ("10.210.0.0/16", 51820, "internal")
        );
        assert!(warnings(&fleet).is_empty());
        for (bad, field, says) in [
            (
                "cidr = \"10.210.0.0\"",
                "network.cidr",
                "not an IPv4 network",
            ),
            (
                "cidr = \"10.210.0.0/24\"",
                "network.cidr",
                "a /24 does not fit",
            ),
            (
                "cidr = \"10.210.1.0/16\"",
                "network.cidr",
                "did you mean 10.210.0.0/16",
            ),
            ("port = 0", "network.port", "UDP port"),
            (
                "domain = \"Internal\"",
                "network.domain",
                "not a usable domain",
            ),
            (
                "domain = \"internal.\"",
                "network.domain",
                "not a usable domain",
            ),
            (
                "interface = \"a-name-far-too-long\"",
                "network.interface",
                "interface name",
            ),
        ] {
            let err = super::super::parse(file, &text(bad))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("fleet.toml:6:"), "{bad}: {err}");
            assert!(err.contains(field) && err.contains(says), "{bad}: {err}");
        }
        let lab = text("cidr = \"172.31.0.0/16\"");
        let fleet = super::super::parse(file, &lab).expect("an overlap is only a warning");
        let w = super::super::warnings(file, &lab, &fleet);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "warning: fleet.toml:6:8: network.cidr: 172.31.0.0/16 overlaps 172.16.0.0/12"
            ),
            "{w:?}"
        );
    }

    #[test]
    fn the_api_section_is_https_beyond_loopback() {
        let file = std::path::Path::new("fleet.toml");
        let text = |api: &str, certs: &str| {
            format!("[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n{certs}[api]\n{api}\n")
        };
        let certs = "[[proxy.certificates]]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        for ok in [
            text("listen = \"127.0.0.1:9443\"", ""),
            text(
                "listen = \"0.0.0.0:9443\"\nhost = \"prism.example.com\"",
                certs,
            ),
        ] {
            super::super::parse(file, &ok).expect(&ok);
        }
        for (api, certs, field, says) in [
            (
                "listen = \"0.0.0.0:9443\"",
                certs,
                "api.host",
                "only over HTTPS",
            ),
            ("listen = \"9443\"", "", "api.listen", "address and port"),
            (
                "listen = \"127.0.0.1:9090\"",
                "",
                "api.listen",
                "[proxy]'s listeners",
            ),
            (
                "listen = \"127.0.0.1:9443\"\nhost = \"prism.example.com\"",
                "",
                "api.host",
                "needs certificates",
            ),
            (
                "listen = \"127.0.0.1:9443\"\nhost = \"Prism..com\"",
                certs,
                "api.host",
                "not a usable host name",
            ),
        ] {
            let err = super::super::parse(file, &text(api, certs))
                .expect_err(api)
                .to_string();
            assert!(err.contains(field) && err.contains(says), "{api}: {err}");
        }
    }

    #[test]
    fn emails() {
        for ok in ["ops@example.com", "a.b+c@mail.example.org"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "ops",
            "@example.com",
            "ops@localhost",
            "ops@example.com.",
            "o ps@example.com",
            "a@b@c.com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "blog.example.com",
            "*.example.com",
            "example.com/api",
            "localhost",
        ] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://blog.example.com",
            "blog.example.com:80",
            "",
            "*.",
            "a..b",
            "-a.com",
            "a_b.com",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes() {
        let check_volume = |v| Mount::parse(v).map(|_| ());
        for ok in ["data:/var/lib/data", "/srv/blog:/data:ro", "cache-1:/c:rw"] {
            assert!(check_volume(ok).is_ok(), "{ok}");
        }
        for bad in [
            "data",
            "data:relative",
            "../x:/y",
            "a:/b:rx",
            "a:/b:ro:x",
            "Data:/d",
            "a_b:/d",
        ] {
            assert!(check_volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("blog"));
        assert!(is_dns_label("blog-2"));
        assert!(!is_dns_label("Blog"));
        assert!(!is_dns_label("2blog"));
        assert!(!is_dns_label("blog-"));
        assert!(!is_dns_label("blog_web"));
        assert!(!is_dns_label(""));
    }
}
