//! A test network of Linux network namespaces: a public "internet" and homes behind NAT routers,
//! for tests of hole punching and relaying between real processes (issue 14).
//!
//! Topology of a [`Network`] (every namespace is made for it, and deleted when it drops):
//!
//! ```text
//!   public namespace: bridge br0 = the internet, 203.0.113.0/24
//!     br0 carries the public host's two addresses, 203.0.113.10 and 203.0.113.20
//!     │
//!     ├── veth ── router of home 0: wan 203.0.113.100 ── nftables NAT ── lan 198.51.100.1/26
//!     │                                                                    │ veth
//!     │                                                   host of home 0: eth0 198.51.100.2/26
//!     ├── veth ── router of home 1: wan 203.0.113.101 … lan 198.51.100.65/26 … host .66
//!     …
//! ```
//!
//! Homes 0–3 use 198.51.100.0/24 and homes 4–7 use 192.0.2.0/24, one /26 each; only the three
//! documentation ranges (RFC 5737) appear, and only inside these namespaces. The root namespace's
//! addresses, routes and firewall are never touched: veths are created directly into their
//! namespaces, so their names need only be unique within one namespace.
//!
//! Every router runs one nftables table (namespaces isolate nftables, so nothing leaks) that
//! makes it one of the [`Nat`] kinds, and drops whatever arrives unsolicited from the WAN side,
//! like a home router.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); without them [`Network::build`] panics
//! saying what to install: a test of NAT traversal must never pass by skipping.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns` keeps the namespaces it names (one file each, a bind mount of the namespace).
const NETNS_DIR: &str = "/var/run/netns";

/// The name that [`Network::command`] and [`Network::in_namespace`] give the public host.
pub const PUBLIC: &str = "public";

/// The public host's addresses, both on the public namespace's bridge: the first for a relay or
/// seed, the second for another public peer (a second relay, a second destination for
/// mapping tests). A process there that binds 0.0.0.0 answers on both.
pub const PUBLIC_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 20),
];

/// The most homes one network holds: four /26 LANs in each of two documentation /24s.
pub const MAX_HOMES: usize = 8;

/// The longest home name: it becomes part of namespace names, and short names read better in
/// `ip netns list`.
pub const MAX_HOME_NAME_LEN: usize = 16;

/// How a home's router translates and filters what its host sends to the internet.
///
/// Whatever the kind, nothing unsolicited from the internet reaches the home: the router's
/// forward chain lets WAN → LAN traffic through only when conntrack says it is `established` or
/// `related` (a reply), and its input chain drops new traffic arriving on the WAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nat {
    /// `masquerade` (Linux conntrack): a host's source port is kept whenever it is free on the
    /// WAN address, so one socket shows the same mapped address to every destination
    /// (endpoint-independent mapping); only the address and port a host has sent to may answer
    /// (address-and-port-dependent filtering). Hole punching works.
    Easy,
    /// `masquerade fully-random`: each new flow (5-tuple) gets a fresh random source port, so a
    /// peer cannot learn from a third party which port will reach this host
    /// (endpoint-dependent mapping, a "symmetric" NAT). Hole punching to it fails.
    Hard,
    /// `masquerade`, but any UDP from the LAN to the WAN is dropped: only TCP leaves (a relay
    /// reached over HTTPS, or nothing).
    UdpBlocked,
}

impl Nat {
    /// The nftables rule set of a router of this kind, its WAN interface named `wan` and its
    /// LAN interface `lan`: one table, loaded with `nft -f -`.
    pub fn ruleset(self) -> String {
        let masquerade = match self {
            Nat::Easy | Nat::UdpBlocked => "masquerade",
            Nat::Hard => "masquerade fully-random",
        };
        let udp_drop = match self {
            Nat::UdpBlocked => "        iifname \"lan\" oifname \"wan\" meta l4proto udp drop\n",
            Nat::Easy | Nat::Hard => "",
        };
        // The input chain matters for hole punching, not only for realism: a packet to the WAN
        // address that nobody listens for would otherwise be accepted locally, and its conntrack
        // entry (peer → WAN:port) would then make the host's own punch out of that port clash
        // and be masqueraded to another port. Dropping it in a filter chain discards the entry
        // before conntrack confirms it.
        format!(
            "table ip peergrid_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"wan\" {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
{udp_drop}        ct state established,related accept
        iifname \"lan\" oifname \"wan\" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"wan\" ct state established,related accept
        iifname \"wan\" drop
    }}
}}
"
        )
    }
}

