//! Where a webhook may go: the callback allow-list (`--allow-callback`)
//! and which addresses are public. Decided per address the callback's host
//! resolved to, so the caller resolves once and connects only to addresses
//! that passed.

use std::fmt;
// Addresses as values only: `core` has no sockets.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use globset::{GlobBuilder, GlobMatcher};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What kind of network an address belongs to. Only `Public` is reached
/// without being named in `--allow-callback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// RFC 1918, site-local IPv6 and local-use NAT64.
    Private,
    /// Carrier-grade NAT, 100.64.0.0/10.
    Shared,
    LinkLocal,
    UniqueLocal,
    Unspecified,
    Multicast,
    Documentation,
    Benchmarking,
    /// Set aside by the IETF, or not assigned for use on the internet.
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::Shared => "shared (carrier-grade NAT)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Reserved => "reserved",
        })
    }
}

const V4_RANGES: &[(&str, AddressClass)] = &[
    ("0.0.0.0/8", AddressClass::Unspecified),
    ("10.0.0.0/8", AddressClass::Private),
    ("100.64.0.0/10", AddressClass::Shared),
    ("127.0.0.0/8", AddressClass::Loopback),
    ("169.254.0.0/16", AddressClass::LinkLocal),
    ("172.16.0.0/12", AddressClass::Private),
    ("192.0.0.0/24", AddressClass::Reserved),
    ("192.0.2.0/24", AddressClass::Documentation),
    ("192.88.99.0/24", AddressClass::Reserved),
    ("192.168.0.0/16", AddressClass::Private),
    ("198.18.0.0/15", AddressClass::Benchmarking),
    ("198.51.100.0/24", AddressClass::Documentation),
    ("203.0.113.0/24", AddressClass::Documentation),
    ("224.0.0.0/4", AddressClass::Multicast),
    // Includes the broadcast address.
    ("240.0.0.0/4", AddressClass::Reserved),
];

const V6_RANGES: &[(&str, AddressClass)] = &[
    ("::/128", AddressClass::Unspecified),
    ("::1/128", AddressClass::Loopback),
    ("64:ff9b:1::/48", AddressClass::Private),
    ("100::/64", AddressClass::Reserved),
    // Teredo and other protocol assignments.
    ("2001::/23", AddressClass::Reserved),
    ("2001:db8::/32", AddressClass::Documentation),
    ("3fff::/20", AddressClass::Documentation),
    ("fc00::/7", AddressClass::UniqueLocal),
    ("fe80::/10", AddressClass::LinkLocal),
    ("fec0::/10", AddressClass::Private),
    ("ff00::/8", AddressClass::Multicast),
];

