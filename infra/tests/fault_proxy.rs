//! `testkit::FaultProxy` in front of a local TCP echo server: it forwards while up, cuts open
//! connections and refuses to serve new ones while down, and serves again once back up.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use infra::testkit::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longer than any local round trip; a hung read fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(5);

/// An echo server on `127.0.0.1:0`, for the life of the test's runtime.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    addr
}

/// Sends `message` on `stream` and reads it back.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let exchange = async {
        stream.write_all(message).await?;
        let mut echoed = vec![0; message.len()];
        stream.read_exact(&mut echoed).await?;
        assert_eq!(echoed, message);
        Ok(())
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))?
}

/// A round trip on a new connection through `addr`.
async fn fresh_round_trip(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    round_trip(&mut stream, b"ping").await
}

#[tokio::test]
async fn forwards_cuts_and_restores() {
    let proxy = FaultProxy::start(echo_server().await)
        .await
        .expect("start proxy");
    assert!(!proxy.is_down());

    let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
    round_trip(&mut open, b"before")
        .await
        .expect("echo while up");
    fresh_round_trip(proxy.addr())
        .await
        .expect("second connection while up");

    proxy.set_down(true);
    // The open connection is cut: the next read ends (EOF or reset) instead of waiting.
    let mut buffer = [0; 16];
    let read = tokio::time::timeout(DEADLINE, open.read(&mut buffer))
        .await
        .expect("an open connection is cut when the proxy goes down");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "open connection still delivers data: {read:?}"
    );
    let refused = fresh_round_trip(proxy.addr()).await;
    assert!(
        refused.is_err(),
        "a new connection is served while the proxy is down"
    );

    proxy.set_down(false);
    fresh_round_trip(proxy.addr())
        .await
        .expect("echo after the proxy is back up");
}

#[tokio::test]
async fn dropping_the_proxy_stops_it() {
    let proxy = FaultProxy::start(echo_server().await)
        .await
        .expect("start proxy");
    let addr = proxy.addr();
    let mut open = TcpStream::connect(addr).await.expect("connect");
    round_trip(&mut open, b"hello").await.expect("echo");

    drop(proxy);
    let mut buffer = [0; 16];
    let read = tokio::time::timeout(DEADLINE, open.read(&mut buffer))
        .await
        .expect("an open connection is cut when the proxy is dropped");
    assert!(matches!(read, Ok(0) | Err(_)), "still forwarding: {read:?}");
    // The listener task notices the drop asynchronously; once it has, connections are refused.
    let refused = tokio::time::timeout(DEADLINE, async {
        while fresh_round_trip(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener still serves after drop");
}
