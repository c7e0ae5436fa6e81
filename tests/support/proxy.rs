//! A fault-injecting TCP proxy on loopback, one per upstream (issue 21, item 8): put it between
//! one process and Redis and the test can hit that process, or one of its connections, with the
//! network faults a fleet sees. `tc netem` is not available on this machine kind (no
//! `sch_netem`), so this is plain userspace forwarding: two pump threads per connection.
//!
//! What it can do, per connection ([`Which`]) or for the whole proxy:
//! - **latency with jitter** ([`Proxy::set_latency`]): every chunk waits `base + U[0, jitter)`
//!   before it is forwarded, in both directions;
//! - **stall** ([`Proxy::stall`]): stop reading for a while, so bytes queue in the kernel and
//!   arrive late, as TCP retransmission after packet loss looks to the application;
//! - **random stalls** ([`Proxy::set_stall_chance`]): each chunk, with probability `1/n`,
//!   holds its connection for a while before it is forwarded (the same effect, at random);
//! - **black-hole** ([`Proxy::blackhole`]): read and discard everything, keep the sockets open
//!   (a middlebox that dropped the flow's state silently);
//! - **reset** ([`Proxy::reset`]): close the client side with `SO_LINGER 0`, so it gets a RST;
//! - **partition** ([`Proxy::partition`] / [`Proxy::heal`]): every connection, old and new,
//!   forwards nothing until healed (new connections are accepted but stay silent, as a SYN
//!   that is answered by nobody looks to a client with a connect timeout).
//!
//! Connections that subscribed (the client sent `SUBSCRIBE` / `PSUBSCRIBE`) are marked, so a
//! test can black-hole a store's subscription alone while its data connection still works.
//!
//! Bounded: every socket read has a short timeout so pumps notice control changes and the
//! proxy's `Drop` within milliseconds; dropping the proxy closes every connection and joins
//! every thread. Nothing here sleeps longer than [`TICK`] at a time.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a pump or the accept loop waits before looking at its controls again.
pub const TICK: Duration = Duration::from_millis(10);

/// Which connections a control applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    /// Connections whose client sent `SUBSCRIBE` or `PSUBSCRIBE`.
    Subscriber,
    /// Every other connection.
    Data,
    /// One connection, by [`ConnInfo::id`].
    Id(u64),
}

/// What the proxy knows about one connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub subscriber: bool,
    pub mode: Mode,
}

/// How one connection forwards right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Nothing is read until then (bytes wait in the kernel, then flow).
    StallUntil(Instant),
    /// Everything is read and discarded; the sockets stay open.
    BlackHole,
}

