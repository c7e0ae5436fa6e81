//! The fault-injecting proxy itself (tests/support/proxy.rs), on a private `redis-server`: each
//! fault does what it says, observed through raw sockets. Durations asserted here are lower
//! bounds that the proxy itself imposes (it holds bytes back at least that long), never upper
//! bounds on how fast the machine is; every wait is bounded.

use crate::support::proxy::{Mode, Proxy, Which};
use crate::support::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(300);

fn connect(p: &Proxy) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", p.port())).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `PING` and reads `+PONG\r\n` (bounded by the socket's read timeout).
fn ping(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"PING\r\n")?;
    expect_pong(s)
}

fn expect_pong(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"+PONG\r\n");
    Ok(())
}

fn silent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn the_proxy_forwards_and_adds_latency_both_ways() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let mut s = connect(&p);
    ping(&mut s).unwrap();
    p.set_latency(Duration::from_millis(100), Duration::from_millis(20));
    let t = Instant::now();
    ping(&mut s).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "100 ms each way: {:?}",
        t.elapsed()
    );
    assert_eq!(p.connections().len(), 1);
}

#[test]
fn a_stall_holds_bytes_back_then_delivers_them() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let mut s = connect(&p);
    ping(&mut s).unwrap();
    let t = Instant::now();
    assert_eq!(p.stall(Which::All, SHORT), 1);
    ping(&mut s).unwrap();
    assert!(t.elapsed() >= SHORT, "answered during the stall");
}

#[test]
fn a_black_hole_keeps_the_connection_open_and_silent() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let mut s = connect(&p);
    ping(&mut s).unwrap();
    assert_eq!(p.blackhole(Which::All), 1);
    s.set_read_timeout(Some(SHORT)).unwrap();
    let e = ping(&mut s).unwrap_err();
    assert!(silent(&e), "not silent but {e:?}");
    assert_eq!(p.connections()[0].mode, Mode::BlackHole);
    // A new connection is not affected.
    ping(&mut connect(&p)).unwrap();
}

#[test]
fn a_reset_reaches_the_client_as_a_reset() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let mut s = connect(&p);
    ping(&mut s).unwrap();
    assert_eq!(p.reset(Which::All), 1);
    let mut buf = [0u8; 16];
    let e = s.read(&mut buf).expect_err("a reset, not an orderly close");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e:?}");
    wait_until("the reset connection is gone", BOUND, || {
        p.connections().is_empty()
    });
}

#[test]
fn a_partition_silences_old_and_new_connections_until_healed() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let mut old = connect(&p);
    ping(&mut old).unwrap();
    p.partition();
    old.set_read_timeout(Some(SHORT)).unwrap();
    let e = ping(&mut old).unwrap_err();
    assert!(silent(&e), "{e:?}");
    let mut new = connect(&p);
    new.set_read_timeout(Some(SHORT)).unwrap();
    let e = ping(&mut new).unwrap_err();
    assert!(silent(&e), "{e:?}");
    p.heal();
    // The PINGs sent during the partition were held, not lost: their answers arrive now.
    for s in [&mut old, &mut new] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        expect_pong(s).unwrap();
        ping(s).unwrap();
    }
}

#[test]
fn the_subscription_alone_can_be_black_holed() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let mut sub = connect(&p);
    sub.write_all(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$3\r\nch*\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = sub.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("psubscribe"));
    let mut data = connect(&p);
    ping(&mut data).unwrap();
    assert_eq!(p.blackhole(Which::Subscriber), 1);
    // The data connection still works and publishes to one subscriber (the server's view)...
    data.write_all(b"PUBLISH chx hello\r\n").unwrap();
    let n = data.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b":1\r\n");
    // ...which never hears it.
    sub.set_read_timeout(Some(SHORT)).unwrap();
    let e = sub.read(&mut buf).unwrap_err();
    assert!(silent(&e), "{e:?}");
}

#[test]
fn dropping_the_proxy_closes_everything() {
    let Some(server) = redis_or_skip() else {
        return;
    };
    let p = Proxy::start(server.port());
    let port = p.port();
    let mut s = connect(&p);
    ping(&mut s).unwrap();
    assert_eq!(p.accepted(), 1);
    drop(p); // joins the accept loop and every pump
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "still open");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still listening"
    );
}
