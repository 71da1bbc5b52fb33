//! One authenticated SSH connection to one node, and commands run on it.
//! Many exec channels share the connection; semaphores keep them under
//! sshd's MaxSessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::PublicKey;
use russh::{ChannelMsg, ChannelStream, ChannelWriteHalf, Sig};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::stream::{self, ExecStream, StreamLimits};
use super::trust::{Trust, Verdict, fingerprint, judge};
use super::{Credentials, SshError, Target};

/// sshd's default MaxSessions is 10, and it frees a session slot a moment
/// after the channel closes; stay well below it.
const CHANNELS_PER_CONNECTION: usize = 6;
/// Long-lived streams (`docker logs -f`) get their own few slots, so they
/// never starve short commands: 6 + 3 stays under MaxSessions.
const STREAMS_PER_CONNECTION: usize = 3;

/// What a command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// None when the command was killed by a signal or the channel closed early.
    pub status: Option<u32>,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// `exit 3: <last line of stderr>`, for one-line error messages.
    pub(crate) fn brief(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "no exit status".to_owned(), |s| format!("exit {s}"));
        let stderr = self.stderr_text();
        let tail = stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("no output")
            .to_owned();
        format!("{status}: {tail}")
    }
}

/// Limits for one command.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr each.
    pub max_output: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            timeout: Duration::from_secs(30),
            max_output: 16 << 20,
        }
    }
}

/// Reports the server's key and the trust verdict; accepts only what
/// `judge` accepts.
struct Checker {
    trust: Trust,
    seen: Arc<Mutex<Option<(PublicKey, Verdict)>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            // Host certificates are not supported: refuse rather than guess.
            return Ok(false);
        };
        let verdict = judge(&self.trust, key);
        let accepts = verdict.accepts();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((key.clone(), verdict));
        }
        Ok(accepts)
    }
}

pub struct Session {
    node: String,
    handle: Handle<Checker>,
    channels: Semaphore,
    streams: Arc<Semaphore>,
    host_key: PublicKey,
    first_use: bool,
}

/// How to reach a node.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
        }
    }
}

