//! Prism's proxy against Debian's nginx, in front of the same instance on
//! loopback, under the same wrk load in interleaved rounds, printed side
//! by side: requests per second, p50 and p99 latency, CPU time and (with
//! `perf`) instructions per request, and each proxy's memory (resident
//! set, peak sampled under load). Prints figures; asserts nothing.
//!
//!     cargo bench --bench proxy          (needs nginx and wrk: scripts/bench)
//!
//! PRISM_BENCH_ROUNDS sets the rounds (default 6), PRISM_BENCH_SECS each
//! proxy's run in a round (10), PRISM_BENCH_CONNS the connections (64),
//! PRISM_BENCH_THREADS wrk's threads (2) and PRISM_BENCH_BODY_BYTES the
//! size of the instance's answer (the 24-byte greeting). Short runs,
//! interleaved: on a shared VM the machine's speed drifts by tens of
//! percent within a minute, so each round's two runs are compared with
//! each other, and the target is judged on the median of those ratios.
//!
//! The instance and Prism's proxy each run in a process of their own (this
//! binary again, told its part by PRISM_BENCH_ROLE), so nothing of the
//! harness is measured and the proxy's memory is its own.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prism::proxy::{Proxy, RouteTable, Settings, Upstream};

const HOST: &str = "bench.test";
const BODY: &[u8] = b"hello from the instance\n";

