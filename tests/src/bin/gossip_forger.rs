//! A hostile gossip peer for the membership attack tests: it connects to a worker's endpoint
//! with the gossip ALPN as itself (its own key, the only one it can prove) and sends forged
//! packets as QUIC datagrams.
//!
//! ```text
//! gossip_forger --target KEY@IP:PORT --mode usurp --victim HEX [--for-ms MS]
//! gossip_forger --target KEY@IP:PORT --mode flood --records N (--point-at IP:PORT | --spread)
//!               [--keep-alive] [--for-ms MS]
//! ```
//!
//! - `usurp`: claims to be the victim (the usurper record of the old UDP attack: the victim's
//!   key at this forger's address with incarnation u64::MAX, signed by the forger), both as the
//!   packet's sender and as gossip about the victim.
//! - `flood`: gossips `N` new members, each with a fresh key and a valid self-signed record,
//!   all pointing at one address (`--point-at`, a reflection attempt) or each at its own
//!   loopback address (`--spread`, a table flood). With `--keep-alive` it makes the `N` records
//!   once and gossips them again every 100 ms until `--for-ms`, each time at a higher foca
//!   incarnation (a refutation on their behalf), so they stay alive in the worker's view however
//!   often its probes fail.
//!
//! It learns the worker's own record by announcing itself first (foca only takes a non-announce
//! packet addressed to the receiver's exact record). Sends are bounded by `--records` and
//! `--for-ms` (default 3 s). Ends with one line: `gossip_forger: sent P packets, R records`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use foca::{Codec, Header, Member, Message, PostcardCodec};
use peergrid_proto::transport::{self, PeerAddr};
use peergrid_proto::{Identity, PublicKey};
use peergrid_worker::membership::core::MAX_PACKET_BYTES;
use peergrid_worker::membership::{GOSSIP_ALPN, MemberRecord, PeerIdentity};

fn fail(problem: &str) -> ! {
    eprintln!("gossip_forger: {problem}");
    std::process::exit(2);
}

struct Args {
    target: PeerAddr,
    mode: String,
    victim: Option<PublicKey>,
    records: usize,
    point_at: Option<SocketAddr>,
    keep_alive: bool,
    for_ms: u64,
}

fn args() -> Args {
    let mut args = Args {
        target: PeerAddr::direct(
            Identity::from_seed([0; 32]).public_key(),
            "127.0.0.1:1".parse().expect("valid"),
        ),
        mode: String::new(),
        victim: None,
        records: 0,
        point_at: None,
        keep_alive: false,
        for_ms: 3_000,
    };
    let mut target = None;
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--spread" {
            args.point_at = None;
            continue;
        }
        if flag == "--keep-alive" {
            args.keep_alive = true;
            continue;
        }
        let value = argv
            .next()
            .unwrap_or_else(|| fail(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--target" => target = Some(value.parse().unwrap_or_else(|_| fail("bad --target"))),
            "--mode" => args.mode = value,
            "--victim" => {
                args.victim = Some(value.parse().unwrap_or_else(|_| fail("bad --victim")));
            }
            "--records" => args.records = value.parse().unwrap_or_else(|_| fail("bad --records")),
            "--point-at" => {
                args.point_at = Some(value.parse().unwrap_or_else(|_| fail("bad --point-at")));
            }
            "--for-ms" => args.for_ms = value.parse().unwrap_or_else(|_| fail("bad --for-ms")),
            other => fail(&format!("unknown flag {other}")),
        }
    }
    args.target = target.unwrap_or_else(|| fail("--target is required"));
    args
}

fn encode(header: &Header<PeerIdentity>, updates: &[Member<PeerIdentity>]) -> Bytes {
    let mut codec = PostcardCodec;
    let mut data = Vec::new();
    codec.encode_header(header, &mut data).expect("encodes");
    if header.message != Message::Announce {
        data.put_u16(updates.len() as u16);
        for update in updates {
            codec.encode_member(update, &mut data).expect("encodes");
        }
    }
    Bytes::from(data)
}