/// The class of `address`. An IPv6 address that carries an IPv4 one
/// (IPv4-mapped, NAT64, 6to4) is what that IPv4 address is: the packets
/// end up there.
pub fn classify(address: IpAddr) -> AddressClass {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(address: Ipv4Addr) -> AddressClass {
    V4_RANGES
        .iter()
        .find(|(range, _)| net::<Ipv4Net>(range).contains(&address))
        .map_or(AddressClass::Public, |(_, class)| *class)
}

fn classify_v6(address: Ipv6Addr) -> AddressClass {
    if let Some((_, class)) = V6_RANGES
        .iter()
        .find(|(range, _)| net::<Ipv6Net>(range).contains(&address))
    {
        return *class;
    }
    // Outside 2000::/3 nothing is assigned as global unicast.
    if net::<Ipv6Net>("2000::/3").contains(&address) {
        AddressClass::Public
    } else {
        AddressClass::Reserved
    }
}

fn net<N: FromStr>(text: &str) -> N
where
    N::Err: fmt::Debug,
{
    text.parse().expect("the ranges above are networks")
}

/// The IPv4 address an IPv6 one stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    let octets = address.octets();
    let last = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    if net::<Ipv6Net>("64:ff9b::/96").contains(&address) {
        return Some(last);
    }
    if net::<Ipv6Net>("2002::/16").contains(&address) {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

/// The operator's `--allow-callback` list: without entries, any public
/// address; with entries, only what they name (hosts, by name and port, or
/// addresses, by network), public or not.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    /// Any host that resolves into it, on any port.
    Network(IpNet),
    /// A host as the callback URL writes it (a pattern: `*.example.com`),
    /// on one port or any; whatever it resolves to.
    Host {
        pattern: GlobMatcher,
        port: Option<u16>,
    },
}

/// Why a callback may not go where it would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRefusal(pub String);

impl fmt::Display for CallbackRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl CallbackPolicy {
    /// Entries as `--allow-callback` takes them: `HOST`, `HOST:PORT`
    /// (`*` patterns in the host; `[v6]:PORT`), an address, or a network
    /// (`10.1.0.0/16`, `fd00::/8`).
    pub fn new(written: &[String]) -> Result<CallbackPolicy, String> {
        let entries = written
            .iter()
            .map(|entry| parse_entry(entry.trim()))
            .collect::<Result<_, _>>()?;
        Ok(CallbackPolicy { entries })
    }

    /// Whether a callback to `host` (as its URL writes it, IPv6 without
    /// brackets) on `port` may be sent to `address`, one of the addresses
    /// `host` resolved to (or `host` itself when it is an address).
    pub fn check(&self, host: &str, port: u16, address: IpAddr) -> Result<(), CallbackRefusal> {
        let host = host.to_ascii_lowercase();
        let host = canonical_host(&host);
        let canonical = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        let permitted = self.entries.iter().any(|entry| match entry {
            Entry::Network(network) => network.contains(&address) || network.contains(&canonical),
            Entry::Host {
                pattern,
                port: only,
            } => pattern.is_match(&host) && only.is_none_or(|only| only == port),
        });
        if permitted {
            return Ok(());
        }
        let class = classify(address);
        if self.entries.is_empty() {
            if class == AddressClass::Public {
                return Ok(());
            }
            let named = if host == address.to_string() {
                host.clone()
            } else {
                format!("{host} ({address})")
            };
            return Err(CallbackRefusal(format!(
                "publishd does not call {named}: a {class} address, reached only where \
                 --allow-callback names it"
            )));
        }
        Err(CallbackRefusal(format!(
            "publishd does not call {host} port {port} ({address}): not in --allow-callback"
        )))
    }
}

/// An address written as a host is compared in its one canonical spelling.
fn canonical_host(host: &str) -> String {
    host.parse::<IpAddr>()
        .map_or_else(|_| host.to_owned(), |address| address.to_string())
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    if let Ok(network) = entry.parse::<IpNet>() {
        return Ok(Entry::Network(network.trunc()));
    }
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Ok(Entry::Network(IpNet::from(address)));
    }
    let (host, port) = match entry.strip_prefix('[') {
        Some(bracketed) => {
            let (host, rest) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{entry:?}: an IPv6 address without its `]`"))?;
            let port = match rest {
                "" => None,
                rest => Some(rest.strip_prefix(':').ok_or_else(|| {
                    format!("{entry:?}: expected `:PORT` after the IPv6 address")
                })?),
            };
            (host, port)
        }
        None => match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        },
    };
    let port = match port {
        None | Some("*") => None,
        Some(port) => Some(
            port.parse::<u16>()
                .map_err(|_| format!("{entry:?}: {port:?} is not a port"))?,
        ),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*' | ':');
    if host.is_empty() || !host.chars().all(valid) {
        return Err(format!(
            "{entry:?} is not a host, HOST:PORT, address or network"
        ));
    }
    let host = canonical_host(&host.to_ascii_lowercase());
    let pattern = GlobBuilder::new(&host)
        .literal_separator(true)
        .build()
        .map_err(|error| format!("{entry:?}: {error}"))?
        .compile_matcher();
    Ok(Entry::Host { pattern, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified_by_their_range() {
        let cases = [
            ("8.8.8.8", AddressClass::Public),
            ("1.1.1.1", AddressClass::Public),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("172.32.0.1", AddressClass::Public),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::Shared),
            ("100.127.255.255", AddressClass::Shared),
            ("100.128.0.1", AddressClass::Public),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("0.0.0.0", AddressClass::Unspecified),
            ("224.0.0.1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Reserved),
            ("192.0.2.10", AddressClass::Documentation),
            ("198.18.0.1", AddressClass::Benchmarking),
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf::1", AddressClass::LinkLocal),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fd12:3456::1", AddressClass::UniqueLocal),
            ("fec0::1", AddressClass::Private),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Documentation),
            ("2001::1", AddressClass::Reserved),
            ("2606:4700::1111", AddressClass::Public),
            ("2a00:1450::1", AddressClass::Public),
            ("4000::1", AddressClass::Reserved),
        ];
        for (text, class) in cases {
            assert_eq!(classify(address(text)), class, "{text}");
        }
    }

    #[test]
    fn ipv6_addresses_that_carry_ipv4_ones_are_what_those_are() {
        let cases = [
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:7f00:1", AddressClass::Loopback),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("::ffff:8.8.8.8", AddressClass::Public),
            ("64:ff9b::127.0.0.1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
            ("64:ff9b::8.8.8.8", AddressClass::Public),
            ("2002:7f00:1::", AddressClass::Loopback),
            ("2002:c0a8:101::1", AddressClass::Private),
            ("2002:808:808::1", AddressClass::Public),
            // IPv4-compatible (deprecated): nothing routes it as IPv4.
            ("::127.0.0.1", AddressClass::Reserved),
        ];
        for (text, class) in cases {
            assert_eq!(classify(address(text)), class, "{text}");
        }
    }

    #[test]
    fn without_a_list_only_public_addresses_are_called() {
        let open = CallbackPolicy::default();
        assert!(
            open.check("hooks.example.com", 443, address("8.8.8.8"))
                .is_ok()
        );
        for private in [
            "127.0.0.1",
            "10.0.0.1",
            "100.64.1.1",
            "169.254.169.254",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            let refused = open
                .check("hooks.example.com", 443, address(private))
                .unwrap_err();
            assert!(
                refused.0.contains("--allow-callback") && refused.0.contains(private),
                "{private}: {refused}"
            );
        }
        let literal = open
            .check("127.0.0.1", 80, address("127.0.0.1"))
            .unwrap_err();
        assert!(literal.0.contains("loopback"), "{literal}");
    }

    #[test]
    fn a_list_names_hosts_ports_addresses_and_networks_and_nothing_else() {
        let written: Vec<String> = [
            "127.0.0.1",
            "10.1.0.0/16",
            "hooks.internal:8443",
            "*.ci.example.com",
            "[::1]:9000",
        ]
        .map(str::to_owned)
        .to_vec();
        let policy = CallbackPolicy::new(&written).unwrap();
        let allowed = |host: &str, port: u16, to: &str| policy.check(host, port, address(to));
        // An address, on any port, under any name that resolves to it; the
        // same address mapped into IPv6 too.
        assert!(allowed("127.0.0.1", 1234, "127.0.0.1").is_ok());
        assert!(allowed("localhost", 80, "127.0.0.1").is_ok());
        assert!(allowed("::ffff:127.0.0.1", 80, "::ffff:127.0.0.1").is_ok());
        assert!(allowed("127.0.0.2", 80, "127.0.0.2").is_err());
        assert!(allowed("x", 80, "10.1.200.3").is_ok());
        assert!(allowed("x", 80, "10.2.0.1").is_err());
        // A host by name, on its port only, whatever it resolves to.
        assert!(allowed("hooks.internal", 8443, "192.168.7.7").is_ok());
        assert!(allowed("HOOKS.internal", 8443, "192.168.7.7").is_ok());
        assert!(allowed("hooks.internal", 443, "192.168.7.7").is_err());
        assert!(allowed("a.ci.example.com", 443, "172.20.0.1").is_ok());
        assert!(allowed("ci.example.com", 443, "172.20.0.1").is_err());
        assert!(allowed("::1", 9000, "::1").is_ok());
        assert!(allowed("::1", 9001, "::1").is_err());
        // With a list, a public address it does not name is refused too.
        let refused = allowed("hooks.example.com", 443, "8.8.8.8").unwrap_err();
        assert!(refused.0.contains("not in --allow-callback"), "{refused}");
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "",
            "host:port",
            "[::1",
            "[::1]x",
            "a b",
            "http://x",
            "10.0.0.0/33",
        ] {
            assert!(
                CallbackPolicy::new(&[bad.to_owned()]).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
