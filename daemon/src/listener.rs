//! Accepts connections on the daemon's Unix socket, refuses any peer of another uid, and counts
//! the connected clients (each shim process holds one connection for its lifetime).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

use crate::state::DaemonState;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub pid: Option<i32>,
}

pub struct PeerStream {
    inner: UnixStream,
    peer: Peer,
    state: Arc<DaemonState>,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.state.connection_closed();
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The accepted connections of our own uid, for `serve_with_incoming`.
pub fn incoming(listener: UnixListener, state: Arc<DaemonState>) -> impl Stream<Item = io::Result<PeerStream>> {
    let own_uid = rustix::process::getuid().as_raw();
    futures::stream::unfold((listener, state), move |(listener, state)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == own_uid => {
                    state.connection_opened();
                    let peer = Peer { pid: cred.pid() };
                    let stream = PeerStream { inner: stream, peer, state: state.clone() };
                    return Some((Ok(stream), (listener, state)));
                }
                Ok(cred) => {
                    tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a connection from another user")
                }
                Err(e) => tracing::warn!(error = %e, "refused a connection whose peer is unknown"),
            }
        }
    })
}
