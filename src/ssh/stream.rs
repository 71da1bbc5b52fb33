//! Output of a long-running command (`docker logs -f`) as it arrives.
//! A task drains the SSH channel into a bounded queue; the reader takes
//! chunks from it. Dropping the reader stops the remote command.
//!
//! Closing a channel does not stop its command: sshd leaves it running
//! (until it next writes), and refuses `signal` requests for root logins.
//! What sshd does do is close the command's stdin, so the command runs
//! under a small watcher that stops it when stdin ends.
//!
//! Memory stays bounded: when the queue is full the task waits, and so,
//! once russh's own per-channel queue fills, does the whole connection
//! (russh grants the server more window as data arrives, not as it is
//! read). So a reader that takes nothing for `stall_timeout` loses the
//! stream, rather than holding up every other command on the node (and,
//! behind a bastion, on every node).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::SshError;
use super::session::Closer;

/// Runs `"$@"` until it ends, then exits with its status; if the
/// channel's stdin closes first, TERMs the whole process group (sshd gives
/// each session its own), as a `signal` request would have. The command
/// gets /dev/null as stdin; fd 3 keeps the channel's stdin for the
/// watcher, which writes nothing, so it never holds the output open.
const UNTIL_CLOSED: &str = r#"exec 3<&0
"$@" 3<&- &
cmd=$!
(cat <&3 >/dev/null 2>&1; kill 0) >/dev/null 2>&1 &
watch=$!
exec 3<&-
wait "$cmd"
status=$?
kill "$watch" 2>/dev/null
exit "$status""#;

/// argv wrapped so that closing the channel stops it. Each argument is
/// still passed as one word (`"$@"`), never parsed by a shell.
pub(super) fn until_closed(argv: &[String]) -> Vec<String> {
    let mut wrapped = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        UNTIL_CLOSED.to_owned(),
        "sh".to_owned(),
    ];
    wrapped.extend(argv.iter().cloned());
    wrapped
}

/// A piece of a streaming command's life, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Always the last chunk: the exit status, or None when the command
    /// was killed by a signal or closed without one.
    Exit(Option<u32>),
}

#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// To open the channel and start the command.
    pub start_timeout: Duration,
    /// Chunks (each up to one SSH packet, 32 KiB) held for a reader that
    /// falls behind.
    pub buffer: usize,
    /// A reader that takes nothing for this long, with chunks waiting,
    /// loses the stream.
    pub stall_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            start_timeout: Duration::from_secs(30),
            buffer: 64,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// A running command's output. Ends with `Chunk::Exit`, or with an error
/// (connection lost, reader stalled); then `None`.
pub struct ExecStream {
    chunks: mpsc::Receiver<Result<Chunk, SshError>>,
}

impl ExecStream {
    pub async fn next(&mut self) -> Option<Result<Chunk, SshError>> {
        self.chunks.recv().await
    }
}

impl futures::Stream for ExecStream {
    type Item = Result<Chunk, SshError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(cx)
    }
}

/// Starts draining a channel whose command was started.
pub(super) fn spawn(
    reader: ChannelReadHalf,
    writer: Closer,
    permit: OwnedSemaphorePermit,
    node: String,
    command: String,
    limits: StreamLimits,
) -> ExecStream {
    let (tx, rx) = mpsc::channel(limits.buffer.max(1));
    tokio::spawn(async move {
        let end = drain(reader, writer, &tx, &node, &command, limits.stall_timeout).await;
        // The channel is closed by now: free its slot before waiting on
        // the reader for the last word.
        drop(permit);
        if let Some(end) = end {
            let _ = tx.send(end).await;
        }
    });
    ExecStream { chunks: rx }
}

/// Forwards the channel's output until it closes or the reader goes;
/// returns the last item to deliver, if anyone is left to take it.
async fn drain(
    mut reader: ChannelReadHalf,
    writer: Closer,
    tx: &mpsc::Sender<Result<Chunk, SshError>>,
    node: &str,
    command: &str,
    stall_timeout: Duration,
) -> Option<Result<Chunk, SshError>> {
    let mut status = None;
    loop {
        let msg = tokio::select! {
            msg = reader.wait() => msg,
            () = tx.closed() => {
                drop(reader);
                writer.stop().await;
                return None;
            }
        };
        let chunk = match msg {
            Some(ChannelMsg::Data { data }) => Chunk::Stdout(data),
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => Chunk::Stderr(data),
            // Output may still follow the exit status: wait for Close.
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                status = Some(exit_status);
                continue;
            }
            Some(ChannelMsg::Close) => {
                writer.finished();
                return Some(Ok(Chunk::Exit(status)));
            }
            Some(_) => continue,
            None => {
                // The connection went away under the channel.
                writer.finished();
                return Some(Err(SshError::Protocol {
                    node: node.to_owned(),
                    reason: format!("the connection closed while streaming {command}"),
                }));
            }
        };
        match tokio::time::timeout(stall_timeout, tx.send(Ok(chunk))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                drop(reader);
                writer.stop().await;
                return None;
            }
            Err(_) => {
                // Dropped first: russh may be blocked handing it data, and
                // must be free to send the stop.
                drop(reader);
                writer.stop().await;
                return Some(Err(SshError::StreamStalled {
                    node: node.to_owned(),
                    command: command.to_owned(),
                    after: stall_timeout,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use super::*;

    fn sh(argv: &[&str]) -> std::process::Child {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        let wrapped = until_closed(&argv);
        Command::new(&wrapped[0])
            .args(&wrapped[1..])
            // Its own process group, as sshd gives it: `kill 0` must not
            // reach the test runner.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sh")
    }

    #[test]
    fn the_wrapper_passes_arguments_and_status_through() {
        let mut child = sh(&[
            "sh",
            "-c",
            "printf '%s|' \"$@\"; echo oops >&2; exit 7",
            "x",
            "a b",
            "$(no)",
            "",
        ]);
        // stdin stays open: the command ends on its own.
        let stdin = child.stdin.take();
        let out = child.wait_with_output().expect("wait");
        drop(stdin);
        assert_eq!(out.stdout, b"a b|$(no)||");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.status.code(), Some(7));
    }

    #[test]
    fn closing_stdin_stops_the_command() {
        let mut child = sh(&["sleep", "30"]);
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.try_wait().expect("poll").is_none(), "ended early");
        let started = Instant::now();
        drop(child.stdin.take());
        let status = child.wait().expect("wait");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!status.success());
    }

    #[test]
    fn the_command_does_not_read_the_channels_stdin() {
        let mut child = sh(&["cat"]);
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"not for the command\n")
            .expect("write");
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait");
        assert!(out.stdout.is_empty());
    }
}
