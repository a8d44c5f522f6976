//! Hostile anti-entropy against a real worker process on loopback (ARCHITECTURE.md,
//! "Membership", *Anti-entropy*): a peer proves its own key on a gossip connection and then
//! answers the worker's sync with a forged record, sends an oversized request, or floods it with
//! requests. Each is dropped or refused at its bound, and the worker keeps answering honest
//! peers and running tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::Member;
use iroh::endpoint::Connection;
use peergrid_e2e::{KeyPair, exec, gossiping_worker, peers, wait_until};
use peergrid_proto::Identity;
use peergrid_proto::transport::{self, PeerAddr};
use peergrid_worker::membership::net::{SYNC_ANSWERS_BURST, SYNC_ANSWERS_PER_SECOND};
use peergrid_worker::membership::sync::{self, LEAVES_PER_BUCKET, SYNC_BUCKETS};
use peergrid_worker::membership::{GOSSIP_ALPN, Membership, MembershipConfig, PeerIdentity};
use tokio::sync::mpsc;

/// A peer with its own key, connected to `target` over the gossip ALPN.
async fn connect(target: &PeerAddr) -> (Arc<Identity>, iroh::Endpoint, Connection) {
    let me = Arc::new(Identity::generate());
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let endpoint = transport::bind_endpoint(&me, bind, Vec::new(), &[])
        .await
        .unwrap();
    let connection = transport::connect(&endpoint, target, GOSSIP_ALPN)
        .await
        .unwrap();
    (me, endpoint, connection)
}

/// A well-formed sync request (every digest zero).
fn request() -> Vec<u8> {
    sync::encode_request(&[0; SYNC_BUCKETS])
}

/// Sends `data` as a sync request on a new stream; the answer, or the error that ended it.
async fn ask(connection: &Connection, data: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
    // Refused streams may be stopped before everything is written: the answer side tells.
    let _ = send.write_all(data).await;
    let _ = send.finish();
    tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 24))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())
}

/// Runs a real membership core as a member of the worker's grid over `connection` (so the
/// worker keeps it alive and picks it for anti-entropy), and answers every sync the worker
/// opens: its digests with leaf digests that differ from every one of the worker's, its want
/// with `answer`. Reports each request it answered.
fn member_answering(
    me: Arc<Identity>,
    endpoint: &iroh::Endpoint,
    connection: Connection,
    worker: PeerAddr,
    answer: Vec<u8>,
) -> mpsc::Receiver<Vec<u8>> {
    let local = transport::bound_addr(endpoint).unwrap();
    let record = PeerIdentity::signed(&me, local, "hostile".into(), 1, 1).unwrap();
    let worker_key = worker.key.to_bytes();
    let worker_ip = worker.addr.ip();
    let (answered, report) = mpsc::channel(16);
    tokio::spawn(async move {
        let epoch = Instant::now();
        let now = || epoch.elapsed().as_millis() as u64;
        let mut core = Membership::new(record, me, MembershipConfig::default(), 7);
        let (timers, mut fired) = mpsc::channel(1024);
        let _ = core.join(now(), &[worker]);
        // Bounded: the test ends long before.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let effects = core.drain();
            for (to, data) in effects.sends {
                if to.key == worker_key {
                    let _ = connection.send_datagram(data.into());
                }
            }
            for (after, timer) in effects.timers {
                let timers = timers.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = timers.send(timer).await;
                });
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                datagram = connection.read_datagram() => {
                    let Ok(data) = datagram else { break };
                    let _ = core.handle_packet(now(), worker_key, worker_ip, &data);
                }
                Some(timer) = fired.recv() => { let _ = core.handle_timer(now(), timer); }
                stream = connection.accept_bi() => {
                    let Ok((mut send, mut recv)) = stream else { break };
                    let Ok(request) = recv.read_to_end(sync::MAX_REQUEST_BYTES).await else { continue };
                    let reply = match sync::decode_request(&request) {
                        Some(sync::Request::Digests(_)) => every_leaf_differs(),
                        _ => answer.clone(),
                    };
                    let _ = send.write_all(&reply).await;
                    let _ = send.finish();
                    let _ = answered.try_send(request.to_vec());
                }
            }
        }
    });
    report
}

