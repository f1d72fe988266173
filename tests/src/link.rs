//! A link emulator: a UDP relay between two peers with settable latency,
//! jitter, loss, bandwidth and a cut switch, because these machines'
//! kernels have no netem. Tests and benchmarks put it between a site and its
//! region; QUIC runs over it unchanged.
//!
//! [`LinkModel`] decides each datagram's fate (dropped, or delivered at a
//! given instant) and is pure, so it is tested with simulated time;
//! [`Relay`] is the thin tokio driver around it. [`Relay::rebind`] moves the
//! relay's upstream side to a new socket, so the far peer sees the near
//! peer's address change (a vehicle changing networks).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

/// How a link behaves, in one direction and the other alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way delay.
    pub latency: Duration,
    /// Up to this much extra delay, uniformly at random (reorders packets).
    pub jitter: Duration,
    /// Probability in [0, 1] that a datagram is lost.
    pub loss: f64,
    /// Link rate in bits per second; `None` for unlimited.
    pub rate_bps: Option<u64>,
    /// When true, every datagram is dropped.
    pub cut: bool,
}

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            cut: false,
        }
    }
}

impl LinkParams {
    /// The reference link: 10 Mbit/s, 100 ms round trip, 1% loss.
    pub fn field_link() -> Self {
        LinkParams {
            latency: Duration::from_millis(50),
            jitter: Duration::from_millis(2),
            loss: 0.01,
            rate_bps: Some(10_000_000),
            cut: false,
        }
    }
}

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the near peer (the one that sends to the relay) to the far one.
    Up,
    Down,
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Drop,
    DeliverAt(Instant),
}

/// The pure part: each datagram's fate from the parameters, a seeded random
/// source and, for the rate limit, when each direction's line is next free.
#[derive(Debug)]
pub struct LinkModel {
    pub params: LinkParams,
    rng: StdRng,
    line_free: [Option<Instant>; 2],
    /// Datagrams and bytes delivered (scheduled) per direction.
    pub delivered: [(u64, u64); 2],
    pub dropped: [u64; 2],
}

impl LinkModel {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        LinkModel {
            params,
            rng: StdRng::seed_from_u64(seed),
            line_free: [None; 2],
            delivered: [(0, 0); 2],
            dropped: [0; 2],
        }
    }

    pub fn fate(&mut self, dir: Dir, bytes: usize, now: Instant) -> Fate {
        let d = dir as usize;
        let p = self.params;
        if p.cut || (p.loss > 0.0 && self.rng.random_bool(p.loss.min(1.0))) {
            self.dropped[d] += 1;
            return Fate::Drop;
        }
        // Serialisation: the datagram leaves when the line is free, and
        // holds it for its size over the rate.
        let leaves = match p.rate_bps {
            None => now,
            Some(rate) => {
                let start = self.line_free[d].map_or(now, |t| t.max(now));
                let busy = Duration::from_secs_f64((bytes as f64 * 8.0) / rate.max(1) as f64);
                self.line_free[d] = Some(start + busy);
                start + busy
            }
        };
        let jitter = if p.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.random_range(0..=p.jitter.as_nanos() as u64))
        };
        self.delivered[d].0 += 1;
        self.delivered[d].1 += bytes as u64;
        Fate::DeliverAt(leaves + p.latency + jitter)
    }
}

/// IPv4 (20) and UDP (8) header bytes of one datagram.
pub const UDP_IP_HEADER: u64 = 28;

/// The UDP relay. The near peer sends to [`Relay::addr`]; the relay forwards
/// to `far` from its upstream socket, and the far peer's answers back to
/// the near peer's last address.
#[derive(Debug, Clone)]
pub struct Relay {
    pub addr: SocketAddr,
    model: Arc<Mutex<LinkModel>>,
    upstream: Arc<Mutex<Arc<UdpSocket>>>,
    near: Arc<Mutex<Option<SocketAddr>>>,
    front: Arc<UdpSocket>,
    far: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Datagrams waiting for their delivery time, per direction, in order
    /// (without jitter a line delivers in the order it was given).
    lines: [tokio::sync::mpsc::UnboundedSender<Scheduled>; 2],
}

/// A datagram on its way: when, what, from which socket, to whom.
type Scheduled = (Instant, Vec<u8>, Arc<UdpSocket>, SocketAddr);

/// Delivers one direction's datagrams in order, each at its time.
async fn deliver(mut line: tokio::sync::mpsc::UnboundedReceiver<Scheduled>) {
    while let Some((at, data, socket, to)) = line.recv().await {
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let _ = socket.send_to(&data, to).await;
    }
}

