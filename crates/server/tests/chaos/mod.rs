//! A TCP chaos proxy for delivery tests: it sits between Sluice and a real
//! server (PostgreSQL, ClickHouse, an S3 server) and makes the target look
//! stopped, flapping or slow without touching the server itself.
//!
//! Switching modes cuts every open connection, as a restart or a network
//! partition would — except switching to `Stall`, which open connections
//! obey too (a server that becomes slow under a client's feet):
//! - `Refuse`: accept and reset at once (a stopped server).
//! - `Forward`: relay both ways (a healthy server).
//! - `Stall`: relay requests to the server but swallow its answers until
//!   the mode changes. The server does the work (an insert commits, an
//!   object is stored) while the client times out — the case that turns
//!   into duplicates unless redelivery is idempotent.
//! - `Alternate`: new connections alternate between refused and forwarded
//!   (a flapping server: every other call fails).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Refuse,
    Forward,
    Stall,
    Alternate,
}

struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
    refused: AtomicU64,
    stalled: AtomicU64,
}

pub struct ChaosProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl ChaosProxy {
    pub async fn start(upstream: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(Mode::Forward),
            generation,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let n = s.accepted.fetch_add(1, Ordering::SeqCst);
                let mode = *s.mode.lock().unwrap();
                let forward = match mode {
                    Mode::Refuse => false,
                    Mode::Alternate => n % 2 == 1,
                    Mode::Forward | Mode::Stall => true,
                };
                if !forward {
                    s.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = reset_on_close(&client);
                    drop(client);
                    continue;
                }
                if mode == Mode::Stall {
                    s.stalled.fetch_add(1, Ordering::SeqCst);
                }
                let gen_rx = s.generation.subscribe();
                tokio::spawn(relay(client, s.clone(), gen_rx));
            }
        });
        ChaosProxy { addr, shared, task }
    }

    /// Switch mode; open connections are cut, unless the new mode is
    /// `Stall` (they stall too).
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
        if mode != Mode::Stall {
            self.shared.generation.send_modify(|g| *g += 1);
        }
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.lock().unwrap()
    }

    /// Connections accepted, connections refused, and answers swallowed
    /// (stalled connections plus held reads) so far.
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.refused.load(Ordering::SeqCst),
            self.shared.stalled.load(Ordering::SeqCst),
        )
    }
}

async fn relay(client: TcpStream, shared: Arc<Shared>, mut generation: watch::Receiver<u64>) {
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        let _ = reset_on_close(&client);
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Client → server always flows; the connection ends when the client
    // closes its side (so the server sees the disconnect and rolls back
    // what was not committed) or when the mode changes.
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    // Server → client: relayed, or swallowed while stalling (the
    // connection is cut when the stall ends: its stream lost bytes).
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let stall = *shared.mode.lock().unwrap() == Mode::Stall;
                    if stall {
                        shared.stalled.fetch_add(1, Ordering::SeqCst);
                    }
                    if !stall && cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = cw.shutdown().await;
        // Keep the client waiting until it gives up or the mode changes.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = generation.changed() => {}
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Close with a reset (SO_LINGER 0), as a crashed or refusing server does.
/// A zero linger sends RST at once, so the close never blocks.
#[allow(deprecated)]
fn reset_on_close(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_linger(Some(std::time::Duration::ZERO))
}