/// One home of a [`Network`]: a host behind its own NAT router.
#[derive(Debug, Clone)]
pub struct Home {
    /// The name the test gave it; [`Network::command`] and [`Network::in_namespace`] take it,
    /// and `NAME/router` for its router.
    pub name: String,
    /// How its router translates.
    pub nat: Nat,
    /// The host's address on the LAN (its default route is the router).
    pub host_ip: Ipv4Addr,
    /// The router's address on the LAN, the host's gateway.
    pub gateway_ip: Ipv4Addr,
    /// The router's public address: what the internet sees as the host's source address.
    pub wan_ip: Ipv4Addr,
    /// The host's namespace (`ip netns exec` name).
    pub namespace: String,
    /// The router's namespace, where its nftables table and conntrack state live.
    pub router_namespace: String,
}

/// A test network of namespaces (see the module documentation for the topology). Every
/// namespace it made is deleted when it drops, also when a test panics; processes still running
/// inside then keep their namespace alive but nameless, so drop (kill) them first.
#[derive(Debug)]
pub struct Network {
    public_namespace: String,
    homes: Vec<Home>,
    /// Every namespace made so far, in order: what `Drop` deletes, filled as the build goes so
    /// that a build failing half-way cleans up too.
    made: Vec<String>,
}

/// Numbers the networks of this process, so that namespace names are unique per network.
static NETWORKS_MADE: AtomicU32 = AtomicU32::new(0);

impl Network {
    /// Builds the public namespace and one home per `(name, nat)`: the home's router (WAN
    /// 203.0.113.(100+i), LAN gateway .1 of the i-th /26) and its host (.2, default route via the
    /// router). Namespaces are named `pg{pid}x{n}-public`, `…-r-NAME` (router) and `…-h-NAME`
    /// (host), unique per process and network; namespaces left by earlier processes that no
    /// longer run (killed before they could clean up) are deleted first.
    ///
    /// Panics, naming the command and its stderr, if any step fails; panics saying what to
    /// install if not root or `ip`/`nft` is missing; and on bad names (empty, not
    /// `[a-z0-9-]`, longer than [`MAX_HOME_NAME_LEN`], [`PUBLIC`], repeated) or more than
    /// [`MAX_HOMES`] homes.
    pub fn build(homes: &[(&str, Nat)]) -> Network {
        check_prerequisites();
        check_home_names(homes);
        delete_stale_namespaces();

        let prefix = format!(
            "pg{}x{}-",
            std::process::id(),
            NETWORKS_MADE.fetch_add(1, Ordering::Relaxed)
        );
        let mut network = Network {
            public_namespace: format!("{prefix}{PUBLIC}"),
            homes: Vec::with_capacity(homes.len()),
            made: Vec::new(),
        };
        let public = network.public_namespace.clone();
        add_namespace(&mut network.made, &public);
        ip(&public, &["link", "add", "br0", "type", "bridge"]);
        ip(&public, &["link", "set", "br0", "up"]);
        for address in PUBLIC_IPS {
            ip(
                &public,
                &["addr", "add", &format!("{address}/24"), "dev", "br0"],
            );
        }
        for (index, &(name, nat)) in homes.iter().enumerate() {
            network.add_home(&prefix, index, name, nat);
        }
        network
    }

