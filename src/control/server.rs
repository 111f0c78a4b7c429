//! The daemon side of the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::{ControlError, Request, Response};

/// Answers one request; implemented by the daemon.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Response;

    /// The answer to [`Request::Flows`] as JSON text, handed to `out` a piece
    /// at a time (`out` returns false when the client is gone: stop). The
    /// pieces together are the one line `serde_json` would make of
    /// [`Response::Flows`], without the newline. The default makes the whole
    /// answer at once; the daemon's walks the flow table a batch at a time, so
    /// that listing 100k flows costs one batch of memory, not all of them.
    fn flows_json(&self, out: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), String> {
        match self.handle(Request::Flows) {
            Response::Error { message } => Err(message),
            resp => {
                out(serde_json::to_string(&resp).map_err(|e| e.to_string())?.as_bytes());
                Ok(())
            }
        }
    }
}

/// Pieces of a streamed answer waiting for the socket.
const STREAM_QUEUE: usize = 2;

/// A bound control socket. The socket file (and the directory, if we made it)
/// is removed by [`ControlSocket::remove`].
pub struct ControlSocket {
    path: PathBuf,
    created_dir: Option<PathBuf>,
    listener: Option<UnixListener>,
}

impl ControlSocket {
    /// Bind `path` with mode 0600 (a directory we create for it gets 0700, as
    /// the unit's RuntimeDirectoryMode). A stale socket left by a killed daemon is
    /// replaced; a live one (another daemon answers) is an error.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let p = path.display().to_string();
        let io = |op: &'static str| {
            let p = p.clone();
            move |source| ControlError::Io { path: p, op, source }
        };
        let mut created_dir = None;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(io("create directory"))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io("chmod directory"))?;
                created_dir = Some(dir.to_path_buf());
            }
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse { path: p });
            }
            std::fs::remove_file(path).map_err(io("remove stale socket"))?;
        }
        // Bind under a restrictive umask so there is no window where the socket is
        // reachable by others before the chmod below.
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let listener = {
            // UnixListener::bind needs a runtime context; the daemon calls this inside one.
            let l = UnixListener::bind(path);
            // SAFETY: as above, restores the previous mask.
            unsafe { libc::umask(old) };
            l.map_err(io("bind"))?
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod"))?;
        Ok(ControlSocket { path: path.to_path_buf(), created_dir, listener: Some(listener) })
    }

    /// Serve until `shutdown` flips to true.
    pub async fn serve(&mut self, handler: Arc<dyn Handler>, mut shutdown: watch::Receiver<bool>) {
        let Some(listener) = self.listener.take() else { return };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            // A client that stalls must not hold a task forever.
                            if tokio::time::timeout(Duration::from_secs(5), answer(stream, handler)).await.is_err() {
                                tracing::debug!("control client timed out");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Remove the socket file and the directory we created (if empty).
    pub fn remove(&mut self) -> Result<(), ControlError> {
        let p = self.path.display().to_string();
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ControlError::Io { path: p, op: "remove", source }),
        }
        if let Some(dir) = self.created_dir.take() {
            // Only if empty: someone else may have put files there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

async fn answer(stream: UnixStream, handler: Arc<dyn Handler>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // Requests are tiny; a bounded read keeps a bad client from growing memory.
    let mut reader = BufReader::new(read.take_limit());
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(line.trim_end()) {
        Ok(Request::Flows) => match stream_flows(&mut write, handler).await {
            Ok(()) => return,
            Err(message) => Response::Error { message },
        },
        Ok(req) => handler.handle(req),
        Err(e) => Response::Error { message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|e| {
        let err = Response::Error { message: format!("encode the answer: {e}") };
        serde_json::to_string(&err).unwrap_or_default()
    });
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

/// Writes the flows answer as the handler makes it (map reads are blocking:
/// they run on a blocking thread, at most STREAM_QUEUE pieces ahead of the
/// socket). An error before the first piece is returned, for an error answer;
/// one after it cuts the line short, which the client reports.
async fn stream_flows(write: &mut tokio::net::unix::OwnedWriteHalf, handler: Arc<dyn Handler>) -> Result<(), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let producer = tokio::task::spawn_blocking(move || handler.flows_json(&mut |piece| tx.blocking_send(piece.to_vec()).is_ok()));
    let mut sent = false;
    while let Some(piece) = rx.recv().await {
        sent = true;
        if write.write_all(&piece).await.is_err() {
            // The client is gone: dropping rx stops the producer at its next piece.
            drop(rx);
            let _ = producer.await;
            return Ok(());
        }
    }
    match producer.await {
        Ok(Ok(())) => {
            let _ = write.write_all(b"\n").await;
            Ok(())
        }
        Ok(Err(message)) if !sent => Err(message),
        Ok(Err(message)) => {
            tracing::warn!(error = %message, "flows answer cut short");
            Ok(())
        }
        Err(e) if !sent => Err(format!("flows: {e}")),
        Err(e) => {
            tracing::warn!(error = %e, "flows answer cut short");
            Ok(())
        }
    }
}

trait TakeLimit: tokio::io::AsyncRead + Sized {
    fn take_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 64 * 1024)
    }
}
impl<T: tokio::io::AsyncRead> TakeLimit for T {}