#[tokio::main]
async fn main() {
    let args = args();
    let me = Arc::new(Identity::generate());
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let endpoint = transport::bind_endpoint(&me, bind, Vec::new(), &[])
        .await
        .unwrap_or_else(|error| fail(&error.to_string()));
    let local = transport::bound_addr(&endpoint).expect("bound");
    let connection = transport::connect(&endpoint, &args.target, GOSSIP_ALPN)
        .await
        .unwrap_or_else(|error| fail(&error.to_string()));
    let own = PeerIdentity::signed(&me, local, "forger".into(), 1, 1).expect("short");
    // Announce, and take the worker's own record from its reply.
    let announce = Header {
        src: own.clone(),
        src_incarnation: 0,
        dst: PeerIdentity::placeholder(&args.target),
        message: Message::Announce,
    };
    connection
        .send_datagram(encode(&announce, &[]))
        .unwrap_or_else(|error| fail(&format!("cannot send: {error}")));
    let reply = tokio::time::timeout(Duration::from_secs(5), connection.read_datagram())
        .await
        .unwrap_or_else(|_| fail("the worker did not answer the announcement"))
        .unwrap_or_else(|error| fail(&format!("connection lost: {error}")));
    let mut codec = PostcardCodec;
    let worker: PeerIdentity = codec
        .decode_header(&mut &reply[..])
        .unwrap_or_else(|error| fail(&format!("reply does not decode: {error:?}")))
        .src;

    let deadline = Instant::now() + Duration::from_millis(args.for_ms);
    let (mut packets, mut records) = (0usize, 0usize);
    let mut send = |header: &Header<PeerIdentity>, updates: &[Member<PeerIdentity>]| {
        let data = encode(header, updates);
        assert!(data.len() <= MAX_PACKET_BYTES, "{} bytes", data.len());
        if connection.send_datagram(data).is_ok() {
            packets += 1;
            records += updates.len();
        }
    };
    let gossip = |src: PeerIdentity| Header {
        src,
        src_incarnation: 0,
        dst: worker.clone(),
        message: Message::Gossip,
    };
    match args.mode.as_str() {
        "usurp" => {
            let victim = args.victim.unwrap_or_else(|| fail("usurp needs --victim"));
            let usurper = PeerIdentity::from(MemberRecord {
                worker_key: victim.to_bytes(),
                incarnation: u64::MAX,
                ..(*own).clone()
            });
            while Instant::now() < deadline {
                // As the sender (over a connection that proved another key), and as news.
                send(&gossip(usurper.clone()), &[]);
                send(&gossip(own.clone()), &[Member::alive(usurper.clone())]);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        "flood" if args.keep_alive => {
            let fakes: Vec<PeerIdentity> = (0..args.records)
                .map(|n| {
                    let addr = args.point_at.unwrap_or_else(|| {
                        SocketAddr::from(([127, 3, (n >> 8) as u8, n as u8], 9))
                    });
                    PeerIdentity::signed(&Identity::generate(), addr, "forger".into(), 64, 1)
                        .expect("short")
                })
                .collect();
            let mut round: u16 = 0;
            while Instant::now() < deadline {
                round = round.saturating_add(1);
                for chunk in fakes.chunks(4) {
                    let batch: Vec<Member<PeerIdentity>> = chunk
                        .iter()
                        .map(|fake| Member::new(fake.clone(), round, foca::State::Alive))
                        .collect();
                    send(&gossip(own.clone()), &batch);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        "flood" => {
            let mut made = 0usize;
            while made < args.records && Instant::now() < deadline {
                let batch: Vec<Member<PeerIdentity>> = (0..4)
                    .map(|index| {
                        let n = made + index;
                        let addr = args.point_at.unwrap_or_else(|| {
                            SocketAddr::from(([127, 3, (n >> 8) as u8, n as u8], 9))
                        });
                        let key = Identity::generate();
                        Member::alive(
                            PeerIdentity::signed(&key, addr, "forger".into(), 64, 1)
                                .expect("short"),
                        )
                    })
                    .collect();
                made += batch.len();
                send(&gossip(own.clone()), &batch);
                if made % 200 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        other => fail(&format!("unknown mode {other:?}")),
    }
    println!("gossip_forger: sent {packets} packets, {records} records");
    connection.close(0u32.into(), b"done");
    endpoint.close().await;
}