    /// Adds the `index`-th home: router and host namespaces, their veths, addresses, route,
    /// forwarding and NAT rules.
    fn add_home(&mut self, prefix: &str, index: usize, name: &str, nat: Nat) {
        let (lan_base, wan_ip) = home_addresses(index);
        let [a, b, c, base] = lan_base.octets();
        let gateway_ip = Ipv4Addr::new(a, b, c, base + 1);
        let host_ip = Ipv4Addr::new(a, b, c, base + 2);
        let home = Home {
            name: name.to_owned(),
            nat,
            host_ip,
            gateway_ip,
            wan_ip,
            // Distinct prefixes: no home name can make another's router or host name.
            namespace: format!("{prefix}h-{name}"),
            router_namespace: format!("{prefix}r-{name}"),
        };
        let (public, router, host) = (
            &self.public_namespace,
            &home.router_namespace,
            &home.namespace,
        );
        add_namespace(&mut self.made, router);
        add_namespace(&mut self.made, host);

        // WAN: router `wan` ↔ public `home{index}`, a port of the bridge.
        let port = format!("home{index}");
        run(Command::new("ip")
            .args(["link", "add", "wan", "netns", router, "type", "veth"])
            .args(["peer", "name", &port, "netns", public]));
        ip(public, &["link", "set", &port, "master", "br0", "up"]);
        ip(
            router,
            &["addr", "add", &format!("{wan_ip}/24"), "dev", "wan"],
        );
        ip(router, &["link", "set", "wan", "up"]);

        // LAN: router `lan` ↔ host `eth0`.
        run(Command::new("ip")
            .args(["link", "add", "lan", "netns", router, "type", "veth"])
            .args(["peer", "name", "eth0", "netns", host]));
        ip(
            router,
            &["addr", "add", &format!("{gateway_ip}/26"), "dev", "lan"],
        );
        ip(router, &["link", "set", "lan", "up"]);
        ip(
            host,
            &["addr", "add", &format!("{host_ip}/26"), "dev", "eth0"],
        );
        ip(host, &["link", "set", "eth0", "up"]);
        ip(
            host,
            &["route", "add", "default", "via", &gateway_ip.to_string()],
        );

        write_sysctl(router, "net/ipv4/ip_forward", "1");
        load_ruleset(router, &nat.ruleset());
        self.homes.push(home);
    }

    /// The public host's addresses ([`PUBLIC_IPS`]).
    pub fn public_ips(&self) -> [Ipv4Addr; 2] {
        PUBLIC_IPS
    }

    /// The public host's first address, 203.0.113.10: where a relay or seed listens.
    pub fn public_ip(&self) -> Ipv4Addr {
        PUBLIC_IPS[0]
    }

    /// The homes, in the order given to [`Network::build`].
    pub fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// The home named `name`; panics if there is none.
    pub fn home(&self, name: &str) -> &Home {
        self.homes
            .iter()
            .find(|home| home.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "the network has no home {name:?}; it has {:?}",
                    self.home_names()
                )
            })
    }

    /// The LAN address of the host of home `name`.
    pub fn host_ip(&self, name: &str) -> Ipv4Addr {
        self.home(name).host_ip
    }

    /// The public (WAN) address of the router of home `name`.
    pub fn wan_ip(&self, name: &str) -> Ipv4Addr {
        self.home(name).wan_ip
    }

    /// The namespace of `host`: [`PUBLIC`] for the public host, a home's name for its host, or
    /// `NAME/router` for a home's router (for looking at its state: `nft list ruleset`,
    /// `conntrack -L`). Panics on any other name.
    pub fn namespace(&self, host: &str) -> &str {
        if host == PUBLIC {
            return &self.public_namespace;
        }
        match host.strip_suffix("/router") {
            Some(home) => &self.home(home).router_namespace,
            None => &self.home(host).namespace,
        }
    }

    /// Every namespace this network made (public, then each home's router and host).
    pub fn namespaces(&self) -> &[String] {
        &self.made
    }

    /// A command that runs `program` inside `host`'s namespace (see [`Network::namespace`] for
    /// the names): `ip netns exec NAMESPACE program`; add arguments, spawn it as usual. `ip`
    /// execs the program, so the child's pid is the program's own.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.namespace(host)])
            .arg(program);
        command
    }

    /// Runs `f` on a fresh thread that has entered `host`'s namespace (`setns`), and returns
    /// what it returns; a panic in `f` is resumed here. Sockets made in `f` stay in the
    /// namespace for their whole life, so `f` can simply return them; threads `f` starts (a
    /// tokio runtime's workers) are in the namespace too. The calling thread is unaffected.
    pub fn in_namespace<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> T {
        run_in_namespace(self.namespace(host), f)
    }

    fn home_names(&self) -> Vec<&str> {
        self.homes.iter().map(|home| home.name.as_str()).collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // No panic here: this also runs while a failed test unwinds, and a second panic aborts.
        for namespace in self.made.iter().rev() {
            if let Err(error) = delete_namespace(namespace) {
                eprintln!("netns: {error}");
            }
        }
    }
}

