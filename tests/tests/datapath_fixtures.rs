//! Packet fixtures through BPF_PROG_TEST_RUN, in the style of katran's
//! tests: for each program, an input frame, the expected verdict, the
//! expected output frame and the counter that must move.
//!
//! BPF_PROG_TEST_RUN runs the program on loopback (ifindex 1), so the
//! fixtures register their guest on ifindex 1. Redirects are not carried
//! out by a test run; the returned action and the rewritten frame are what
//! is checked.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use metadata_common::{
    DatapathConfig, DeviceCounters, Ifindex, Ipv4Be, Ipv6Be, MacAddr, PortBe, PortKeyV4, PortKeyV6,
    PortV4, PortV6, Slot, SlotV4, SlotV6, map_names,
};
use metadata_tests::packet::{
    ETH_P_IPV6, Ipv4Opts, arp_request, checksum_v6, ethernet, ipv4, ipv6, neighbor_solicitation,
    parse_tcp_frame, parse_tcp6_frame, tcp_frame, tcp6_frame,
};
use metadata_userspace::datapath::EBPF_OBJECT;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const LO: Ifindex = Ifindex(1);
const GUEST_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 5];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xa9, 0xfe];
const ROUTER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const GUEST: [u8; 4] = [10, 0, 0, 5];
const METADATA: [u8; 4] = [169, 254, 169, 254];
const PROXY: [u8; 4] = [169, 254, 169, 250];
const PROXY_PORT: u16 = 8775;
const NAT_BASE: [u8; 4] = [100, 64, 0, 0];
const SLOT: u32 = 3;
const SLOT_ADDR: [u8; 4] = [100, 64, 0, 3];
/// The guest's EUI-64 link-local address (from GUEST_MAC).
const GUEST6: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xf8, 0x16, 0x3e, 0xff, 0xfe, 0, 0, 5,
];
const METADATA6: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe,
];
const NAT6: [u8; 16] = [
    0xfd, 0, 0xa9, 0xfe, 0x64, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const PROXY6: [u8; 16] = [
    0xfd, 0, 0xa9, 0xfe, 0x64, 0x64, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe,
];
const SLOT6: u32 = 7;
const SLOT6_ADDR: [u8; 16] = [
    0xfd, 0, 0xa9, 0xfe, 0x64, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7,
];

struct Fixture {
    ebpf: Ebpf,
}

impl Fixture {
    /// The programs loaded with fresh maps: configured (proxy on a port
    /// other than 80, so every rewrite is visible) and with the guest
    /// 10.0.0.5 registered on loopback in slot 3.
    fn new() -> Self {
        let mut fixture = Self::unconfigured();
        let mut config: Array<&mut MapData, DatapathConfig> =
            Array::try_from(fixture.ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
        config
            .set(
                0,
                DatapathConfig {
                    host_ifindex: LO,
                    proxy_v4: Ipv4Be(PROXY),
                    nat_v4_base: Ipv4Be(NAT_BASE),
                    nat_v4_size: 1024,
                    host_mac: MacAddr(HOST_MAC),
                    proxy_port: PortBe::new(PROXY_PORT),
                    proxy_v6: Ipv6Be(PROXY6),
                    nat_v6_base: Ipv6Be(NAT6),
                    nat_v6_size: 1024,
                },
                0,
            )
            .unwrap();
        let mut ports: HashMap<&mut MapData, PortKeyV4, PortV4> =
            HashMap::try_from(fixture.ebpf.map_mut(map_names::PORTS_V4).unwrap()).unwrap();
        ports
            .insert(
                PortKeyV4 {
                    ifindex: LO,
                    addr: Ipv4Be(GUEST),
                },
                PortV4 { slot: Slot(SLOT) },
                0,
            )
            .unwrap();
        let mut slots: Array<&mut MapData, SlotV4> =
            Array::try_from(fixture.ebpf.map_mut(map_names::SLOTS_V4).unwrap()).unwrap();
        slots
            .set(
                SLOT,
                SlotV4 {
                    ifindex: LO,
                    guest_addr: Ipv4Be(GUEST),
                    guest_mac: MacAddr(GUEST_MAC),
                    router_mac: MacAddr::default(),
                },
                0,
            )
            .unwrap();
        let mut ports6: HashMap<&mut MapData, PortKeyV6, PortV6> =
            HashMap::try_from(fixture.ebpf.map_mut(map_names::PORTS_V6).unwrap()).unwrap();
        ports6
            .insert(
                PortKeyV6 {
                    ifindex: LO,
                    addr: Ipv6Be(GUEST6),
                },
                PortV6 { slot: Slot(SLOT6) },
                0,
            )
            .unwrap();
        let mut slots6: Array<&mut MapData, SlotV6> =
            Array::try_from(fixture.ebpf.map_mut(map_names::SLOTS_V6).unwrap()).unwrap();
        slots6
            .set(
                SLOT6,
                SlotV6 {
                    ifindex: LO,
                    guest_addr: Ipv6Be(GUEST6),
                    guest_mac: MacAddr(GUEST_MAC),
                    router_mac: MacAddr::default(),
                },
                0,
            )
            .unwrap();
        fixture
    }

    /// The programs loaded with fresh, empty maps (no daemon config yet).
    fn unconfigured() -> Self {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .expect("loading the object");
        for name in ["tap_ingress", "host_egress"] {
            let program: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            program
                .load()
                .unwrap_or_else(|err| panic!("verifier rejected {name}: {err}"));
        }
        let cpus = aya::util::nr_cpus().unwrap();
        let mut counters: PerCpuHashMap<&mut MapData, Ifindex, DeviceCounters> =
            PerCpuHashMap::try_from(ebpf.map_mut(map_names::COUNTERS).unwrap()).unwrap();
        counters
            .insert(
                LO,
                PerCpuValues::try_from(vec![DeviceCounters::default(); cpus]).unwrap(),
                0,
            )
            .unwrap();
        Self { ebpf }
    }

    /// Runs `program` on `input`; returns the action and the output frame.
    fn run(&self, program: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; input.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(input);
        opts.data_out = Some(&mut out);
        let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn counters(&self) -> DeviceCounters {
        let counters: PerCpuHashMap<&MapData, Ifindex, DeviceCounters> =
            PerCpuHashMap::try_from(self.ebpf.map(map_names::COUNTERS).unwrap()).unwrap();
        let mut total = DeviceCounters::default();
        for value in counters.get(&LO, 0).unwrap().iter() {
            total.accumulate(value);
        }
        total
    }

    fn slot(&self) -> SlotV4 {
        let slots: Array<&MapData, SlotV4> =
            Array::try_from(self.ebpf.map(map_names::SLOTS_V4).unwrap()).unwrap();
        slots.get(&SLOT, 0).unwrap()
    }

    /// Runs a fixture and checks verdict, output and the one counter.
    fn expect(
        &self,
        program: &str,
        input: &[u8],
        action: u32,
        counter: fn(&DeviceCounters) -> u64,
    ) -> Vec<u8> {
        let before = self.counters();
        let (got, out) = self.run(program, input);
        assert_eq!(got, action, "{program}: action");
        let after = self.counters();
        assert_eq!(
            counter(&after),
            counter(&before) + 1,
            "{program}: counter {after:?}"
        );
        assert_eq!(
            sum(&after),
            sum(&before) + 1,
            "{program}: exactly one counter moved"
        );
        out
    }
}

fn sum(c: &DeviceCounters) -> u64 {
    c.passed + c.steered + c.replied + c.arp_replied + c.dropped()
}

fn request(dport: u16, src: [u8; 4], opts: Ipv4Opts) -> Vec<u8> {
    tcp_frame(
        (ROUTER_MAC, GUEST_MAC),
        src,
        METADATA,
        (40000, dport),
        b"GET / HTTP/1.1\r\n\r\n",
        opts,
    )
}

#[test]
fn tap_ingress_steers_a_registered_request_to_the_proxy() {
    let fx = Fixture::new();
    let input = request(80, GUEST, Ipv4Opts::default());
    let out = fx.expect("tap_ingress", &input, TC_ACT_REDIRECT, |c| c.steered);
    let view = parse_tcp_frame(&out);
    assert_eq!(view.dst_mac, HOST_MAC, "addressed to the host device");
    assert_eq!(view.src_mac, GUEST_MAC);
    assert_eq!(
        (view.src, view.sport),
        (SLOT_ADDR, 40000),
        "source NATed to the slot"
    );
    assert_eq!(
        (view.dst, view.dport),
        (PROXY, PROXY_PORT),
        "destination is the proxy"
    );
    assert!(view.ip_checksum_ok, "IPv4 header checksum");
    assert!(view.tcp_checksum_ok, "TCP checksum");
    assert_eq!(view.payload, b"GET / HTTP/1.1\r\n\r\n");
    // The MAC the guest addressed is learned for the reply.
    assert_eq!(fx.slot().router_mac, MacAddr(ROUTER_MAC));
}

#[test]
fn tap_ingress_handles_ip_options() {
    let fx = Fixture::new();
    let input = request(
        80,
        GUEST,
        Ipv4Opts {
            option_words: 3,
            frag_off: 0x4000,
        },
    );
    let out = fx.expect("tap_ingress", &input, TC_ACT_REDIRECT, |c| c.steered);
    let view = parse_tcp_frame(&out);
    assert_eq!((view.dst, view.dport), (PROXY, PROXY_PORT));
    assert!(view.ip_checksum_ok && view.tcp_checksum_ok, "{view:?}");
}

#[test]
fn tap_ingress_drops_unregistered_sources() {
    let fx = Fixture::new();
    let input = request(80, [10, 0, 0, 6], Ipv4Opts::default());
    fx.expect("tap_ingress", &input, TC_ACT_SHOT, |c| c.drop_unregistered);
}

#[test]
fn tap_ingress_passes_other_traffic_untouched() {
    let fx = Fixture::new();
    let cases = [
        // Another port on the metadata address.
        request(8080, GUEST, Ipv4Opts::default()),
        // Port 80 elsewhere.
        tcp_frame(
            (ROUTER_MAC, GUEST_MAC),
            GUEST,
            [10, 0, 0, 1],
            (40000, 80),
            b"",
            Ipv4Opts::default(),
        ),
        // ICMP to the metadata address.
        ethernet(
            ROUTER_MAC,
            GUEST_MAC,
            0x0800,
            &ipv4(
                GUEST,
                METADATA,
                1,
                &[8, 0, 0, 0, 0, 0, 0, 0],
                Ipv4Opts::default(),
            ),
        ),
        // IPv6 to someone else.
        tcp6_frame((ROUTER_MAC, GUEST_MAC), GUEST6, PROXY6, (40000, 80), b""),
        // An unknown ethertype, and a bare Ethernet header. (A runt IPv4
        // frame cannot be fed in: BPF_PROG_TEST_RUN itself rejects it.)
        ethernet(ROUTER_MAC, GUEST_MAC, 0x88cc, &[0; 46]),
        ethernet(ROUTER_MAC, GUEST_MAC, 0x88cc, &[]),
        // An ARP request for someone else.
        arp_request(GUEST_MAC, GUEST, [10, 0, 0, 1]),
    ];
    for input in cases {
        let out = fx.expect("tap_ingress", &input, TC_ACT_OK, |c| c.passed);
        assert_eq!(out, input, "passed packets are not modified");
    }
}

#[test]
fn tap_ingress_drops_malformed_and_fragmented_metadata_traffic() {
    let fx = Fixture::new();
    // IHL 4 (shorter than the fixed header).
    let mut bad_ihl = request(80, GUEST, Ipv4Opts::default());
    bad_ihl[14] = 0x44;
    fx.expect("tap_ingress", &bad_ihl, TC_ACT_SHOT, |c| c.drop_malformed);
    // TCP header cut short.
    let full = request(80, GUEST, Ipv4Opts::default());
    fx.expect("tap_ingress", &full[..14 + 20 + 10], TC_ACT_SHOT, |c| {
        c.drop_malformed
    });
    // IHL pointing past the end of the packet.
    let mut long_ihl = request(80, GUEST, Ipv4Opts::default());
    long_ihl[14] = 0x4f;
    fx.expect("tap_ingress", &long_ihl[..14 + 40], TC_ACT_SHOT, |c| {
        c.drop_malformed
    });
    // First fragment (MF) and a later fragment (offset).
    for frag_off in [0x2000, 0x0010] {
        let input = request(
            80,
            GUEST,
            Ipv4Opts {
                option_words: 0,
                frag_off,
            },
        );
        fx.expect("tap_ingress", &input, TC_ACT_SHOT, |c| c.drop_fragment);
    }
}

#[test]
fn tap_ingress_fails_closed_before_the_daemon_configures_it() {
    let fx = Fixture::unconfigured();
    let input = request(80, GUEST, Ipv4Opts::default());
    fx.expect("tap_ingress", &input, TC_ACT_SHOT, |c| c.drop_error);
    let arp = arp_request(GUEST_MAC, GUEST, METADATA);
    fx.expect("tap_ingress", &arp, TC_ACT_SHOT, |c| c.drop_error);
}

#[test]
fn tap_ingress_answers_arp_for_the_metadata_address() {
    let fx = Fixture::new();
    let input = arp_request(GUEST_MAC, GUEST, METADATA);
    let out = fx.expect("tap_ingress", &input, TC_ACT_REDIRECT, |c| c.arp_replied);
    assert_eq!(&out[0..6], &GUEST_MAC, "to the asker");
    assert_eq!(&out[6..12], &HOST_MAC, "from the host device");
    assert_eq!(&out[12..14], &[0x08, 0x06]);
    let arp = &out[14..];
    assert_eq!(&arp[6..8], &[0, 2], "a reply");
    assert_eq!(&arp[8..14], &HOST_MAC, "sender MAC");
    assert_eq!(&arp[14..18], &METADATA, "sender IP");
    assert_eq!(&arp[18..24], &GUEST_MAC, "target MAC");
    assert_eq!(&arp[24..28], &GUEST, "target IP");
}

#[test]
fn tap_ingress_drops_arp_from_unregistered_sources_and_malformed_arp() {
    let fx = Fixture::new();
    let input = arp_request(GUEST_MAC, [10, 0, 0, 9], METADATA);
    fx.expect("tap_ingress", &input, TC_ACT_SHOT, |c| c.drop_unregistered);
    let mut bad = arp_request(GUEST_MAC, GUEST, METADATA);
    bad[14 + 4] = 8; // hardware address length 8
    fx.expect("tap_ingress", &bad, TC_ACT_SHOT, |c| c.drop_malformed);
    // Truncated ARP: too short to be ours, passed.
    let short = arp_request(GUEST_MAC, GUEST, METADATA);
    fx.expect("tap_ingress", &short[..14 + 20], TC_ACT_OK, |c| c.passed);
}

fn reply(dst: [u8; 4], src: [u8; 4], sport: u16) -> Vec<u8> {
    tcp_frame(
        (HOST_MAC, HOST_MAC),
        src,
        dst,
        (sport, 40000),
        b"HTTP/1.1 200 OK\r\n\r\n",
        Ipv4Opts::default(),
    )
}

#[test]
fn host_egress_returns_replies_to_the_guest() {
    let fx = Fixture::new();
    // The guest's request taught the slot which MAC it addressed.
    fx.run("tap_ingress", &request(80, GUEST, Ipv4Opts::default()));
    let input = reply(SLOT_ADDR, PROXY, PROXY_PORT);
    let out = fx.expect("host_egress", &input, TC_ACT_REDIRECT, |c| c.replied);
    let view = parse_tcp_frame(&out);
    assert_eq!(view.dst_mac, GUEST_MAC);
    assert_eq!(view.src_mac, ROUTER_MAC, "from the MAC the guest addressed");
    assert_eq!((view.src, view.sport), (METADATA, 80));
    assert_eq!((view.dst, view.dport), (GUEST, 40000));
    assert!(view.ip_checksum_ok && view.tcp_checksum_ok, "{view:?}");
    assert_eq!(view.payload, b"HTTP/1.1 200 OK\r\n\r\n");
}

#[test]
fn host_egress_drops_replies_to_unknown_slots() {
    let fx = Fixture::new();
    let input = reply([100, 64, 0, 9], PROXY, PROXY_PORT);
    fx.expect("host_egress", &input, TC_ACT_SHOT, |c| c.drop_no_slot);
}

#[test]
fn host_egress_passes_everything_else() {
    let fx = Fixture::new();
    let cases = [
        // Not from the proxy address, or not from its port.
        reply(SLOT_ADDR, [169, 254, 169, 1], PROXY_PORT),
        reply(SLOT_ADDR, PROXY, 22),
        // Outside the NAT range.
        reply([10, 0, 0, 5], PROXY, PROXY_PORT),
        ethernet(HOST_MAC, HOST_MAC, ETH_P_IPV6, &[0x60; 60]),
    ];
    for input in cases {
        let out = fx.expect("host_egress", &input, TC_ACT_OK, |c| c.passed);
        assert_eq!(out, input);
    }
}

#[test]
fn host_egress_drops_malformed_replies() {
    let fx = Fixture::new();
    let input = reply(SLOT_ADDR, PROXY, PROXY_PORT);
    fx.expect("host_egress", &input[..14 + 20 + 8], TC_ACT_SHOT, |c| {
        c.drop_malformed
    });
}

fn request6(src: [u8; 16], dport: u16) -> Vec<u8> {
    tcp6_frame(
        (HOST_MAC, GUEST_MAC),
        src,
        METADATA6,
        (40000, dport),
        b"GET / HTTP/1.1\r\n\r\n",
    )
}

#[test]
fn tap_ingress_steers_ipv6_requests_through_the_nat_96() {
    let fx = Fixture::new();
    let out = fx.expect("tap_ingress", &request6(GUEST6, 80), TC_ACT_REDIRECT, |c| {
        c.steered
    });
    let view = parse_tcp6_frame(&out);
    assert_eq!(view.dst_mac, HOST_MAC);
    assert_eq!((view.src, view.sport), (SLOT6_ADDR, 40000));
    assert_eq!((view.dst, view.dport), (PROXY6, PROXY_PORT));
    assert!(view.checksum_ok, "TCP checksum over the new pseudo-header");
}

#[test]
fn host_egress_returns_ipv6_replies() {
    let fx = Fixture::new();
    let input = tcp6_frame(
        (HOST_MAC, HOST_MAC),
        PROXY6,
        SLOT6_ADDR,
        (PROXY_PORT, 40000),
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    let out = fx.expect("host_egress", &input, TC_ACT_REDIRECT, |c| c.replied);
    let view = parse_tcp6_frame(&out);
    assert_eq!(view.dst_mac, GUEST_MAC);
    assert_eq!((view.src, view.sport), (METADATA6, 80));
    assert_eq!((view.dst, view.dport), (GUEST6, 40000));
    assert!(view.checksum_ok);
    let unknown = tcp6_frame(
        (HOST_MAC, HOST_MAC),
        PROXY6,
        [
            0xfd, 0, 0xa9, 0xfe, 0x64, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
        ],
        (PROXY_PORT, 40000),
        b"",
    );
    fx.expect("host_egress", &unknown, TC_ACT_SHOT, |c| c.drop_no_slot);
}

#[test]
fn tap_ingress_answers_neighbour_solicitations_for_the_metadata_address() {
    let fx = Fixture::new();
    let input = neighbor_solicitation(GUEST_MAC, GUEST6, METADATA6);
    let out = fx.expect("tap_ingress", &input, TC_ACT_REDIRECT, |c| c.arp_replied);
    assert_eq!(out.len(), 14 + 40 + 32);
    assert_eq!(&out[0..6], &GUEST_MAC);
    assert_eq!(&out[6..12], &HOST_MAC);
    let ip = &out[14..];
    assert_eq!(ip[6], 58, "ICMPv6");
    assert_eq!(ip[7], 255, "hop limit");
    assert_eq!(&ip[8..24], &METADATA6, "from the metadata address");
    assert_eq!(&ip[24..40], &GUEST6, "to the asker");
    let icmp = &ip[40..];
    assert_eq!(icmp[0], 136, "a Neighbour Advertisement");
    assert_eq!(icmp[4], 0x60, "solicited, override");
    assert_eq!(&icmp[8..24], &METADATA6);
    assert_eq!(&icmp[24..26], &[2, 1], "target link-layer address option");
    assert_eq!(&icmp[26..32], &HOST_MAC);
    assert_eq!(
        checksum_v6(METADATA6, GUEST6, 58, icmp),
        0,
        "ICMPv6 checksum"
    );
    // Without the source link-layer option (shorter): still answered.
    let mut short = neighbor_solicitation(GUEST_MAC, GUEST6, METADATA6);
    short.truncate(14 + 40 + 24);
    short[14 + 5] = 24;
    let check = checksum_v6(GUEST6, short[14 + 24..14 + 40].try_into().unwrap(), 58, &{
        let mut icmp = short[14 + 40..].to_vec();
        icmp[2] = 0;
        icmp[3] = 0;
        icmp
    });
    short[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&check.to_be_bytes());
    let out = fx.expect("tap_ingress", &short, TC_ACT_REDIRECT, |c| c.arp_replied);
    assert_eq!(out.len(), 14 + 40 + 32);
}

#[test]
fn tap_ingress_ipv6_drops_unregistered_and_passes_other_icmpv6_and_extension_headers() {
    let fx = Fixture::new();
    let stranger: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99];
    fx.expect("tap_ingress", &request6(stranger, 80), TC_ACT_SHOT, |c| {
        c.drop_unregistered
    });
    fx.expect(
        "tap_ingress",
        &neighbor_solicitation(GUEST_MAC, stranger, METADATA6),
        TC_ACT_SHOT,
        |c| c.drop_unregistered,
    );
    // DAD for our address ("::" source) is never answered.
    fx.expect(
        "tap_ingress",
        &neighbor_solicitation(GUEST_MAC, [0; 16], METADATA6),
        TC_ACT_SHOT,
        |c| c.drop_unregistered,
    );
    // A registered source's other traffic to the address passes untouched:
    // an echo request, a fragment header, a hop-by-hop header, port 8080.
    for input in [
        ethernet(
            HOST_MAC,
            GUEST_MAC,
            ETH_P_IPV6,
            &ipv6(GUEST6, METADATA6, 58, 64, &[128, 0, 0, 0, 0, 0, 0, 0]),
        ),
        ethernet(
            HOST_MAC,
            GUEST_MAC,
            ETH_P_IPV6,
            &ipv6(GUEST6, METADATA6, 44, 64, &[6, 0, 0, 1, 0, 0, 0, 1]),
        ),
        ethernet(
            HOST_MAC,
            GUEST_MAC,
            ETH_P_IPV6,
            &ipv6(GUEST6, METADATA6, 0, 64, &[6, 0, 1, 4, 0, 0, 0, 0]),
        ),
        request6(GUEST6, 8080),
        // A solicitation for someone else.
        neighbor_solicitation(GUEST_MAC, GUEST6, PROXY6),
    ] {
        let out = fx.expect("tap_ingress", &input, TC_ACT_OK, |c| c.passed);
        assert_eq!(out, input);
    }
    // From an unregistered source, the same are dropped.
    let frag = ethernet(
        HOST_MAC,
        GUEST_MAC,
        ETH_P_IPV6,
        &ipv6(stranger, METADATA6, 44, 64, &[6, 0, 0, 1, 0, 0, 0, 1]),
    );
    fx.expect("tap_ingress", &frag, TC_ACT_SHOT, |c| c.drop_unregistered);
    // A solicitation with a hop limit other than 255 is not from the link.
    let mut forwarded = neighbor_solicitation(GUEST_MAC, GUEST6, METADATA6);
    forwarded[14 + 7] = 64;
    fx.expect("tap_ingress", &forwarded, TC_ACT_SHOT, |c| c.drop_malformed);
}
