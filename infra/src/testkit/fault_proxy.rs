//! [`FaultProxy`]: a TCP proxy a test can switch off, to simulate an outage of a dependency
//! (ClickHouse, a broker) without touching the shared local stack.
//!
//! Point the client under test at [`FaultProxy::addr`] instead of the real server. While the proxy
//! is up it forwards every connection byte for byte; [`FaultProxy::set_down`]`(true)` resets every
//! forwarded connection at once and resets each new one as soon as it is accepted, the way a
//! crashed server or a broken network looks to a client. `set_down(false)` serves again; clients
//! must reconnect by themselves, which is what the test is about.

use std::io;
use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy on `127.0.0.1` in front of one upstream address, with an outage switch.
/// Dropping it stops the listener and cuts every connection it forwards.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// `true` while down. The listener and every connection task watch it; dropping the sender
    /// (with the proxy) tells them all to stop.
    down: watch::Sender<bool>,
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and forwards each accepted connection to `upstream`. Must be called
    /// inside a Tokio runtime: the listener and the connections run as tasks on it.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (down, state) = watch::channel(false);
        tokio::spawn(accept_loop(listener, upstream, state));
        Ok(FaultProxy { addr, down })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the proxy down (`true`: cuts every forwarded connection, resets new ones) or brings
    /// it back up (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// Whether the proxy is down.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut state: watch::Receiver<bool>,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = state.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return, // the proxy was dropped
            },
        };
        let client = match client {
            Ok((client, _)) => client,
            // Per-connection failures (e.g. the client already reset): keep listening.
            Err(_) => continue,
        };
        if *state.borrow() {
            reset(client);
            continue;
        }
        tokio::spawn(forward(client, upstream, state.clone()));
    }
}

/// Forwards one connection until either side closes it, the proxy goes down or is dropped.
async fn forward(client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<bool>) {
    let mut client = client;
    let mut server = None;
    let cut = tokio::select! {
        // `wait_for` also returns (with an error) when the proxy is dropped: cut then too.
        _ = state.wait_for(|down| *down) => true,
        _ = async {
            let Ok(connected) = TcpStream::connect(upstream).await else {
                return; // upstream refused: the client sees its connection closed
            };
            let server = server.insert(connected);
            // Either side's EOF or error ends the forwarding; both sockets close below.
            let _ = copy_bidirectional(&mut client, server).await;
        } => false,
    };
    if cut {
        reset(client);
        if let Some(server) = server {
            reset(server);
        }
    }
}

/// Closes `stream` with a TCP reset, as a crashed peer would, rather than an orderly FIN.
fn reset(stream: TcpStream) {
    // Without zero linger the close is a FIN, which clients also notice; the reset is just closer
    // to a real outage.
    let _ = stream.set_zero_linger();
    drop(stream);
}