/// The base of the `index`-th home's /26 LAN and its router's WAN address.
fn home_addresses(index: usize) -> (Ipv4Addr, Ipv4Addr) {
    assert!(index < MAX_HOMES, "at most {MAX_HOMES} homes");
    let slot = u8::try_from(index % 4).expect("index < 8");
    let lan_base = if index < 4 {
        Ipv4Addr::new(198, 51, 100, 64 * slot)
    } else {
        Ipv4Addr::new(192, 0, 2, 64 * slot)
    };
    let wan_ip = Ipv4Addr::new(203, 0, 113, 100 + u8::try_from(index).expect("index < 8"));
    (lan_base, wan_ip)
}

fn check_home_names(homes: &[(&str, Nat)]) {
    assert!(
        homes.len() <= MAX_HOMES,
        "a network holds at most {MAX_HOMES} homes, not {}",
        homes.len()
    );
    for (index, (name, _)) in homes.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= MAX_HOME_NAME_LEN
            && name
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
        assert!(
            valid,
            "home name {name:?} must be 1 to {MAX_HOME_NAME_LEN} characters of a-z, 0-9 and '-', e.g. \"alice\""
        );
        assert_ne!(
            *name, PUBLIC,
            "{PUBLIC:?} names the public host, not a home"
        );
        assert!(
            !homes[..index].iter().any(|(other, _)| other == name),
            "home name {name:?} is given twice"
        );
    }
}

/// Panics, saying what to install or how to run, unless this process is root and `ip` and `nft`
/// run. Checked once per process.
fn check_prerequisites() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "the namespace test network needs root (network namespaces, veths, nftables): \
                 run the tests as root, as CI does"
                    .to_owned(),
            );
        }
        for (program, version_flag, package) in
            [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")]
        {
            let runs = Command::new(program)
                .arg(version_flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !runs {
                return Err(format!(
                    "the namespace test network needs `{program}`, which does not run: install \
                     {package} (apt-get install -y {package}; .ci/run does this in CI), and \
                     have /usr/sbin on PATH"
                ));
            }
        }
        Ok(())
    });
    if let Err(message) = checked {
        panic!("{message}");
    }
}

/// Deletes namespaces of earlier networks whose process is gone (a test killed by SIGKILL
/// cannot clean up). Names `pg{pid}x{n}-…` of a running process are left alone, whichever
/// process it is: a pid reused since costs a leftover namespace, never a live one.
fn delete_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return; // No namespace was ever named on this machine.
    };
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if pid == own_pid || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let name = name.to_string_lossy();
        // Another process may be deleting the same one: only a namespace still there is an error.
        if let Err(error) = delete_namespace(&name) {
            assert!(!netns_path(&name).exists(), "stale namespace: {error}");
        }
    }
}

/// The pid in a namespace name this module makes (`pg{pid}x{n}-…`), or `None` for any other name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("pg")?;
    let (pid, rest) = rest.split_once('x')?;
    let (network, _) = rest.split_once('-')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(pid) || !digits(network) {
        return None;
    }
    pid.parse().ok()
}

fn netns_path(namespace: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(namespace)
}

