//! Presence between nodes on a real three-server JetStream cluster: node
//! leases with a TTL, connection keys, a dead node's connections dropped
//! by the others, the typing relay.

mod common;

use std::time::{Duration, Instant};

use chatd::cluster::ClusterEngine;
use chatd::cluster::lease::{LEASE_TTL, LeaseState, hold_lease, release};
use chatd::cluster::roster::{Roster, RosterEvent, watch_roster};
use chatd::cluster::stream::{Replication, ensure_log_stream, ensure_presence_bucket};
use chatd::cluster::typing::{relay_typing, typing_from_other_nodes};
use chatd::presence::Typing;
use common::nats::NatsCluster;
use common::within;
use futures_util::{Stream, StreamExt};

async fn node(cluster: &NatsCluster, name: &str) -> (ClusterEngine, Roster) {
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
    let engine = ClusterEngine::connect(&urls, name).await.expect("connect");
    ensure_log_stream(&engine, Replication::default())
        .await
        .expect("log stream");
    let kv = ensure_presence_bucket(&engine, Replication::default())
        .await
        .expect("presence bucket");
    (engine.clone(), Roster::new(kv, name))
}

async fn next_event(
    events: &mut (impl Stream<Item = Result<RosterEvent, chatd::cluster::ClusterError>> + Unpin),
) -> RosterEvent {
    within("a presence event", events.next())
        .await
        .expect("the watch goes on")
        .expect("no watch error")
}

async fn held(lease: &mut tokio::sync::watch::Receiver<LeaseState>) -> u64 {
    let state = within(
        "the lease",
        lease.wait_for(|state| matches!(state, LeaseState::Held { .. })),
    )
    .await
    .expect("lease task runs")
    .clone();
    let LeaseState::Held { generation } = state else {
        unreachable!()
    };
    generation
}

