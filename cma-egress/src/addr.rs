//! Which addresses the proxy refuses to connect to on a sandbox's behalf.
//!
//! The check runs on the address the proxy actually connects to (after its own resolution, never
//! re-resolved), so DNS rebinding gains nothing. Refused: every non-global range — loopback,
//! RFC 1918 private, link-local (including the cloud metadata address `169.254.169.254` and
//! `fe80::/10`), unique-local `fc00::/7`, CGNAT `100.64.0.0/10`, multicast, unspecified,
//! broadcast, reserved, documentation and benchmarking ranges — and IPv6 forms that embed an IPv4
//! address (mapped, compatible, 6to4, NAT64) when the embedded address is refused; Teredo and
//! local-use NAT64 are refused outright (their embedded address cannot be trusted). The host's
//! own interface addresses are refused too. A `route` rule is the one documented way to reach
//! such an address: its upstream is exempt because the operator named it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::RwLock;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressClass {
    /// A globally routable address: allowed.
    Global,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 private ranges.
    Private,
    /// `169.254.0.0/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`, `fec0::/10`.
    UniqueLocal,
    /// `100.64.0.0/10`.
    SharedCgnat,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// Broadcast, reserved, documentation, benchmarking, IETF protocol and tunnelling ranges.
    Reserved,
    /// One of the host's own interface addresses.
    HostLocal,
}

impl AddressClass {
    /// Whether the proxy refuses this class without a `route` naming it.
    pub fn is_refused(self) -> bool {
        self != AddressClass::Global
    }

    /// A short phrase for refusal messages.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Global => "global address",
            Self::Loopback => "loopback address",
            Self::Private => "private address",
            Self::LinkLocal => "link-local address",
            Self::UniqueLocal => "unique-local address",
            Self::SharedCgnat => "shared (CGNAT) address",
            Self::Multicast => "multicast address",
            Self::Unspecified => "unspecified address",
            Self::Reserved => "reserved address",
            Self::HostLocal => "host-local address (the proxy host's own)",
        }
    }
}

/// Classify an address by its range (ignoring the host's own addresses).
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (127, _, _) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (192, 0, 0) | (192, 0, 2) | (192, 88, 99) | (198, 18..=19, _) | (198, 51, 100) => {
            AddressClass::Reserved
        }
        (203, 0, 113) => AddressClass::Reserved,
        (224..=239, _, _) => AddressClass::Multicast,
        (240..=255, _, _) => AddressClass::Reserved,
        _ => AddressClass::Global,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let seg = ip.segments();
    let embedded_low = || {
        Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        )
    };
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // IPv4-compatible (deprecated) `::a.b.c.d`.
    if seg[..6].iter().all(|&s| s == 0) {
        return classify_v4(embedded_low());
    }
    match seg[0] {
        0xff00..=0xffff => return AddressClass::Multicast,
        0xfe80..=0xfebf => return AddressClass::LinkLocal,
        0xfec0..=0xfeff | 0xfc00..=0xfdff => return AddressClass::UniqueLocal,
        _ => {}
    }
    // NAT64 well-known prefix 64:ff9b::/96 embeds an IPv4 address; the local-use prefix
    // 64:ff9b:1::/48 is refused outright.
    if seg[0] == 0x64 && seg[1] == 0xff9b {
        if seg[2..6].iter().all(|&s| s == 0) {
            return classify_v4(embedded_low());
        }
        return AddressClass::Reserved;
    }
    // 6to4 `2002:AABB:CCDD::/48` embeds AA.BB.CC.DD.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return classify_v4(v4);
    }
    // Teredo 2001::/32, ORCHID 2001:10::/28 and 2001:20::/28, documentation 2001:db8::/32,
    // discard 100::/64, the IETF protocol block 2001::/23.
    if seg[0] == 0x2001 && (seg[1] < 0x200 || seg[1] == 0xdb8) {
        return AddressClass::Reserved;
    }
    if seg[0] == 0x0100 && seg[1..4].iter().all(|&s| s == 0) {
        return AddressClass::Reserved;
    }
    // Only 2000::/3 is allocated for global unicast.
    if !(0x2000..=0x3fff).contains(&seg[0]) {
        return AddressClass::Reserved;
    }
    AddressClass::Global
}