impl Session {
    /// Connects over TCP, checks the host key, and logs in.
    pub async fn connect(
        target: &Target,
        trust: Trust,
        credentials: &Credentials,
        options: &ConnectOptions,
    ) -> Result<Session, SshError> {
        let address = format!("{}:{}", target.address, target.port);
        let stream =
            match tokio::time::timeout(options.connect_timeout, TcpStream::connect(&address)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(SshError::Unreachable {
                        node: target.id.clone(),
                        address,
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(SshError::Unreachable {
                        node: target.id.clone(),
                        address,
                        reason: format!(
                            "no answer within {}s",
                            options.connect_timeout.as_secs_f32()
                        ),
                    });
                }
            };
        let _ = stream.set_nodelay(true);
        Self::over_stream(stream, target, trust, credentials, options).await
    }

    /// Logs in over an already open byte stream (a TCP socket, or a
    /// channel through a bastion).
    pub(crate) async fn over_stream<S>(
        stream: S,
        target: &Target,
        trust: Trust,
        credentials: &Credentials,
        options: &ConnectOptions,
    ) -> Result<Session, SshError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let node = target.id.clone();
        let config = Arc::new(client::Config {
            keepalive_interval: Some(options.keepalive),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker {
            trust,
            seen: seen.clone(),
        };
        let handshake = tokio::time::timeout(
            options.connect_timeout,
            client::connect_stream(config, stream, checker),
        )
        .await;
        let verdict = seen.lock().ok().and_then(|s| s.clone());
        let mut handle = match handshake {
            Err(_) => {
                return Err(SshError::HandshakeTimeout {
                    node,
                    after: options.connect_timeout,
                });
            }
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                return Err(match verdict {
                    Some((_, Verdict::Mismatch { expected, offered })) => {
                        SshError::HostKeyMismatch {
                            node,
                            expected,
                            offered,
                        }
                    }
                    Some((_, Verdict::Unknown { offered })) => {
                        SshError::HostKeyUnknown { node, offered }
                    }
                    Some((_, Verdict::Unreadable { reason })) => {
                        SshError::HostKeyUnchecked { node, reason }
                    }
                    _ => SshError::Protocol {
                        node,
                        reason: e.to_string(),
                    },
                });
            }
        };
        let Some((host_key, verdict)) = verdict else {
            return Err(SshError::Protocol {
                node,
                reason: "the server's host key was never checked".into(),
            });
        };
        // A server that stalls after the handshake must not hang us either.
        tokio::time::timeout(
            options.connect_timeout,
            credentials.authenticate(&mut handle, &node, &target.user),
        )
        .await
        .map_err(|_| SshError::HandshakeTimeout {
            node: node.clone(),
            after: options.connect_timeout,
        })??;
        Ok(Session {
            node,
            handle,
            channels: Semaphore::new(CHANNELS_PER_CONNECTION),
            streams: Arc::new(Semaphore::new(STREAMS_PER_CONNECTION)),
            host_key,
            first_use: verdict == Verdict::FirstUse,
        })
    }

    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    pub fn host_key_fingerprint(&self) -> String {
        fingerprint(&self.host_key)
    }

    /// The key was accepted only because nothing was pinned yet.
    pub(crate) fn needs_pin(&self) -> bool {
        self.first_use
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs argv on the node. Each argument is quoted once, here, so the
    /// remote shell sees exactly these bytes. `stdin` is sent and closed
    /// (secrets travel this way, never in argv).
    pub async fn exec(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        limits: ExecLimits,
    ) -> Result<Output, SshError> {
        let command = quote(&self.node, argv)?;
        let shown = summary(argv);
        match tokio::time::timeout(limits.timeout, self.run(&command, stdin, limits.max_output))
            .await
        {
            Ok(result) => result,
            Err(_) => Err(SshError::Timeout {
                node: self.node.clone(),
                command: shown,
                after: limits.timeout,
            }),
        }
    }

    async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        cap: usize,
    ) -> Result<Output, SshError> {
        let proto = |e: russh::Error| SshError::Protocol {
            node: self.node.clone(),
            reason: e.to_string(),
        };
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|e| SshError::Protocol {
                node: self.node.clone(),
                reason: e.to_string(),
            })?;
        let (mut channel, writer) = self.open_channel().await.map_err(proto)?.split();
        // Dropped on timeout: the command is stopped rather than left running.
        let writer = Closer::new(writer);
        writer.exec(true, command.as_bytes()).await.map_err(proto)?;
        if let Some(input) = stdin {
            writer.data(input).await.map_err(proto)?;
        }
        writer.eof().await.map_err(proto)?;
        let mut out = Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            truncated: false,
        };
        // Read until the channel closes: output may follow the exit status.
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => keep(&mut out.stdout, &data, cap, &mut out.truncated),
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    keep(&mut out.stderr, &data, cap, &mut out.truncated)
                }
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        writer.finished();
        Ok(out)
    }

    /// Starts argv on the node and hands back its output as it arrives
    /// (`docker logs -f`). Dropping the stream stops the remote command.
    pub async fn exec_stream(
        &self,
        argv: &[String],
        limits: StreamLimits,
    ) -> Result<ExecStream, SshError> {
        let command = quote(&self.node, &stream::until_closed(argv))?;
        let shown = summary(argv);
        let permit =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| SshError::TooManyStreams {
                    node: self.node.clone(),
                    limit: STREAMS_PER_CONNECTION,
                })?;
        let proto = |e: russh::Error| SshError::Protocol {
            node: self.node.clone(),
            reason: e.to_string(),
        };
        let start = async {
            let (reader, writer) = self.open_channel().await.map_err(proto)?.split();
            let writer = Closer::new(writer);
            // No EOF: the command's stdin staying open is what keeps it
            // running (see `until_closed`).
            writer.exec(true, command.as_bytes()).await.map_err(proto)?;
            Ok::<_, SshError>((reader, writer))
        };
        let (reader, writer) = tokio::time::timeout(limits.start_timeout, start)
            .await
            .map_err(|_| SshError::Timeout {
                node: self.node.clone(),
                command: shown.clone(),
                after: limits.start_timeout,
            })??;
        Ok(stream::spawn(
            reader,
            writer,
            permit,
            self.node.clone(),
            shown,
            limits,
        ))
    }

    /// A TCP connection from this session's server to `to`
    /// (`direct-tcpip`): how a bastion carries a node's own SSH session. A
    /// refusal, or no answer within `timeout`, is the node's failure, not
    /// the bastion's.
    pub(crate) async fn tunnel(
        &self,
        to: &Target,
        timeout: Duration,
    ) -> Result<ChannelStream<client::Msg>, SshError> {
        let address = format!("{}:{} via {}", to.address, to.port, self.node);
        let opened = tokio::time::timeout(
            timeout,
            self.handle.channel_open_direct_tcpip(
                to.address.clone(),
                u32::from(to.port),
                "127.0.0.1",
                0,
            ),
        )
        .await;
        match opened {
            Ok(Ok(channel)) => Ok(channel.into_stream()),
            Ok(Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::AdministrativelyProhibited,
            ))) => Err(SshError::Protocol {
                node: self.node.clone(),
                reason:
                    "it refuses to forward TCP (AllowTcpForwarding, PermitOpen in its sshd_config)"
                        .into(),
            }),
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => Err(SshError::Unreachable {
                node: to.id.clone(),
                address,
                reason: format!("the bastion could not connect ({reason:?})"),
            }),
            Ok(Err(e)) => Err(SshError::Protocol {
                node: self.node.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(SshError::Unreachable {
                node: to.id.clone(),
                address,
                reason: format!("no answer within {}s", timeout.as_secs_f32()),
            }),
        }
    }

    /// Opens a session channel; a refusal (sshd still freeing the slot of
    /// a channel that just closed) is retried briefly.
    async fn open_channel(&self) -> Result<russh::Channel<client::Msg>, russh::Error> {
        let mut attempt = 0;
        loop {
            match self.handle.channel_open_session().await {
                Err(russh::Error::ChannelOpenFailure(_)) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                result => return result,
            }
        }
    }

    /// Opens a channel to a Unix socket on the node
    /// (`direct-streamlocal@openssh.com`); sshd connects to it as the login
    /// user. Not a session: it does not count against MaxSessions.
    pub(crate) async fn open_socket(
        &self,
        path: &str,
    ) -> Result<russh::Channel<client::Msg>, russh::Error> {
        self.handle.channel_open_direct_streamlocal(path).await
    }

    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// The sending half of a channel that stops the remote command when