/// Waits until node a's lease has been written after `key`.
async fn renewed_after(bucket: &async_nats::jetstream::kv::Store, key: &str) {
    let written = bucket
        .entry(key)
        .await
        .expect("read the bucket")
        .expect("the key")
        .revision;
    within("a renewal of the lease", async {
        loop {
            let lease = bucket.entry("node.a").await.expect("read the bucket");
            if lease.is_some_and(|entry| entry.revision > written) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_connections_are_dropped_by_the_others_within_15_seconds() {
    let cluster = NatsCluster::start();
    let (engine_a, roster_a) = node(&cluster, "a").await;
    let (_engine_b, roster_b) = node(&cluster, "b").await;

    let (mut lease_a, lease_task) = hold_lease(engine_a.clone(), roster_a.clone(), "a-1".into());
    assert_eq!(held(&mut lease_a).await, 1);
    roster_a
        .announce(1, "Dummy-1", Some("dm:Dummy-1_Dummy-2"))
        .await
        .expect("announce");
    roster_a
        .announce(2, "Dummy-3", None)
        .await
        .expect("announce");
    // The lease is renewed after the announcements: in the bucket as it
    // is, the connections' keys now come before the lease's.
    renewed_after(roster_a.bucket(), "conn.a.2").await;

    // Node b, started later, sees node a's lease and connections.
    let mut events = Box::pin(watch_roster(roster_b.bucket()).await.expect("watch"));
    assert_eq!(
        next_event(&mut events).await,
        RosterEvent::NodeUp {
            node: "a".into(),
            instance: "a-1".into()
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        RosterEvent::Joined {
            node: "a".into(),
            conn: 1,
            user: "Dummy-1".into(),
            room: Some("dm:Dummy-1_Dummy-2".into())
        }
    );
    assert!(matches!(
        next_event(&mut events).await,
        RosterEvent::Joined { conn: 2, .. }
    ));
    roster_a.withdraw(2).await.expect("withdraw");
    assert_eq!(
        next_event(&mut events).await,
        RosterEvent::Left {
            node: "a".into(),
            conn: 2
        }
    );

    // Node a dies: its lease is not renewed any more, and runs out.
    let died = Instant::now();
    lease_task.abort();
    drop(engine_a);
    loop {
        match next_event(&mut events).await {
            RosterEvent::NodeGone { node } => {
                assert_eq!(node, "a");
                break;
            }
            // Renewals that were already on their way.
            RosterEvent::NodeUp { node, .. } => assert_eq!(node, "a"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let gone_after = died.elapsed();
    println!("node a gone after {gone_after:?} (lease TTL {LEASE_TTL:?})");
    assert!(gone_after < Duration::from_secs(15), "{gone_after:?}");

    // Node a comes back as a new instance: its old keys are cleared before
    // it takes the lease, so watchers see a new instance, then new joins.
    let (engine_a, roster_a) = node(&cluster, "a").await;
    let (mut lease_a, _lease_task) = hold_lease(engine_a, roster_a.clone(), "a-2".into());
    held(&mut lease_a).await;
    roster_a
        .announce(7, "Dummy-1", None)
        .await
        .expect("announce");
    assert_eq!(
        next_event(&mut events).await,
        RosterEvent::NodeUp {
            node: "a".into(),
            instance: "a-2".into()
        }
    );
    assert!(matches!(
        next_event(&mut events).await,
        RosterEvent::Joined { conn: 7, .. }
    ));

    // A clean shutdown gives the lease up at once.
    release(&roster_a).await.expect("release");
    assert_eq!(
        next_event(&mut events).await,
        RosterEvent::NodeGone { node: "a".into() }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_relayed_to_the_other_nodes_only() {
    let cluster = NatsCluster::start();
    let (engine_a, _) = node(&cluster, "a").await;
    let (engine_b, _) = node(&cluster, "b").await;
    let mut at_a = Box::pin(typing_from_other_nodes(&engine_a).await.expect("subscribe"));
    let mut at_b = Box::pin(typing_from_other_nodes(&engine_b).await.expect("subscribe"));
    engine_a.client.flush().await.expect("flush");
    engine_b.client.flush().await.expect("flush");

    let typing = |user: &str, peer: &str, typing| Typing {
        room: "dm:Dummy-1_Dummy-2".into(),
        user: user.into(),
        peer: peer.into(),
        typing,
    };
    let first_at_b =
        relay_until_received(&engine_a, &typing("Dummy-1", "Dummy-2", true), &mut at_b).await;
    assert_eq!(first_at_b, typing("Dummy-1", "Dummy-2", true));
    // Node a gets b's event, and never its own.
    let first_at_a =
        relay_until_received(&engine_b, &typing("Dummy-2", "Dummy-1", false), &mut at_a).await;
    assert_eq!(first_at_a, typing("Dummy-2", "Dummy-1", false));
    relay_typing(&engine_a, &typing("Dummy-1", "Dummy-2", false))
        .await
        .expect("relay");
    engine_a.client.flush().await.expect("flush");
    assert_eq!(
        within("typing at b", at_b.next()).await,
        Some(typing("Dummy-1", "Dummy-2", false))
    );
    while let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(300), at_a.next()).await {
        assert_eq!(
            got,
            typing("Dummy-2", "Dummy-1", false),
            "node a got its own typing back"
        );
    }
}

/// Relays `typing` from `engine` until `at` gets an event, and returns it.
/// Core NATS is at most once: until a subscription's interest has reached
/// every server, events are dropped, so resend (as a typing client does).
async fn relay_until_received(
    engine: &ClusterEngine,
    typing: &Typing,
    at: &mut (impl Stream<Item = Typing> + Unpin),
) -> Typing {
    within("a relayed typing event", async {
        loop {
            relay_typing(engine, typing).await.expect("relay");
            if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(100), at.next()).await
            {
                return got;
            }
        }
    })
    .await
}

/// Records what a presence announces to this node's connections.
#[derive(Default)]
struct Recorder {
    online: std::sync::Mutex<Vec<(String, Vec<String>)>>,
    typing: std::sync::Mutex<Vec<Typing>>,
}

impl chatd::presence::Announce for Recorder {
    fn online(&self, room: &str, list: &chatd::presence::OnlineList, _skip: Option<u64>) {
        self.online
            .lock()
            .unwrap()
            .push((room.to_owned(), list.users.clone()));
    }

    fn typing(&self, typing: &Typing) {
        self.typing.lock().unwrap().push(typing.clone());
    }
}

/// Waits until `probe` holds, polling: presence crosses nodes through the engine.
async fn eventually(what: &str, probe: impl Fn() -> bool) {
    within(what, async {
        while !probe() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_presence_shows_every_nodes_connections_and_announces_changes() {
    use chatd::cluster::presence::ClusterPresence;
    use chatd::presence::Presence;
    use std::sync::Arc;

    let cluster = NatsCluster::start();
    let (engine_a, roster_a) = node(&cluster, "a").await;
    let (engine_b, roster_b) = node(&cluster, "b").await;
    let heard_a = Arc::new(Recorder::default());
    let heard_b = Arc::new(Recorder::default());
    let a = ClusterPresence::start(engine_a, roster_a, heard_a.clone());
    let b = ClusterPresence::start(engine_b, roster_b, heard_b.clone());

    let room: Arc<str> = Arc::from("dm:Dummy-1_Dummy-2");
    // Dummy-1 on node a; node b sees it in the list and in the room.
    let list = a.join(1, &Arc::from("Dummy-1"), Some(&room));
    assert_eq!(list.users, ["Dummy-1"]);
    eventually("Dummy-1 online at b", || {
        b.list()
            .iter()
            .any(|p| p.user == "Dummy-1" && p.rooms == ["dm:Dummy-1_Dummy-2"])
    })
    .await;
    // Dummy-2 joins on node b: its list holds both; node a announces the
    // room's new list to its connections.
    let list = b.join(1, &Arc::from("Dummy-2"), Some(&room));
    assert_eq!(list.users, ["Dummy-1", "Dummy-2"]);
    eventually("the room's new list announced at a", || {
        heard_a
            .online
            .lock()
            .unwrap()
            .contains(&(room.to_string(), vec!["Dummy-1".into(), "Dummy-2".into()]))
    })
    .await;
    assert_eq!(a.everyone().total, 2);

    // Typing from a reaches b's connections (resent until interest has spread).
    let typing = Typing {
        room: room.to_string(),
        user: "Dummy-1".into(),
        peer: "Dummy-2".into(),
        typing: true,
    };
    within("typing at b", async {
        while heard_b.typing.lock().unwrap().is_empty() {
            a.relay_typing(&typing);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(heard_b.typing.lock().unwrap()[0], typing);

    // Dummy-1 leaves on a: b announces the room without it.
    a.leave(1);
    eventually("Dummy-1 gone at b", || {
        heard_b
            .online
            .lock()
            .unwrap()
            .contains(&(room.to_string(), vec!["Dummy-2".into()]))
    })
    .await;
    assert_eq!(b.everyone().first, ["Dummy-2"]);
}
