//! The namespace test network (`peergrid_e2e::netns`) behaves like the internet with home NATs:
//! proven with plain UDP and TCP sockets made inside its namespaces, before any peergrid process
//! relies on it. Needs root, `ip` and `nft`; each test builds a network of its own.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::time::{Duration, Instant};

use peergrid_e2e::netns::{Nat, Network, PUBLIC};

/// The longest a datagram or connection that should arrive may take: a bound for a loaded
/// machine, not an expected time (they arrive in well under a millisecond).
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a socket must stay silent before a test concludes nothing more is coming.
const QUIET: Duration = Duration::from_millis(500);

/// At most this many datagrams are read while draining a socket.
const DRAIN_MAX: usize = 64;

/// A UDP socket on a free port of `ip`, in whichever namespace the calling thread is in.
fn udp_socket(ip: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind((ip, 0)).unwrap_or_else(|error| panic!("cannot bind UDP on {ip}: {error}"))
}

/// The next datagram on `socket` (text, sender), or `None` if none arrives `within`.
fn receive(socket: &UdpSocket, within: Duration) -> Option<(String, SocketAddr)> {
    let deadline = Instant::now() + within;
    let mut buffer = [0; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket
            .set_read_timeout(Some(left))
            .expect("a non-zero timeout");
        match socket.recv_from(&mut buffer) {
            Ok((length, from)) => {
                return Some((
                    String::from_utf8_lossy(&buffer[..length]).into_owned(),
                    from,
                ));
            }
            Err(error) => match error.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => return None,
                // A socket with a receive timeout is never restarted after a signal, not even
                // after a stop and continue (signal(7)): wait out the rest of the time.
                ErrorKind::Interrupted => continue,
                _ => panic!("recv_from failed: {error}"),
            },
        }
    }
}

/// The next datagram on `socket`, which must arrive within [`ARRIVAL_TIMEOUT`].
fn expect_datagram(socket: &UdpSocket, what: &str) -> (String, SocketAddr) {
    receive(socket, ARRIVAL_TIMEOUT)
        .unwrap_or_else(|| panic!("{what} did not arrive within {ARRIVAL_TIMEOUT:?}"))
}

/// Every datagram that reaches `socket` until it stays silent for [`QUIET`].
fn drain(socket: &UdpSocket) -> Vec<(String, SocketAddr)> {
    let mut received = Vec::new();
    while let Some(datagram) = receive(socket, QUIET) {
        received.push(datagram);
        assert!(received.len() <= DRAIN_MAX, "a flood: {received:?}");
    }
    received
}