fn main() -> Result<()> {
    match std::env::var("PRISM_BENCH_ROLE").as_deref() {
        Ok("instance") => return role_instance(),
        Ok("prism") => return role_prism(),
        _ => {}
    }
    let secs = env_num("PRISM_BENCH_SECS", 10);
    let conns = env_num("PRISM_BENCH_CONNS", 64);
    let threads = env_num("PRISM_BENCH_THREADS", 2);
    let rounds = env_num("PRISM_BENCH_ROUNDS", 6).max(1);
    for tool in ["nginx", "wrk"] {
        if !on_path(tool) {
            bail!(
                "{tool} is not installed: run scripts/bench (it installs nginx and wrk with apt)"
            );
        }
    }
    let dir = tempfile::tempdir().context("a scratch folder")?;

    let instance_port = free_port()?;
    let _instance = Running(spawn_role("instance", instance_port, instance_port)?);
    wait_for_port(instance_port)?;

    let nginx_port = free_port()?;
    let nginx = Nginx::start(dir.path(), nginx_port, instance_port)?;
    wait_for_port(nginx_port)?;
    let prism_port = free_port()?;
    let prism = Running(spawn_role("prism", prism_port, instance_port)?);
    wait_for_port(prism_port)?;

    println!(
        "proxy benchmark: wrk -t{threads} -c{conns} -d{secs}s, Host: {HOST}, {} byte answers, on {} CPUs, {rounds} interleaved round(s)",
        std::env::var("PRISM_BENCH_BODY_BYTES").unwrap_or_else(|_| BODY.len().to_string()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Rounds alternate the two proxies, so a machine whose speed drifts
    // (a shared VM) slows both alike; the medians are compared.
    let mut nginx_runs = Vec::new();
    let mut prism_runs = Vec::new();
    for round in 1..=rounds {
        let n = run("nginx", nginx_port, nginx.0.id(), threads, conns, secs)?;
        let p = run("prism", prism_port, prism.0.id(), threads, conns, secs)?;
        println!(
            "round {round}: nginx {:.0} req/s, prism {:.0} req/s ({:.2}x)",
            n.rps,
            p.rps,
            p.rps / n.rps.max(1.0)
        );
        nginx_runs.push(n);
        prism_runs.push(p);
    }
    let nginx_run = Figures::middle(&nginx_runs);
    let prism_run = Figures::middle(&prism_runs);
    let ratios: Vec<f64> = nginx_runs
        .iter()
        .zip(&prism_runs)
        .map(|(n, p)| p.rps / n.rps.max(1.0))
        .collect();
    let ratio = median(ratios.clone());
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(0.0, f64::max);
    println!();
    println!(
        "{:<22}{:>14}{:>14}",
        if rounds > 1 { "median of rounds" } else { "" },
        "nginx",
        "prism"
    );
    let row = |name: &str, a: String, b: String| println!("{name:<22}{a:>14}{b:>14}");
    row(
        "requests/s",
        format!("{:.0}", nginx_run.rps),
        format!("{:.0}", prism_run.rps),
    );
    row("p50 latency", ms(nginx_run.p50), ms(prism_run.p50));
    row("p99 latency", ms(nginx_run.p99), ms(prism_run.p99));
    row(
        "non-2xx or errors",
        nginx_run.errors.to_string(),
        prism_run.errors.to_string(),
    );
    row(
        "proxy CPU/request",
        format!("{:.1} us", nginx_run.cpu_per_request * 1e6),
        format!("{:.1} us", prism_run.cpu_per_request * 1e6),
    );
    let instr = |f: &Figures, pick: fn((f64, f64)) -> f64| {
        f.instructions
            .map_or("n/a".to_owned(), |c| format!("{:.1}k", pick(c) / 1e3))
    };
    row(
        "user instr/request",
        instr(&nginx_run, |c| c.0),
        instr(&prism_run, |c| c.0),
    );
    row(
        "kernel instr/request",
        instr(&nginx_run, |c| c.1),
        instr(&prism_run, |c| c.1),
    );
    row(
        "peak RSS under load",
        mib(nginx_run.rss),
        mib(prism_run.rss),
    );
    println!();
    println!(
        "prism/nginx requests/s, same round: median {ratio:.2}x (lowest {lowest:.2}x, highest {highest:.2}x)"
    );
    let rps_ok = ratio >= 1.0;
    let p99_ok = prism_run.p99 <= nginx_run.p99 + Duration::from_millis(1);
    println!(
        "targets: requests/s >= nginx's: {}; p99 within 1 ms of nginx's: {}",
        if rps_ok { "met" } else { "missed" },
        if p99_ok { "met" } else { "missed" }
    );
    Ok(())
}

struct Figures {
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// Peak resident set of the proxy's processes, in bytes.
    rss: u64,
    /// CPU time the proxy's processes spent per request, in seconds.
    cpu_per_request: f64,
    /// Instructions the proxy's processes ran per request, in user space
    /// and in the kernel (`perf stat`; `None` without perf or counters).
    /// Unlike time, these barely move when the machine's speed does.
    instructions: Option<(f64, f64)>,
}

/// The middle value (the upper one of an even count).
fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

impl Figures {
    /// Each figure's median over `runs` (the upper one of an even count);
    /// errors are summed and the peak RSS is the highest.
    fn middle(runs: &[Figures]) -> Figures {
        Figures {
            rps: median(runs.iter().map(|r| r.rps).collect()),
            p50: median(runs.iter().map(|r| r.p50).collect()),
            p99: median(runs.iter().map(|r| r.p99).collect()),
            errors: runs.iter().map(|r| r.errors).sum(),
            rss: runs.iter().map(|r| r.rss).max().unwrap_or(0),
            cpu_per_request: median(runs.iter().map(|r| r.cpu_per_request).collect()),
            instructions: {
                let counted: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.instructions).collect();
                (!counted.is_empty()).then(|| {
                    (
                        median(counted.iter().map(|c| c.0).collect()),
                        median(counted.iter().map(|c| c.1).collect()),
                    )
                })
            },
        }
    }
}

/// A short warm-up (not counted), then the measured run, sampling the
/// proxy's memory every 250 ms and counting its instructions with perf
/// when it can.
fn run(name: &str, port: u16, pid: u32, threads: u64, conns: u64, secs: u64) -> Result<Figures> {
    let url = format!("http://127.0.0.1:{port}/");
    wrk(&url, threads, conns, 2).with_context(|| format!("warming up {name}"))?;
    let counting = Counting::start(pid, secs);
    let mut child = Command::new("wrk")
        .args(["--latency", "-H", &format!("Host: {HOST}")])
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg(&url)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run wrk")?;
    let cpu_before = tree_cpu(pid);
    let mut rss = 0;
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("wrk did not finish");
        }
        rss = rss.max(tree_rss(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let cpu = tree_cpu(pid).saturating_sub(cpu_before);
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("\n--- {name} ---\n{}", text.trim_end());
    let mut f = parse_wrk(&text).with_context(|| format!("reading wrk's report on {name}"))?;
    let requests = (f.rps * secs as f64).max(1.0);
    f.rss = rss;
    f.cpu_per_request = cpu.as_secs_f64() / requests;
    f.instructions = counting
        .and_then(Counting::finish)
        .map(|(user, kernel)| (user / requests, kernel / requests));
    Ok(f)
}

/// `perf stat` on a process tree for the length of a run.
struct Counting {
    child: Child,
    out: tempfile::NamedTempFile,
}

impl Counting {
    fn start(pid: u32, secs: u64) -> Option<Counting> {
        if !on_path("perf") {
            return None;
        }
        let out = tempfile::NamedTempFile::new().ok()?;
        let pids: Vec<String> = tree_pids(pid).iter().map(u32::to_string).collect();
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", "instructions:u,instructions:k", "-p"])
            .arg(pids.join(","))
            .arg("-o")
            .arg(out.path())
            .args(["--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Counting { child, out })
    }

    /// User and kernel instructions counted, if perf could count them.
    fn finish(mut self) -> Option<(f64, f64)> {
        self.child.wait().ok()?;
        let text = std::fs::read_to_string(self.out.path()).ok()?;
        let count = |event: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.contains(event))?
                .split(',')
                .next()?
                .parse()
                .ok()
        };
        Some((count("instructions:u")?, count("instructions:k")?))
    }
}

fn wrk(url: &str, threads: u64, conns: u64, secs: u64) -> Result<String> {
    let out = Command::new("wrk")
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg(url)
        .output()
        .context("cannot run wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Requests/sec, the 50% and 99% lines of `--latency`, and failures
/// (socket errors and non-2xx answers).
fn parse_wrk(text: &str) -> Result<Figures> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
    };
    let rps: f64 = field("Requests/sec:")
        .context("no Requests/sec line")?
        .parse()
        .context("Requests/sec is not a number")?;
    let p50 = duration(&field("50%").context("no 50% line")?)?;
    let p99 = duration(&field("99%").context("no 99% line")?)?;
    let mut errors = 0;
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        errors += n.parse::<u64>().unwrap_or(0);
    }
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors:")) {
        errors += line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(Figures {
        rps,
        p50,
        p99,
        errors,
        rss: 0,
        cpu_per_request: 0.0,
        instructions: None,
    })
}

/// wrk's `812.00us`, `1.23ms`, `2.01s`.
fn duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .context("latency without a unit")?;
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().context("latency is not a number")?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("unknown latency unit {unit:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A process and its descendants (nginx's workers).
fn tree_pids(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pids.extend(tree_pids(child));
        }
    }
    pids
}