/// The address check: range classification plus the host's own addresses, and the networks an
/// operator declared reachable ([`AddressGuard::permit_network`]).
#[derive(Debug, Default)]
pub struct AddressGuard {
    host_local: RwLock<HashSet<IpAddr>>,
    permitted: RwLock<Vec<(IpAddr, u8)>>,
}

/// Classes no operator exemption can make reachable: the host itself, the cloud metadata
/// range, and addresses that are not unicast destinations.
fn never_permitted(class: AddressClass) -> bool {
    matches!(
        class,
        AddressClass::Loopback
            | AddressClass::LinkLocal
            | AddressClass::Unspecified
            | AddressClass::Multicast
            | AddressClass::HostLocal
    )
}

fn in_network(ip: IpAddr, (net, prefix): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl AddressGuard {
    /// A guard that knows the host's current interface addresses (best effort: if they cannot
    /// be listed, only the range checks apply — most host addresses fall in refused ranges).
    pub fn with_host_addresses() -> Self {
        let guard = Self::default();
        guard.refresh_host_addresses();
        guard
    }

    /// Re-read the host's interface addresses (after an interface change).
    pub fn refresh_host_addresses(&self) {
        if let Ok(ifaces) = if_addrs::get_if_addrs() {
            let set: HashSet<IpAddr> = ifaces
                .iter()
                .map(|i| crate::host::canonical_ip(i.ip()))
                .collect();
            *self.host_local.write().unwrap_or_else(|p| p.into_inner()) = set;
        }
    }

    /// Add addresses that reach the proxy host but do not show up on its interfaces (a public
    /// address NATed to the host, a load balancer in front of it).
    pub fn add_host_addresses(&self, addrs: impl IntoIterator<Item = IpAddr>) {
        let mut set = self.host_local.write().unwrap_or_else(|p| p.into_inner());
        set.extend(addrs.into_iter().map(crate::host::canonical_ip));
    }

    /// Treat `network/prefix` as reachable although its range is refused by default: a
    /// package mirror or API in a private range that `allow` rules may then name like any
    /// public host (a `route` rule is the narrower way: one host, one upstream). Loopback,
    /// link-local (cloud metadata), unspecified and multicast addresses and the host's own
    /// addresses stay refused whatever is permitted, and networks wider than /16 (IPv4) or /48
    /// (IPv6), or starting in such a range, are refused with
    /// [`EgressErrorKind::Config`](crate::EgressErrorKind::Config).
    pub fn permit_network(&self, network: IpAddr, prefix: u8) -> crate::Result<()> {
        let network = crate::host::canonical_ip(network);
        let (min, max) = match network {
            IpAddr::V4(_) => (16, 32),
            IpAddr::V6(_) => (48, 128),
        };
        let bad = |why: String| {
            crate::EgressError::new(
                crate::EgressErrorKind::Config,
                format!("cannot permit {network}/{prefix}: {why}"),
            )
        };
        if !(min..=max).contains(&prefix) {
            return Err(bad(format!("the prefix must be between {min} and {max}")));
        }
        let class = classify(network);
        if never_permitted(class) {
            return Err(bad(format!("a {} is never reachable", class.phrase())));
        }
        self.permitted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((network, prefix));
        Ok(())
    }

    /// Classify `ip`, reporting [`AddressClass::HostLocal`] for the host's own addresses and
    /// [`AddressClass::Global`] for addresses in permitted networks.
    pub fn check(&self, ip: IpAddr) -> AddressClass {
        let ip = crate::host::canonical_ip(ip);
        let class = match classify(ip) {
            AddressClass::Global => AddressClass::Global,
            other if never_permitted(other) => return other,
            other => {
                let permitted = self.permitted.read().unwrap_or_else(|p| p.into_inner());
                if permitted.iter().any(|n| in_network(ip, *n)) {
                    AddressClass::Global
                } else {
                    return other;
                }
            }
        };
        let local = self.host_local.read().unwrap_or_else(|p| p.into_inner());
        if local.contains(&ip) {
            AddressClass::HostLocal
        } else {
            class
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_classified() {
        use AddressClass::*;
        let cases: &[(&str, AddressClass)] = &[
            ("8.8.8.8", Global),
            ("1.1.1.1", Global),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Global),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.128.0.1", Global),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Multicast),
            ("255.255.255.255", Reserved),
            ("240.0.0.1", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("203.0.113.9", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:8.8.8.8", Global),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fd00::1", UniqueLocal),
            ("fc00::1", UniqueLocal),
            ("fec0::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Global),
            ("64:ff9b:1::1", Reserved),
            ("2002:7f00:1::1", Loopback),
            ("2002:a00:1::", Private),
            ("2002:808:808::1", Global),
            ("2001::1", Reserved),
            ("2001:db8::1", Reserved),
            ("100::1", Reserved),
            ("2606:4700::1111", Global),
            ("2a00:1450:4001::200e", Global),
            ("4000::1", Reserved),
        ];
        for (s, want) in cases {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(classify(ip), *want, "{s}");
        }
    }

    #[test]
    fn host_addresses_are_refused() {
        let guard = AddressGuard::default();
        let ip: IpAddr = "8.8.4.4".parse().unwrap();
        assert_eq!(guard.check(ip), AddressClass::Global);
        guard.add_host_addresses([ip]);
        assert_eq!(guard.check(ip), AddressClass::HostLocal);
        assert_eq!(
            guard.check("::ffff:8.8.4.4".parse().unwrap()),
            AddressClass::HostLocal
        );
        assert!(AddressClass::HostLocal.is_refused());
    }

    #[test]
    fn permitted_networks_are_reachable_but_never_loopback_or_metadata() {
        let guard = AddressGuard::default();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(guard.check(ip("10.1.2.3")), AddressClass::Private);
        guard.permit_network(ip("10.1.0.0"), 16).unwrap();
        assert_eq!(guard.check(ip("10.1.2.3")), AddressClass::Global);
        assert_eq!(guard.check(ip("::ffff:10.1.2.3")), AddressClass::Global);
        assert_eq!(guard.check(ip("10.2.0.1")), AddressClass::Private);
        guard.add_host_addresses([ip("10.1.0.1")]);
        assert_eq!(guard.check(ip("10.1.0.1")), AddressClass::HostLocal);
        guard.permit_network(ip("198.18.7.0"), 24).unwrap();
        assert_eq!(guard.check(ip("198.18.7.9")), AddressClass::Global);
        assert_eq!(guard.check(ip("198.18.8.9")), AddressClass::Reserved);
        for (net, prefix) in [
            ("127.0.0.0", 16),
            ("169.254.0.0", 16),
            ("0.0.0.0", 16),
            ("224.0.0.0", 16),
            ("10.0.0.0", 8),
            ("10.0.0.0", 33),
            ("fe80::", 64),
            ("::", 64),
            ("fd00::", 32),
        ] {
            let e = guard.permit_network(ip(net), prefix).unwrap_err();
            assert_eq!(e.kind(), crate::EgressErrorKind::Config, "{net}/{prefix}");
        }
        guard.permit_network(ip("fd00:77::"), 64).unwrap();
        assert_eq!(guard.check(ip("fd00:77::2")), AddressClass::Global);
        assert_eq!(guard.check(ip("fd00:78::2")), AddressClass::UniqueLocal);
        assert_eq!(guard.check(ip("169.254.169.254")), AddressClass::LinkLocal);
        assert_eq!(guard.check(ip("127.0.0.1")), AddressClass::Loopback);
    }

    #[test]
    fn interface_addresses_are_known() {
        let guard = AddressGuard::with_host_addresses();
        // Loopback is refused by range whatever the interface list says.
        assert!(guard.check("127.0.0.1".parse().unwrap()).is_refused());
    }
}