/// A first-round answer claiming every leaf differs (a digest of all ones is no view's but by
/// chance), so the requester wants every leaf.
fn every_leaf_differs() -> Vec<u8> {
    let buckets: Vec<(u8, [u64; LEAVES_PER_BUCKET])> = (0..=255u8)
        .map(|bucket| (bucket, [u64::MAX; LEAVES_PER_BUCKET]))
        .collect();
    sync::encode_leaves(&buckets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_in_a_sync_answer_is_dropped_and_the_rest_taken() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let worker = gossiping_worker(dir.path(), "w", &key, None);
    let target: PeerAddr = worker.seed.as_deref().unwrap().parse().unwrap();
    let (me, endpoint, connection) = connect(&target).await;

    // The answer: a record naming a victim's key but signed by this peer's key, and a newcomer's
    // genuine self-signed record.
    let victim = Identity::generate();
    let mut forged =
        PeerIdentity::signed(&me, "127.0.0.14:9".parse().unwrap(), "x".into(), 1, 9).unwrap();
    forged.worker_key = victim.public_key().to_bytes();
    let newcomer = PeerIdentity::signed(
        &Identity::generate(),
        "127.0.0.13:9".parse().unwrap(),
        "x".into(),
        1,
        1,
    )
    .unwrap();
    let answer = sync::encode_answer(&[Member::alive(forged), Member::alive(newcomer.clone())]);
    let mut answered = member_answering(me, &endpoint, connection, target, answer);

    // The worker's first exchange comes within 1.5 sync periods of its start; it has only this
    // peer to ask.
    let within = MembershipConfig::default().sync_period.mul_f64(1.5) + Duration::from_secs(10);
    let request = tokio::time::timeout(within, answered.recv())
        .await
        .expect("the worker opened a sync with the only member it knows")
        .unwrap();
    assert_eq!(request.len(), sync::SYNC_REQUEST_BYTES);
    // Told every leaf differs, it wants them all, naming what it holds: its own record, and at
    // most the hostile member's.
    let want = tokio::time::timeout(Duration::from_secs(10), answered.recv())
        .await
        .expect("the worker asked for the leaves that differ")
        .unwrap();
    let Some(sync::Request::Want(leaves)) = sync::decode_request(&want) else {
        panic!("not a want: {want:?}");
    };
    assert_eq!(leaves.len(), sync::SYNC_LEAVES);
    let held: usize = leaves.iter().map(|wanted| wanted.held.len()).sum();
    assert!((1..=2).contains(&held), "{held} records named as held");
    assert!(want.len() <= sync::MAX_WANT_BYTES);

    let newcomer_hex = hex::encode(newcomer.worker_key);
    let victim_hex = hex::encode(victim.public_key().to_bytes());
    let addr = worker.addr.clone();
    let view = tokio::task::spawn_blocking(move || {
        let mut view = Vec::new();
        wait_until(
            "the newcomer from the sync answer is listed",
            Duration::from_secs(10),
            || {
                view = peers(&addr, &key);
                view.iter()
                    .any(|peer| peer["peer"] == newcomer_hex.as_str())
            },
        );
        view
    })
    .await
    .unwrap();
    assert!(
        view.iter().all(|peer| peer["peer"] != victim_hex.as_str()),
        "the forged record was taken: {view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_sync_request_is_cut_at_its_bound_and_the_worker_answers_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let worker = gossiping_worker(dir.path(), "w", &key, None);
    let target: PeerAddr = worker.seed.as_deref().unwrap().parse().unwrap();
    let (_me, _endpoint, connection) = connect(&target).await;

    // 1 MiB where 45,060 bytes are allowed (the largest want): the stream is stopped, nothing is
    // answered.
    let oversized = vec![7u8; 1 << 20];
    let refused = ask(&connection, &oversized).await;
    assert!(refused.is_err(), "an oversized request was answered");

    // The same connection's next, well-formed request is answered: first with the leaf
    // digests of the worker's bucket (its view holds itself; every digest asked was zero),
    // then, asked for its leaf, with the worker's record.
    let answer = ask(&connection, &request()).await.expect("answered");
    let own = target.key.to_bytes();
    let Some(sync::Answer::Leaves(buckets)) = sync::decode_answer(&answer, 100) else {
        panic!("not leaf digests: {answer:?}");
    };
    assert!(
        buckets
            .iter()
            .any(|(bucket, _)| usize::from(*bucket) == sync::bucket_of(&own)),
        "{buckets:?}"
    );
    let want = sync::encode_want(&[sync::Wanted {
        leaf: sync::leaf_of(&own) as u16,
        held: Vec::new(),
    }]);
    let answer = ask(&connection, &want).await.expect("answered");
    let Some(sync::Answer::Records(members)) = sync::decode_answer(&answer, 100) else {
        panic!("not records: {answer:?}");
    };
    assert!(
        members
            .iter()
            .any(|member| member.id().worker_key == target.key.to_bytes()),
        "{members:?}"
    );
    let addr = worker.addr.clone();
    let result = tokio::task::spawn_blocking(move || exec(&addr, &key, "hello", &[], &[]))
        .await
        .unwrap();
    assert_eq!(result.code, Some(0), "{}", result.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_flood_is_refused_at_the_rate_limit_and_honest_peers_are_still_answered() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate(dir.path(), "k.key");
    let worker = gossiping_worker(dir.path(), "w", &key, None);
    let target: PeerAddr = worker.seed.as_deref().unwrap().parse().unwrap();
    let (_flooder, _endpoint, connection) = connect(&target).await;

    let flood = 3 * SYNC_ANSWERS_BURST as usize;
    let started = Instant::now();
    let (mut answered, mut refused) = (0usize, 0usize);
    for _ in 0..flood {
        match ask(&connection, &request()).await {
            Ok(answer) if sync::decode_answer(&answer, 100).is_some() => answered += 1,
            _ => refused += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound =
        SYNC_ANSWERS_BURST as usize + (f64::from(SYNC_ANSWERS_PER_SECOND) * elapsed) as usize + 1;
    eprintln!(
        "sync flood: {answered} answered, {refused} refused in {elapsed:.2} s (bound {bound})"
    );
    assert!(answered <= bound, "{answered} answered, bound {bound}");
    assert!(refused > 0, "the rate limit was never reached");

    // An honest peer is answered once the limit has room again (one token every 100 ms).
    let (_honest, _honest_endpoint, honest) = connect(&target).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let members = loop {
        if let Ok(answer) = ask(&honest, &request()).await
            && let Some(sync::Answer::Leaves(buckets)) = sync::decode_answer(&answer, 100)
        {
            break buckets;
        }
        assert!(
            Instant::now() < deadline,
            "the honest peer was never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!members.is_empty());
    let addr = worker.addr.clone();
    let result = tokio::task::spawn_blocking(move || exec(&addr, &key, "hello", &[], &[]))
        .await
        .unwrap();
    assert_eq!(result.code, Some(0), "{}", result.stderr);
}
