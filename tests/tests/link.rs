//! The link emulator with real UDP sockets on loopback: delay is added, a
//! cut drops everything until healed, and a rebind changes the address the
//! far peer sees.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roost_tests::link::{LinkParams, Relay};
use tokio::net::UdpSocket;

/// A UDP echo server that records where datagrams came from.
async fn echo() -> (
    std::net::SocketAddr,
    Arc<Mutex<BTreeSet<std::net::SocketAddr>>>,
) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            seen2.lock().unwrap().insert(from);
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

async fn round_trip(client: &UdpSocket, relay: &Relay, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    client.send_to(b"ping", relay.addr).await.unwrap();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(within, client.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => {
            assert_eq!(&buf[..n], b"ping");
            Some(t.elapsed())
        }
        _ => None,
    }
}

#[tokio::test]
async fn delay_cut_heal_and_rebind() {
    let (far, seen) = echo().await;
    let params = LinkParams {
        latency: Duration::from_millis(30),
        ..Default::default()
    };
    let relay = Relay::start(far, params, 1).await.unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let rtt = round_trip(&client, &relay, Duration::from_secs(2))
        .await
        .expect("a reply through the relay");
    assert!(
        rtt >= Duration::from_millis(60),
        "two 30 ms legs, got {rtt:?}"
    );

    relay.cut(true);
    assert_eq!(
        round_trip(&client, &relay, Duration::from_millis(300)).await,
        None,
        "a cut link carries nothing"
    );
    relay.cut(false);
    assert!(
        round_trip(&client, &relay, Duration::from_secs(2))
            .await
            .is_some(),
        "healed"
    );

    let before = seen.lock().unwrap().clone();
    let new_addr = relay.rebind().await.unwrap();
    assert!(
        round_trip(&client, &relay, Duration::from_secs(2))
            .await
            .is_some(),
        "still flows after a rebind"
    );
    let after = seen.lock().unwrap().clone();
    assert!(
        !before.contains(&new_addr) && after.contains(&new_addr),
        "the far side saw the new address"
    );
    let (up, down) = relay.bytes();
    assert_eq!(
        (up, down),
        (12, 12),
        "three delivered pings each way, the cut one not counted"
    );
}