/// dropped before the channel closed on its own: a command Prism stopped
/// waiting for should not keep running on the node. It asks sshd to TERM
/// the command's process group, which sshd does for non-root logins only,
/// then closes the channel (a streamed command also stops on that; see
/// `stream::until_closed`).
pub(super) struct Closer {
    writer: Arc<ChannelWriteHalf<client::Msg>>,
    armed: bool,
}

impl Closer {
    fn new(writer: ChannelWriteHalf<client::Msg>) -> Closer {
        Closer {
            writer: Arc::new(writer),
            armed: true,
        }
    }

    /// The channel closed on its own: nothing left to stop.
    pub(super) fn finished(mut self) {
        self.armed = false;
    }

    /// Stops the command now, and waits until that is sent.
    pub(super) async fn stop(mut self) {
        self.armed = false;
        stop(&self.writer).await;
    }
}

impl std::ops::Deref for Closer {
    type Target = ChannelWriteHalf<client::Msg>;

    fn deref(&self) -> &Self::Target {
        &self.writer
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let writer = self.writer.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { stop(&writer).await });
        }
    }
}

async fn stop(writer: &ChannelWriteHalf<client::Msg>) {
    // sshd signals the command's process group (OpenSSH 7.9+); closing
    // alone would leave it running until its next write fails.
    let _ = writer.signal(Sig::TERM).await;
    let _ = writer.close().await;
}

fn keep(buf: &mut Vec<u8>, data: &[u8], cap: usize, truncated: &mut bool) {
    let room = cap.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Joins argv into one POSIX-shell-quoted command line.
pub(crate) fn quote(node: &str, argv: &[String]) -> Result<String, SshError> {
    if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
        return Err(SshError::BadArgument {
            node: node.to_owned(),
            index,
        });
    }
    shlex::try_join(argv.iter().map(String::as_str)).map_err(|_| SshError::BadArgument {
        node: node.to_owned(),
        index: 0,
    })
}

/// The command for messages: its first words only, so no argument (which
/// could be data) is repeated into logs.
fn summary(argv: &[String]) -> String {
    argv.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn quoting_keeps_every_argument_one_word() {
        let q = quote(
            "n",
            &args(&["docker", "run", "--name", "it's $(x); `y` \"z\"", ""]),
        )
        .expect("quotes");
        let back = shlex::split(&q).expect("splits back");
        assert_eq!(
            back,
            args(&["docker", "run", "--name", "it's $(x); `y` \"z\"", ""])
        );
    }

    #[test]
    fn nul_bytes_are_refused_with_their_position() {
        match quote("n", &args(&["echo", "a\0b"])) {
            Err(SshError::BadArgument { index, .. }) => assert_eq!(index, 1),
            other => panic!("expected BadArgument, got {other:?}"),
        }
    }

    #[test]
    fn output_is_capped() {
        let mut buf = Vec::new();
        let mut truncated = false;
        keep(&mut buf, b"hello", 8, &mut truncated);
        assert!(!truncated);
        keep(&mut buf, b"world", 8, &mut truncated);
        assert_eq!(buf, b"hellowor");
        assert!(truncated);
    }

    #[test]
    fn summaries_never_carry_data_arguments() {
        assert_eq!(
            summary(&args(&["docker", "login", "--password-stdin", "user"])),
            "docker login"
        );
    }
}