/// Creates namespace `name`, recording it in `made` first, with `lo` up (peergrid binds
/// loopback in places) and IPv6 off for interfaces made in it later, so they carry no link-local
/// address outside the documentation ranges (`lo` keeps `::1`).
fn add_namespace(made: &mut Vec<String>, name: &str) {
    run(Command::new("ip").args(["netns", "add", name]));
    made.push(name.to_owned());
    ip(name, &["link", "set", "lo", "up"]);
    if Path::new("/proc/sys/net/ipv6").exists() {
        write_sysctl(name, "net/ipv6/conf/default/disable_ipv6", "1");
    }
}

fn delete_namespace(name: &str) -> Result<(), String> {
    let mut command = Command::new("ip");
    command.args(["netns", "del", name]);
    let output = command
        .output()
        .map_err(|error| format!("{} does not start: {error}", command_line(&command)))?;
    check(&command, &output)
}

/// `ip -n NAMESPACE ARGS…`, checked.
fn ip(namespace: &str, args: &[&str]) {
    run(Command::new("ip").args(["-n", namespace]).args(args));
}

/// Writes `value` to `/proc/sys/KEY` of `namespace` (the sysctl files under `net/` show the
/// namespace of the thread that opens them).
fn write_sysctl(namespace: &str, key: &str, value: &str) {
    let path = Path::new("/proc/sys").join(key);
    run_in_namespace(namespace, || {
        std::fs::write(&path, value).unwrap_or_else(|error| {
            panic!(
                "cannot set {} to {value} in {namespace}: {error}",
                path.display()
            )
        })
    });
}

/// `nft -f -` in `namespace`, fed `ruleset`, checked.
fn load_ruleset(namespace: &str, ruleset: &str) {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("{} does not start: {error}", command_line(&command)));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(ruleset.as_bytes())
        .unwrap_or_else(|error| panic!("cannot feed {}: {error}", command_line(&command)));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("{} cannot be waited for: {error}", command_line(&command)));
    if let Err(error) = check(&command, &output) {
        panic!("{error}\nthe rule set:\n{ruleset}");
    }
}

/// Runs `command` to completion; panics with its command line and stderr unless it succeeds.
fn run(command: &mut Command) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("{} does not start: {error}", command_line(command)));
    if let Err(error) = check(command, &output) {
        panic!("{error}");
    }
}

fn check(command: &Command, output: &Output) -> Result<(), String> {
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{}` failed ({}): {}",
        command_line(command),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

fn command_line(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    line
}

/// Runs `f` on a new thread that has joined `namespace` with `setns(CLONE_NEWNET)`.
fn run_in_namespace<T: Send>(namespace: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = netns_path(namespace);
    let file = File::open(&path)
        .unwrap_or_else(|error| panic!("cannot open namespace {}: {error}", path.display()));
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("netns {namespace}"))
            .spawn_scoped(scope, move || {
                // SAFETY: `file` is an open namespace file for the whole call; CLONE_NEWNET
                // changes the network namespace of this thread alone, which owns no sockets yet.
                let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    entered,
                    0,
                    "setns into {namespace} failed: {}",
                    std::io::Error::last_os_error()
                );
                drop(file);
                f()
            })
            .expect("a thread can be started");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_this_module_carry_an_owner_pid() {
        assert_eq!(owner_pid("pg123x4-public"), Some(123));
        assert_eq!(owner_pid("pg123x4-r-alice"), Some(123));
        for other in [
            "pg", "pgx1-a", "pg12x-a", "pg12x3", "pgfoo", "pg1y2-a", "ns1", "pg1x2a-b",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn homes_get_disjoint_documentation_addresses() {
        let mut seen = std::collections::HashSet::new();
        for index in 0..MAX_HOMES {
            let (lan, wan) = home_addresses(index);
            assert!(
                seen.insert(lan) && seen.insert(wan),
                "home {index}: {lan} {wan}"
            );
            assert_eq!(lan.octets()[3] % 64, 0, "a /26 base");
            assert_eq!(&wan.octets()[..3], &[203, 0, 113]);
            assert!(matches!(lan.octets()[..3], [198, 51, 100] | [192, 0, 2]));
        }
    }
}