/// The names `ip netns list` shows.
fn listed_namespaces() -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    assert!(output.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// What each side of a hole punch heard from the other.
#[derive(Debug, PartialEq)]
struct Punch {
    a_heard_b: bool,
    b_heard_a: bool,
}

/// Hole punching as a peer-to-peer library does it, between the hosts of homes `a` and `b`:
/// each sends to a rendezvous socket on the public host, which tells each the address it saw
/// the other come from; then both send to that address, `rounds` times, each round waiting at
/// most `round_wait` for the other's datagram.
fn punch(network: &Network, a: &str, b: &str, rounds: u32, round_wait: Duration) -> Punch {
    let rendezvous = network.in_namespace(PUBLIC, || udp_socket(network.public_ip()));
    let rendezvous_addr = rendezvous.local_addr().expect("bound");
    let socket_a = network.in_namespace(a, || udp_socket(Ipv4Addr::UNSPECIFIED));
    let socket_b = network.in_namespace(b, || udp_socket(Ipv4Addr::UNSPECIFIED));
    socket_a.send_to(b"a", rendezvous_addr).expect("a sends");
    socket_b.send_to(b"b", rendezvous_addr).expect("b sends");

    let mut observed = HashMap::new();
    for _ in 0..2 {
        let (name, from) = expect_datagram(&rendezvous, "a host's hello to the rendezvous");
        observed.insert(name, from);
    }
    let (seen_a, seen_b) = (observed["a"], observed["b"]);
    assert_eq!(seen_a.ip(), network.wan_ip(a), "a arrives from its router");
    assert_eq!(seen_b.ip(), network.wan_ip(b), "b arrives from its router");
    rendezvous
        .send_to(seen_b.to_string().as_bytes(), seen_a)
        .expect("rendezvous answers a");
    rendezvous
        .send_to(seen_a.to_string().as_bytes(), seen_b)
        .expect("rendezvous answers b");
    let learn = |socket: &UdpSocket| -> SocketAddr {
        let (text, from) = expect_datagram(socket, "the rendezvous's answer");
        assert_eq!(
            from, rendezvous_addr,
            "the answer comes from the rendezvous"
        );
        text.parse().expect("the answer is an address")
    };
    let (b_addr, a_addr) = (learn(&socket_a), learn(&socket_b));

    let mut outcome = Punch {
        a_heard_b: false,
        b_heard_a: false,
    };
    let hears = |socket: &UdpSocket, from: SocketAddr, text: &str, wait: Duration| {
        receive(socket, wait).is_some_and(|datagram| datagram == (text.to_owned(), from))
    };
    for _ in 0..rounds {
        if outcome.a_heard_b && outcome.b_heard_a {
            break;
        }
        socket_a.send_to(b"punch from a", b_addr).expect("a sends");
        socket_b.send_to(b"punch from b", a_addr).expect("b sends");
        // A datagram arriving while the other socket is read waits in its buffer.
        if !outcome.a_heard_b {
            outcome.a_heard_b = hears(&socket_a, b_addr, "punch from b", round_wait / 2);
        }
        if !outcome.b_heard_a {
            outcome.b_heard_a = hears(&socket_b, a_addr, "punch from a", round_wait / 2);
        }
    }
    outcome
}

/// The source addresses the public host sees for one socket of `home`'s host sending to both
/// public addresses.
fn mapped_addresses(network: &Network, home: &str) -> [SocketAddr; 2] {
    let [first, second] = network.public_ips();
    let (to_first, to_second) =
        network.in_namespace(PUBLIC, || (udp_socket(first), udp_socket(second)));
    let host = network.in_namespace(home, || udp_socket(Ipv4Addr::UNSPECIFIED));
    for public in [&to_first, &to_second] {
        host.send_to(b"hello", public.local_addr().expect("bound"))
            .expect("the host sends");
    }
    [&to_first, &to_second].map(|public| expect_datagram(public, "the host's hello").1)
}

#[test]
fn easy_nat_maps_one_port_for_every_destination_and_lets_only_contacted_addresses_answer() {
    let network = Network::build(&[("home", Nat::Easy)]);
    let wan = network.wan_ip("home");
    let [first, second] = network.public_ips();
    let (to_first, to_second, stranger) = network.in_namespace(PUBLIC, || {
        (udp_socket(first), udp_socket(second), udp_socket(first))
    });
    let host = network.in_namespace("home", || udp_socket(Ipv4Addr::UNSPECIFIED));
    for public in [&to_first, &to_second] {
        host.send_to(b"hello", public.local_addr().expect("bound"))
            .expect("the host sends");
    }
    let (_, seen_by_first) = expect_datagram(&to_first, "the hello to the first public address");
    let (_, seen_by_second) = expect_datagram(&to_second, "the hello to the second public address");
    assert_eq!(
        seen_by_first.ip(),
        wan,
        "the source is the router's WAN address"
    );
    assert_eq!(
        seen_by_first, seen_by_second,
        "endpoint-independent mapping: both destinations see one mapped address"
    );

    // A stranger (another port of the same public host) writes to the mapped port first, then
    // the contacted socket replies: only the reply may reach the host.
    for _ in 0..3 {
        stranger
            .send_to(b"unsolicited", seen_by_first)
            .expect("the stranger sends");
    }
    to_first
        .send_to(b"reply", seen_by_first)
        .expect("the public host replies");
    let received = drain(&host);
    assert_eq!(
        received,
        vec![("reply".to_owned(), to_first.local_addr().expect("bound"))],
        "the reply arrives, the stranger's datagrams do not"
    );
}

#[test]
fn hole_punching_between_two_easy_homes_works() {
    let network = Network::build(&[("alice", Nat::Easy), ("bob", Nat::Easy)]);
    let outcome = punch(&network, "alice", "bob", 5, Duration::from_secs(1));
    assert_eq!(
        outcome,
        Punch {
            a_heard_b: true,
            b_heard_a: true
        }
    );
}

#[test]
fn hard_nat_maps_each_destination_to_its_own_port_and_hole_punching_to_it_fails() {
    let network = Network::build(&[("hard", Nat::Hard), ("easy", Nat::Easy)]);
    let [seen_by_first, seen_by_second] = mapped_addresses(&network, "hard");
    assert_eq!(seen_by_first.ip(), network.wan_ip("hard"));
    assert_eq!(seen_by_second.ip(), network.wan_ip("hard"));
    // fully-random draws each port at random: equal ports by chance are 1 in 64,512.
    assert_ne!(
        seen_by_first.port(),
        seen_by_second.port(),
        "endpoint-dependent mapping: each destination sees its own port"
    );

    let outcome = punch(&network, "hard", "easy", 3, Duration::from_millis(500));
    assert_eq!(
        outcome,
        Punch {
            a_heard_b: false,
            b_heard_a: false
        },
        "a hole punch through a hard NAT must fail"
    );
}

#[test]
fn udp_blocked_home_reaches_the_internet_over_tcp_only() {
    let network = Network::build(&[("open", Nat::Easy), ("blocked", Nat::UdpBlocked)]);
    let public = network.in_namespace(PUBLIC, || udp_socket(network.public_ip()));
    let public_addr = public.local_addr().expect("bound");
    let blocked = network.in_namespace("blocked", || udp_socket(Ipv4Addr::UNSPECIFIED));
    let open = network.in_namespace("open", || udp_socket(Ipv4Addr::UNSPECIFIED));
    for _ in 0..3 {
        blocked
            .send_to(b"from blocked", public_addr)
            .expect("the kernel accepts the datagram");
    }
    // The open home's datagram shows the public socket would have heard the blocked one.
    open.send_to(b"from open", public_addr)
        .expect("the open host sends");
    let received = drain(&public);
    let expected_from = SocketAddr::new(
        network.wan_ip("open").into(),
        open.local_addr().expect("bound").port(),
    );
    assert_eq!(received, vec![("from open".to_owned(), expected_from)]);

    let listener = network.in_namespace(PUBLIC, || {
        TcpListener::bind((network.public_ip(), 0)).expect("TCP binds on the public host")
    });
    let listener_addr = listener.local_addr().expect("bound");
    let mut stream = network.in_namespace("blocked", || {
        TcpStream::connect_timeout(&listener_addr, ARRIVAL_TIMEOUT)
            .expect("TCP from the UDP-blocked home connects")
    });
    // The connection is established, so accept returns at once.
    let (mut accepted, peer) = listener.accept().expect("the public host accepts");
    assert_eq!(
        peer.ip(),
        network.wan_ip("blocked"),
        "TCP is masqueraded too"
    );
    use std::io::{Read, Write};
    stream.write_all(b"ping").expect("the home writes");
    let mut word = [0; 4];
    accepted
        .set_read_timeout(Some(ARRIVAL_TIMEOUT))
        .expect("a non-zero timeout");
    accepted.read_exact(&mut word).expect("the bytes arrive");
    assert_eq!(&word, b"ping");
}

#[test]
fn dropping_the_network_deletes_its_namespaces_also_when_a_test_panics() {
    let network = Network::build(&[("a", Nat::Easy), ("b", Nat::Hard)]);
    let names = network.namespaces().to_vec();
    assert_eq!(names.len(), 5, "public, and a router and a host per home");
    let listed = listed_namespaces();
    assert!(
        names.iter().all(|name| listed.contains(name)),
        "{names:?} in {listed:?}"
    );
    drop(network);
    let listed = listed_namespaces();
    assert!(
        !names.iter().any(|name| listed.contains(name)),
        "{names:?} left in {listed:?}"
    );

    let mut names = Vec::new();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let network = Network::build(&[("c", Nat::UdpBlocked)]);
        names = network.namespaces().to_vec();
        panic!("a test fails while its network is up");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    assert_eq!(names.len(), 3);
    let listed = listed_namespaces();
    assert!(
        !names.iter().any(|name| listed.contains(name)),
        "{names:?} left in {listed:?}"
    );
}

#[test]
fn building_a_network_deletes_namespaces_left_by_a_dead_process() {
    let mut child = Command::new("true").spawn().expect("true runs");
    let dead_pid = child.id();
    child.wait().expect("true exits");
    let stale = format!("pg{dead_pid}x0-public");
    // Tests building networks in parallel delete such a namespace on sight, even while `ip` is
    // still making it (its file exists before it is mounted): then `ip` fails, and tries again.
    let mut attempts = 0;
    loop {
        let output = Command::new("ip")
            .args(["netns", "add", &stale])
            .output()
            .expect("ip runs");
        attempts += 1;
        if output.status.success() {
            break;
        }
        assert!(
            attempts < 5,
            "ip netns add {stale} failed {attempts} times, last: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let _network = Network::build(&[]);
    assert!(
        !listed_namespaces().contains(&stale),
        "{stale} of dead process {dead_pid} is still there"
    );
}

#[test]
fn commands_and_closures_run_inside_the_namespace_they_name() {
    let network = Network::build(&[("home", Nat::Hard)]);
    let home = network.home("home");
    let output = network
        .command("home", "ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip runs");
    assert!(output.status.success());
    let addresses = String::from_utf8_lossy(&output.stdout);
    assert!(
        addresses.contains(&format!("{}/26", home.host_ip)),
        "{addresses}"
    );
    assert!(addresses.contains("127.0.0.1/8"), "lo is up: {addresses}");
    assert!(!addresses.contains(&home.wan_ip.to_string()), "{addresses}");

    let output = network
        .command("home/router", "nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft runs");
    let ruleset = String::from_utf8_lossy(&output.stdout);
    assert!(ruleset.contains("masquerade fully-random"), "{ruleset}");

    // Binding an address only exists where its interface is: the host's LAN address.
    let host_ip = home.host_ip;
    assert!(network.in_namespace("home", || UdpSocket::bind((host_ip, 0)).is_ok()));
    assert!(network.in_namespace(PUBLIC, || UdpSocket::bind((host_ip, 0)).is_err()));
    assert!(
        UdpSocket::bind((host_ip, 0)).is_err(),
        "the test's own thread stays outside"
    );
}