impl Relay {
    /// Starts a relay on loopback in front of `far`.
    pub async fn start(far: SocketAddr, params: LinkParams, seed: u64) -> std::io::Result<Relay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let (up_tx, up_rx) = tokio::sync::mpsc::unbounded_channel();
        let (down_tx, down_rx) = tokio::sync::mpsc::unbounded_channel();
        let relay = Relay {
            addr: front.local_addr()?,
            model: Arc::new(Mutex::new(LinkModel::new(params, seed))),
            upstream: Arc::new(Mutex::new(upstream.clone())),
            near: Arc::new(Mutex::new(None)),
            front,
            far,
            tasks: Arc::new(Mutex::new(Vec::new())),
            lines: [up_tx, down_tx],
        };
        let up = tokio::spawn(relay.clone().pump_up());
        let down = tokio::spawn(relay.clone().pump_down(upstream));
        let lines = [tokio::spawn(deliver(up_rx)), tokio::spawn(deliver(down_rx))];
        relay.tasks.lock().expect("tasks").extend([up, down]);
        relay.tasks.lock().expect("tasks").extend(lines);
        Ok(relay)
    }

    /// Changes the link's behaviour from now on.
    pub fn set(&self, params: LinkParams) {
        self.model.lock().expect("model").params = params;
    }

    pub fn params(&self) -> LinkParams {
        self.model.lock().expect("model").params
    }

    /// Cuts the link (true) or heals it (false).
    pub fn cut(&self, cut: bool) {
        self.model.lock().expect("model").params.cut = cut;
    }

    /// Bytes delivered up and down so far.
    pub fn bytes(&self) -> (u64, u64) {
        let m = self.model.lock().expect("model");
        (m.delivered[0].1, m.delivered[1].1)
    }

    /// Bytes on the wire up and down so far: UDP payloads plus the 28 bytes
    /// of IPv4 and UDP header each datagram carries.
    pub fn wire_bytes(&self) -> (u64, u64) {
        let m = self.model.lock().expect("model");
        let wire = |(n, b): (u64, u64)| b + n * UDP_IP_HEADER;
        (wire(m.delivered[0]), wire(m.delivered[1]))
    }

    /// Moves the upstream side to a new socket: the far peer now sees the
    /// near peer at a new address.
    pub async fn rebind(&self) -> std::io::Result<SocketAddr> {
        let fresh = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = fresh.local_addr()?;
        *self.upstream.lock().expect("upstream") = fresh.clone();
        let down = tokio::spawn(self.clone().pump_down(fresh));
        self.tasks.lock().expect("tasks").push(down);
        Ok(addr)
    }

    fn schedule(&self, dir: Dir, data: Vec<u8>, socket: Arc<UdpSocket>, to: SocketAddr) {
        let fate = self
            .model
            .lock()
            .expect("model")
            .fate(dir, data.len(), Instant::now());
        let jitter = !self.params().jitter.is_zero();
        match fate {
            // Jitter reorders datagrams: each goes on its own.
            Fate::DeliverAt(at) if jitter => {
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    let _ = socket.send_to(&data, to).await;
                });
            }
            Fate::DeliverAt(at) => {
                let _ = self.lines[dir as usize].send((at, data, socket, to));
            }
            Fate::Drop => {}
        }
    }

    async fn pump_up(self) {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = self.front.recv_from(&mut buf).await {
            *self.near.lock().expect("near") = Some(from);
            let upstream = self.upstream.lock().expect("upstream").clone();
            self.schedule(Dir::Up, buf[..n].to_vec(), upstream, self.far);
        }
    }

    async fn pump_down(self, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            let near = *self.near.lock().expect("near");
            if let Some(near) = near {
                self.schedule(Dir::Down, buf[..n].to_vec(), self.front.clone(), near);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The last handle stops the pumps.
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self
                .tasks
                .lock()
                .map(|mut t| std::mem::take(&mut *t))
                .unwrap_or_default()
            {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_rate_shape_delivery() {
        let t0 = Instant::now();
        let p = LinkParams {
            latency: Duration::from_millis(50),
            rate_bps: Some(8_000_000),
            ..Default::default()
        };
        let mut m = LinkModel::new(p, 1);
        // 1,000 bytes at 8 Mbit/s take 1 ms on the line.
        assert_eq!(
            m.fate(Dir::Up, 1000, t0),
            Fate::DeliverAt(t0 + Duration::from_millis(51))
        );
        assert_eq!(
            m.fate(Dir::Up, 1000, t0),
            Fate::DeliverAt(t0 + Duration::from_millis(52)),
            "queued behind"
        );
        assert_eq!(
            m.fate(Dir::Down, 1000, t0),
            Fate::DeliverAt(t0 + Duration::from_millis(51)),
            "directions are separate"
        );
    }

    #[test]
    fn loss_rate_and_cut() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(
            LinkParams {
                loss: 0.1,
                ..Default::default()
            },
            2,
        );
        let lost = (0..10_000)
            .filter(|_| m.fate(Dir::Up, 100, t0) == Fate::Drop)
            .count();
        assert!((800..1200).contains(&lost), "{lost} of 10,000 lost at 10%");
        m.params = LinkParams {
            cut: true,
            ..Default::default()
        };
        assert!((0..100).all(|_| m.fate(Dir::Down, 100, t0) == Fate::Drop));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let t0 = Instant::now();
        let p = LinkParams {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            ..Default::default()
        };
        let mut m = LinkModel::new(p, 3);
        for _ in 0..1000 {
            let Fate::DeliverAt(at) = m.fate(Dir::Up, 10, t0) else {
                panic!("no loss configured")
            };
            assert!(at >= t0 + Duration::from_millis(10) && at <= t0 + Duration::from_millis(15));
        }
    }
}