struct Conn {
    id: u64,
    subscriber: AtomicBool,
    mode: Mutex<Mode>,
    closed: AtomicBool,
    client: TcpStream,
    upstream: TcpStream,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Conn {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn matches(&self, w: Which) -> bool {
        match w {
            Which::All => true,
            Which::Subscriber => self.subscriber.load(Ordering::Relaxed),
            Which::Data => !self.subscriber.load(Ordering::Relaxed),
            Which::Id(id) => self.id == id,
        }
    }
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

struct Shared {
    upstream_port: u16,
    stop: AtomicBool,
    partitioned: AtomicBool,
    /// Latency and jitter in microseconds.
    latency_us: AtomicU64,
    jitter_us: AtomicU64,
    /// Random stalls: one chunk in `stall_one_in` (0: none) waits `stall_us` first.
    stall_one_in: AtomicU64,
    stall_us: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<Vec<Arc<Conn>>>,
}

/// A proxy listening on a free loopback port, forwarding to `127.0.0.1:upstream_port`.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy (forwarding, no faults).
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", super::free_port()))
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream_port,
            stop: AtomicBool::new(false),
            partitioned: AtomicBool::new(false),
            latency_us: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            stall_one_in: AtomicU64::new(0),
            stall_us: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, s));
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/` (with `user:password@` when given).
    pub fn url(&self, auth: Option<(&str, &str)>) -> String {
        match auth {
            Some((u, p)) => format!("redis://{u}:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Every chunk waits `base + U[0, jitter)` before it is forwarded (both directions).
    pub fn set_latency(&self, base: Duration, jitter: Duration) {
        self.shared
            .latency_us
            .store(base.as_micros() as u64, Ordering::Relaxed);
        self.shared
            .jitter_us
            .store(jitter.as_micros() as u64, Ordering::Relaxed);
    }

    /// One chunk in `one_in` (either direction, every connection) holds its connection for `d`
    /// before it is forwarded, so the bytes behind it wait too; `one_in == 0` turns this off.
    pub fn set_stall_chance(&self, one_in: u64, d: Duration) {
        self.shared
            .stall_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
        self.shared.stall_one_in.store(one_in, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.live()
            .iter()
            .map(|c| ConnInfo {
                id: c.id,
                subscriber: c.subscriber.load(Ordering::Relaxed),
                mode: c.mode(),
            })
            .collect()
    }

    /// How many connections were accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.next_id.load(Ordering::Relaxed)
    }

    fn live(&self) -> Vec<Arc<Conn>> {
        let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.closed.load(Ordering::Relaxed));
        conns.clone()
    }

    fn set_mode(&self, w: Which, m: Mode) -> usize {
        let mut n = 0;
        for c in self.live().iter().filter(|c| c.matches(w)) {
            *c.mode.lock().unwrap_or_else(|e| e.into_inner()) = m;
            n += 1;
        }
        n
    }

    /// Stalls the matching connections for `d`; returns how many matched.
    pub fn stall(&self, w: Which, d: Duration) -> usize {
        self.set_mode(w, Mode::StallUntil(Instant::now() + d))
    }

    /// Black-holes the matching connections (until [`Proxy::forward`] or a reset); returns how
    /// many matched.
    pub fn blackhole(&self, w: Which) -> usize {
        self.set_mode(w, Mode::BlackHole)
    }

    /// Makes the matching connections forward again.
    pub fn forward(&self, w: Which) -> usize {
        self.set_mode(w, Mode::Forward)
    }

    /// Resets the matching connections: the client gets a RST (`SO_LINGER 0`), the upstream a
    /// close. Returns how many matched.
    pub fn reset(&self, w: Which) -> usize {
        let mut n = 0;
        for c in self.live().iter().filter(|c| c.matches(w)) {
            linger_zero(&c.client);
            c.closed.store(true, Ordering::Relaxed);
            // Only the upstream side is shut down: a shutdown of the client side would send a
            // FIN. The client socket closes (with a RST) when the pumps drop their handles.
            let _ = c.upstream.shutdown(Shutdown::Both);
            n += 1;
        }
        self.reap();
        n
    }

    /// Every connection, old and new, stops forwarding until [`Proxy::heal`].
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::Relaxed);
    }

    /// Ends a partition: bytes held meanwhile flow again.
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::Relaxed);
    }

    /// Joins the pumps of closed connections (so a long test does not accumulate threads).
    fn reap(&self) {
        let closed: Vec<Arc<Conn>> = {
            let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
            let (closed, open): (Vec<_>, Vec<_>) = conns
                .drain(..)
                .partition(|c| c.closed.load(Ordering::Relaxed));
            *conns = open;
            closed
        };
        for c in closed {
            let pumps = std::mem::take(&mut *c.pumps.lock().unwrap_or_else(|e| e.into_inner()));
            for p in pumps {
                let _ = p.join();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for c in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            c.close();
        }
        self.reap();
    }
}

fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized `linger` value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(TICK);
                continue;
            }
            Err(_) => {
                std::thread::sleep(TICK);
                continue;
            }
        };
        let upstream = match TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], s.upstream_port)),
            Duration::from_secs(1),
        ) {
            Ok(u) => u,
            // Upstream down: the client sees its connection closed, as with no proxy at all.
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        for sock in [&client, &upstream] {
            let _ = sock.set_nodelay(true);
            let _ = sock.set_read_timeout(Some(TICK));
            // A peer that stops reading (a SIGSTOPped server) cannot hold a pump forever.
            let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
        }
        let conn = Arc::new(Conn {
            id: s.next_id.fetch_add(1, Ordering::Relaxed),
            subscriber: AtomicBool::new(false),
            mode: Mutex::new(Mode::Forward),
            closed: AtomicBool::new(false),
            client: client.try_clone().unwrap(),
            upstream: upstream.try_clone().unwrap(),
            pumps: Mutex::new(Vec::new()),
        });
        let up = {
            let (c, s, from, to) = (conn.clone(), s.clone(), client, upstream);
            std::thread::spawn(move || pump(&c, &s, from, to, true))
        };
        let down = {
            let (c, s) = (conn.clone(), s.clone());
            let from = conn.upstream.try_clone().unwrap();
            let to = conn.client.try_clone().unwrap();
            std::thread::spawn(move || pump(&c, &s, from, to, false))
        };
        conn.pumps.lock().unwrap().extend([up, down]);
        let mut conns = s.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.closed.load(Ordering::Relaxed) || !c.pumps.lock().unwrap().is_empty());
        conns.push(conn);
    }
}

/// Sleeps `d` in ticks, giving up early when the proxy stops or the connection closes.
fn nap(c: &Conn, s: &Shared, d: Duration) {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.stop.load(Ordering::Relaxed) || c.closed.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(left.min(TICK));
    }
}

fn pump(c: &Conn, s: &Shared, mut from: TcpStream, mut to: TcpStream, upward: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    while !s.stop.load(Ordering::Relaxed) && !c.closed.load(Ordering::Relaxed) {
        if c.held(s) {
            std::thread::sleep(TICK);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        if upward && !c.subscriber.load(Ordering::Relaxed) && mentions_subscribe(&buf[..n]) {
            c.subscriber.store(true, Ordering::Relaxed);
        }
        let (base, jitter) = (
            s.latency_us.load(Ordering::Relaxed),
            s.jitter_us.load(Ordering::Relaxed),
        );
        if base + jitter > 0 {
            let extra = if jitter > 0 {
                rand::random_range(0..jitter)
            } else {
                0
            };
            nap(c, s, Duration::from_micros(base + extra));
        }
        let one_in = s.stall_one_in.load(Ordering::Relaxed);
        if one_in > 0 && rand::random_range(0..one_in) == 0 {
            nap(
                c,
                s,
                Duration::from_micros(s.stall_us.load(Ordering::Relaxed)),
            );
        }
        // Looked at again after the read and the delay: a black hole that started meanwhile
        // swallows the chunk, a stall or partition holds it back.
        if c.mode() == Mode::BlackHole {
            continue;
        }
        while c.held(s) && !s.stop.load(Ordering::Relaxed) && !c.closed.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    c.close_quietly_after_pump();
}

impl Conn {
    /// True while a stall or a partition holds this connection's bytes back.
    fn held(&self, s: &Shared) -> bool {
        let stalled = match self.mode() {
            Mode::StallUntil(t) => Instant::now() < t,
            _ => false,
        };
        stalled || s.partitioned.load(Ordering::Relaxed)
    }

    /// One direction ended (EOF, error, reset or stop): the other direction cannot be useful
    /// alone, so the connection closes. A reset already set `SO_LINGER 0` on the client side;
    /// shutting it down here would send a FIN first, so only a clean end shuts it down.
    fn close_quietly_after_pump(&self) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.upstream.shutdown(Shutdown::Both);
        }
    }
}

fn mentions_subscribe(chunk: &[u8]) -> bool {
    chunk
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
}