/// Resident memory of a process and its children.
fn tree_rss(pid: u32) -> u64 {
    tree_pids(pid).into_iter().map(rss_of).sum()
}

/// User and system CPU time of a process and its children so far.
fn tree_cpu(pid: u32) -> Duration {
    tree_pids(pid).into_iter().map(cpu_of).sum()
}

/// utime + stime from /proc/PID/stat, in clock ticks of 1/100 s (Linux's
/// USER_HZ on every mainstream architecture).
fn cpu_of(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// nginx in the foreground with its own config and scratch folder.
struct Nginx(Child, std::path::PathBuf);

impl Nginx {
    fn start(dir: &Path, port: u16, instance: u16) -> Result<Nginx> {
        // Set up as one would in front of an app: keep-alive to the instance,
        // no access log (Prism keeps none), the same headers Prism adds.
        let conf = format!(
            r#"worker_processes auto;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream instance {{
        server 127.0.0.1:{instance};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};
        location / {{
            proxy_pass http://instance;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
        }}
    }}
}}
"#,
            dir = dir.display()
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        Ok(Nginx(child, file))
    }
}

impl Drop for Nginx {
    /// `nginx -s stop` (SIGTERM to the master, which stops its workers); a
    /// SIGKILL would leave the workers running.
    fn drop(&mut self) {
        let dir = self.1.parent().unwrap_or(Path::new("."));
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&self.1)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_role(role: &str, port: u16, instance: u16) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .env("PRISM_BENCH_ROLE", role)
        .env("PRISM_BENCH_PORT", port.to_string())
        .env("PRISM_BENCH_INSTANCE", instance.to_string())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the {role} process"))
}

/// Kills the child when the benchmark ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn role_port(var: &str) -> Result<u16> {
    std::env::var(var)
        .with_context(|| format!("{var} is not set"))?
        .parse()
        .with_context(|| format!("{var} is not a port"))
}

/// The instance both proxies forward to: a fixed answer, the 24-byte
/// greeting or `PRISM_BENCH_BODY_BYTES` bytes.
fn role_instance() -> Result<()> {
    let port = role_port("PRISM_BENCH_PORT")?;
    let body = match std::env::var("PRISM_BENCH_BODY_BYTES") {
        Ok(n) => Bytes::from(vec![
            b'x';
            n.parse()
                .context("PRISM_BENCH_BODY_BYTES is not a size")?
        ]),
        Err(_) => Bytes::from_static(BODY),
    };
    tokio::runtime::Runtime::new()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Prism's proxy with one route to the instance.
fn role_prism() -> Result<()> {
    let port = role_port("PRISM_BENCH_PORT")?;
    let instance = role_port("PRISM_BENCH_INSTANCE")?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let fleet = prism::config::parse(
            Path::new("bench.toml"),
            &format!(
                "[fleet]\nname = \"bench\"\n[discovery]\nprovider = \"ec2\"\n\
                 [apps.bench.services.web]\nimage = \"x\"\nport = 8080\nhosts = [\"{HOST}\"]\n"
            ),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut registry = prometheus_client::registry::Registry::default();
        let proxy = Proxy::new(Settings::from_config(&fleet.proxy), &mut registry);
        proxy.publish(RouteTable::build(
            &fleet,
            &[Upstream {
                app: "bench".into(),
                service: "web".into(),
                instance: 0,
                node: "local".into(),
                address: "127.0.0.1".into(),
                port: instance,
                healthy: true,
            }],
        ));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = proxy.bind(addr)?;
        proxy.serve(listener, std::future::pending()).await?;
        Ok(())
    })
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
