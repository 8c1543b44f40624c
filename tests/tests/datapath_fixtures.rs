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
    ConnBudget, DatapathConfig, DeviceCounters, Ifindex, Ipv4Be, Ipv6Be, MacAddr, PortBe,
    PortKeyV4, PortKeyV6, PortV4, PortV6, Slot, SlotV4, SlotV6, TapState, map_names,
};
use metadata_tests::packet::{
    ETH_P_IPV6, Ipv4Opts, arp_reply, arp_request, checksum_v6, ethernet, ipv4, ipv6,
    neighbor_advertisement, neighbor_solicitation, tcp_frame, tcp6_frame,
};
use metadata_userspace::datapath::{EBPF_OBJECT, object};

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
/// The network's metadata port address, the guest's next hop to
/// 169.254.169.254 under ML2/OVN.
const NEXTHOP: [u8; 4] = [10, 0, 0, 2];
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
    /// The programs as the daemon loads them: with fresh maps, configured
    /// (proxy on a port other than 80, so every rewrite is visible), the
    /// configuration's load-time values in the tap program's fast path, and
    /// the guest 10.0.0.5 registered on loopback in slot 3.
    fn new() -> Self {
        Self::configured(true)
    }

    /// As [`Fixture::new`], with or without the load-time values (without
    /// them the fast path is off and the full path decides everything).
    fn configured(load_time_values: bool) -> Self {
        Self::with_budget(
            load_time_values,
            ConnBudget {
                interval_ns: 0,
                burst: 0,
            },
        )
    }

    /// As [`Fixture::configured`], with a new-connection budget per tap.
    fn with_budget(load_time_values: bool, budget: ConnBudget) -> Self {
        let entry = DatapathConfig {
            host_ifindex: LO,
            proxy_v4: Ipv4Be(PROXY),
            nat_v4_base: Ipv4Be(NAT_BASE),
            nat_v4_size: 1024,
            host_mac: MacAddr(HOST_MAC),
            proxy_port: PortBe::new(PROXY_PORT),
            proxy_v6: Ipv6Be(PROXY6),
            nat_v6_base: Ipv6Be(NAT6),
            nat_v6_size: 1024,
            conn_interval_ns: budget.interval_ns,
            conn_burst: budget.burst,
        };
        let mut fixture = Self::load(load_time_values.then_some(&entry));
        let mut config: Array<&mut MapData, DatapathConfig> =
            Array::try_from(fixture.ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap();
        config.set(0, entry, 0).unwrap();
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
        let mut nexthops: HashMap<&mut MapData, PortKeyV4, u32> =
            HashMap::try_from(fixture.ebpf.map_mut(map_names::NEXTHOPS_V4).unwrap()).unwrap();
        nexthops
            .insert(
                PortKeyV4 {
                    ifindex: LO,
                    addr: Ipv4Be(NEXTHOP),
                },
                1,
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

    /// The programs loaded with fresh, empty maps and no load-time values
    /// (no daemon config yet; the tap program's fast path is off).
    fn unconfigured() -> Self {
        Self::load(None)
    }

    /// The programs loaded with fresh maps, and `entry`'s load-time values
    /// if given.
    fn load(entry: Option<&DatapathConfig>) -> Self {
        let object = object::with_load_time_values(EBPF_OBJECT, entry)
            .expect("writing the load-time values");
        let mut ebpf = EbpfLoader::new()
            .load(object.bytes())
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
        let mut taps: HashMap<&mut MapData, Ifindex, TapState> =
            HashMap::try_from(ebpf.map_mut(map_names::TAPS).unwrap()).unwrap();
        taps.insert(LO, TapState::default(), 0).unwrap();
        Self { ebpf }
    }

    /// Runs `program` on `input` as if it had entered the host on
    /// `ingress` (0: sent by the host itself); returns the action and the
    /// output frame.
    fn run_from(&self, program: &str, input: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        let program: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; input.len() + 256];
        // struct __sk_buff: ingress_ifindex is the u32 at offset 36; the
        // kernel takes it as skb->skb_iif. Everything else stays zero.
        let mut skb = [0u8; 192];
        skb[36..40].copy_from_slice(&ingress.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(input);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&skb);
        let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn run(&self, program: &str, input: &[u8]) -> (u32, Vec<u8>) {
        self.run_from(program, input, 0)
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

    /// Runs one fixture: the action, the whole output frame, and exactly
    /// one counter moved by one (none for a pass).
    fn check(&self, case: &Case) {
        let Case {
            why,
            program,
            input,
            ingress,
            action,
            counter,
            output,
        } = case;
        let before = self.counters();
        let (got, out) = self.run_from(program, input, *ingress);
        assert_eq!(got, *action, "{why}: action");
        let expected = output.as_ref().unwrap_or(input);
        assert_eq!(
            hex(&out),
            hex(expected),
            "{why}: output frame (got, expected)"
        );
        let after = self.counters();
        if *action == TC_ACT_OK {
            // Passes are not counted (status derives them from the
            // device's packet counter): nothing per passed packet.
            assert_eq!(after, before, "{why}: a pass moves no counter");
            return;
        }
        assert_eq!(
            counter(&after),
            counter(&before) + 1,
            "{why}: counter {after:?}"
        );
        let moved: Vec<_> = after
            .fields()
            .into_iter()
            .zip(before.fields())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| format!("{name} {b} -> {a}"))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "{why}: exactly one counter moved: {moved:?}"
        );
    }
}

/// One packet fixture, katran-style: why it exists, what goes in, and
/// everything that must come out.
struct Case {
    why: &'static str,
    program: &'static str,
    input: Vec<u8>,
    /// The device the packet entered the host on (0: the host sent it).
    ingress: u32,
    action: u32,
    counter: fn(&DeviceCounters) -> u64,
    /// The whole expected frame; `None`: unchanged.
    output: Option<Vec<u8>>,
}

impl Case {
    fn tap(
        why: &'static str,
        input: Vec<u8>,
        action: u32,
        counter: fn(&DeviceCounters) -> u64,
    ) -> Self {
        Self {
            why,
            program: "tap_ingress",
            input,
            ingress: 0,
            action,
            counter,
            output: None,
        }
    }

    fn host(
        why: &'static str,
        input: Vec<u8>,
        action: u32,
        counter: fn(&DeviceCounters) -> u64,
    ) -> Self {
        Self {
            program: "host_egress",
            ..Self::tap(why, input, action, counter)
        }
    }

    fn to(mut self, output: Vec<u8>) -> Self {
        self.output = Some(output);
        self
    }

    fn entered_on(mut self, ingress: Ifindex) -> Self {
        self.ingress = ingress.0;
        self
    }
}

fn run_table(fx: &Fixture, cases: &[Case]) {
    for case in cases {
        fx.check(case);
    }
}

/// The verifier puts an unclone prologue (`bpf_unclone_prologue`: test
/// `skb->cloned`, then call `bpf_skb_pull_data`) in front of any tc program
/// that stores to packet memory directly, and TCP sends cloned skbs: every
/// passed packet of a guest's TCP stream would pay a header copy (25 ns a
/// packet on iperf3 traffic here). The programs write only through
/// `bpf_skb_store_bytes`; this checks what the kernel actually runs.
#[test]
fn no_program_gets_the_verifiers_unclone_prologue() {
    let fx = Fixture::unconfigured();
    for name in ["tap_ingress", "host_egress"] {
        let program: &SchedClassifier = fx.ebpf.program(name).unwrap().try_into().unwrap();
        let id = program.info().unwrap().id().to_string();
        let dump = metadata_tests::run("bpftool", &["-j", "prog", "dump", "xlated", "id", &id])
            .unwrap_or_else(|err| panic!("dumping {name}: {err:#}"));
        let insns: Vec<serde_json::Value> = serde_json::from_str(&dump).unwrap();
        let head: Vec<&str> = insns
            .iter()
            .take(8)
            .map(|insn| insn["disasm"].as_str().unwrap_or_default())
            .collect();
        assert!(!head.is_empty(), "{name}: no instructions in {dump}");
        let prologue = head[0].contains("*(u8 *)(r1 +")
            && head.iter().any(|insn| insn.contains("bpf_skb_pull_data"));
        assert!(
            !prologue,
            "{name} begins with the unclone prologue: {head:#?}"
        );
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

fn request(dport: u16, src: [u8; 4], opts: Ipv4Opts) -> Vec<u8> {
    tcp_frame(
        (ROUTER_MAC, GUEST_MAC),
        src,
        METADATA,
        (40000, dport),
        REQUEST,
        opts,
    )
}

/// What the host stack receives for a steered request.
fn steered(opts: Ipv4Opts) -> Vec<u8> {
    tcp_frame(
        (HOST_MAC, GUEST_MAC),
        SLOT_ADDR,
        PROXY,
        (40000, PROXY_PORT),
        REQUEST,
        opts,
    )
}

fn reply(dst: [u8; 4], src: [u8; 4], sport: u16) -> Vec<u8> {
    tcp_frame(
        (HOST_MAC, HOST_MAC),
        src,
        dst,
        (sport, 40000),
        RESPONSE,
        Ipv4Opts::default(),
    )
}

fn request6(src: [u8; 16], dport: u16) -> Vec<u8> {
    tcp6_frame(
        (HOST_MAC, GUEST_MAC),
        src,
        METADATA6,
        (40000, dport),
        REQUEST,
    )
}

fn reply6(dst: [u8; 16]) -> Vec<u8> {
    tcp6_frame(
        (HOST_MAC, HOST_MAC),
        PROXY6,
        dst,
        (PROXY_PORT, 40000),
        RESPONSE,
    )
}

/// Sets the TCP data offset (in words) of an IPv4 frame without options.
fn with_data_offset(mut frame: Vec<u8>, l4_off: usize, words: u8) -> Vec<u8> {
    frame[l4_off + 12] = words << 4;
    frame
}

const V4_TCP: usize = 14 + 20;
const V6_TCP: usize = 14 + 40;
const STRANGER6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99];
const OTHER6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[test]
fn tap_ingress_steers_registered_requests_to_the_proxy() {
    let fx = Fixture::new();
    let options = Ipv4Opts {
        option_words: 3,
        frag_off: 0x4000,
    };
    run_table(
        &fx,
        &[
            Case::tap(
                "a registered request: source NATed to its slot, sent to the proxy",
                request(80, GUEST, Ipv4Opts::default()),
                TC_ACT_REDIRECT,
                |c| c.steered,
            )
            .to(steered(Ipv4Opts::default())),
            Case::tap(
                "IP options and DF: still steered, options kept",
                request(80, GUEST, options),
                TC_ACT_REDIRECT,
                |c| c.steered,
            )
            .to(steered(options)),
            Case::tap(
                "IPv6: through the NAT /96 to the proxy's IPv6 address",
                request6(GUEST6, 80),
                TC_ACT_REDIRECT,
                |c| c.steered,
            )
            .to(tcp6_frame(
                (HOST_MAC, GUEST_MAC),
                SLOT6_ADDR,
                PROXY6,
                (40000, PROXY_PORT),
                REQUEST,
            )),
        ],
    );
    // The MAC the guest addressed is learned for the reply.
    assert_eq!(fx.slot().router_mac, MacAddr(ROUTER_MAC));
}

#[test]
fn tap_ingress_drops_new_connections_over_the_taps_budget() {
    // One connection a second, two at once: the third SYN in a row finds
    // the bucket empty, whatever the family; segments of an open
    // connection and unregistered sources are never charged.
    let budget = ConnBudget {
        interval_ns: 1_000_000_000,
        burst: 2,
    };
    let fx = Fixture::with_budget(true, budget);
    let syn = tcp_frame(
        (ROUTER_MAC, GUEST_MAC),
        GUEST,
        METADATA,
        (40000, 80),
        b"",
        Ipv4Opts::default(),
    );
    let syn_steered = tcp_frame(
        (HOST_MAC, GUEST_MAC),
        SLOT_ADDR,
        PROXY,
        (40000, PROXY_PORT),
        b"",
        Ipv4Opts::default(),
    );
    let syn6 = tcp6_frame((HOST_MAC, GUEST_MAC), GUEST6, METADATA6, (40000, 80), b"");
    let stranger_syn = tcp_frame(
        (ROUTER_MAC, GUEST_MAC),
        [10, 0, 0, 99],
        METADATA,
        (40000, 80),
        b"",
        Ipv4Opts::default(),
    );
    run_table(
        &fx,
        &[
            Case::tap(
                "an unregistered source's SYN: dropped as such, not charged",
                stranger_syn,
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "first SYN: within the burst",
                syn.clone(),
                TC_ACT_REDIRECT,
                |c| c.steered,
            )
            .to(syn_steered.clone()),
            Case::tap(
                "second SYN: the burst's last token",
                syn.clone(),
                TC_ACT_REDIRECT,
                |c| c.steered,
            )
            .to(syn_steered),
            Case::tap(
                "third SYN: over the budget, dropped before the host sees it",
                syn,
                TC_ACT_SHOT,
                |c| c.drop_over_budget,
            ),
            Case::tap(
                "an IPv6 SYN from the same tap: the same budget",
                syn6,
                TC_ACT_SHOT,
                |c| c.drop_over_budget,
            ),
            Case::tap(
                "a segment of an open connection: never charged",
                request(80, GUEST, Ipv4Opts::default()),
                TC_ACT_REDIRECT,
                |c| c.steered,
            )
            .to(steered(Ipv4Opts::default())),
        ],
    );
}

#[test]
fn tap_ingress_passes_other_traffic_untouched() {
    let fx = Fixture::new();
    let icmp_to_metadata = ethernet(
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
    );
    let v6 = |next_header, payload: &[u8]| {
        ethernet(
            HOST_MAC,
            GUEST_MAC,
            ETH_P_IPV6,
            &ipv6(GUEST6, METADATA6, next_header, 64, payload),
        )
    };
    run_table(
        &fx,
        &[
            Case::tap(
                "another port on the metadata address",
                request(8080, GUEST, Ipv4Opts::default()),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "port 80 elsewhere",
                tcp_frame(
                    (ROUTER_MAC, GUEST_MAC),
                    GUEST,
                    [10, 0, 0, 1],
                    (40000, 80),
                    b"",
                    Ipv4Opts::default(),
                ),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "ICMP to the metadata address",
                icmp_to_metadata,
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "IPv6 TCP to someone else",
                tcp6_frame((ROUTER_MAC, GUEST_MAC), GUEST6, OTHER6, (40000, 80), b""),
                TC_ACT_OK,
                |c| c.passed,
            ),
            // (A runt IPv4 frame cannot be fed in: BPF_PROG_TEST_RUN itself rejects it.)
            Case::tap(
                "an unknown ethertype",
                ethernet(ROUTER_MAC, GUEST_MAC, 0x88cc, &[0; 46]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a bare Ethernet header",
                ethernet(ROUTER_MAC, GUEST_MAC, 0x88cc, &[]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "ARP for another address of the network",
                arp_request(GUEST_MAC, GUEST, [10, 0, 0, 3]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "ARP for someone else",
                arp_request(GUEST_MAC, GUEST, [10, 0, 0, 1]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a truncated ARP request is too short to be ours",
                arp_request(GUEST_MAC, GUEST, METADATA)[..14 + 20].to_vec(),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a registered source's ICMPv6 echo to the metadata address",
                v6(58, &[128, 0, 0, 0, 0, 0, 0, 0]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a registered source's fragment header",
                v6(44, &[6, 0, 0, 1, 0, 0, 0, 1]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a registered source's hop-by-hop header",
                v6(0, &[6, 0, 1, 4, 0, 0, 0, 0]),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a registered source's IPv6 to port 8080",
                request6(GUEST6, 8080),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::tap(
                "a solicitation for someone else",
                neighbor_solicitation(GUEST_MAC, GUEST6, OTHER6),
                TC_ACT_OK,
                |c| c.passed,
            ),
        ],
    );
}

#[test]
fn tap_ingress_drops_unregistered_malformed_and_fragmented_metadata_traffic() {
    let fx = Fixture::new();
    let good = || request(80, GUEST, Ipv4Opts::default());
    let mut bad_ihl = good();
    bad_ihl[14] = 0x44;
    let mut long_ihl = good();
    long_ihl[14] = 0x4f;
    let mut long_total = good();
    long_total[14 + 2..14 + 4].copy_from_slice(&2000u16.to_be_bytes());
    let fragment = |frag_off| {
        request(
            80,
            GUEST,
            Ipv4Opts {
                option_words: 0,
                frag_off,
            },
        )
    };
    let mut bad_arp = arp_request(GUEST_MAC, GUEST, METADATA);
    bad_arp[14 + 4] = 8;
    let mut long_payload6 = request6(GUEST6, 80);
    long_payload6[14 + 4..14 + 6].copy_from_slice(&2000u16.to_be_bytes());
    let frag6 = ethernet(
        HOST_MAC,
        GUEST_MAC,
        ETH_P_IPV6,
        &ipv6(STRANGER6, METADATA6, 44, 64, &[6, 0, 0, 1, 0, 0, 0, 1]),
    );
    run_table(
        &fx,
        &[
            Case::tap(
                "an unregistered source",
                request(80, [10, 0, 0, 6], Ipv4Opts::default()),
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "ARP from an unregistered source",
                arp_request(GUEST_MAC, [10, 0, 0, 9], METADATA),
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "IPv6 from an unregistered source",
                request6(STRANGER6, 80),
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "a solicitation from an unregistered source",
                neighbor_solicitation(GUEST_MAC, STRANGER6, METADATA6),
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "DAD for our address: nobody may claim it",
                neighbor_solicitation(GUEST_MAC, [0; 16], METADATA6),
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "an unregistered source's fragment header",
                frag6,
                TC_ACT_SHOT,
                |c| c.drop_unregistered,
            ),
            Case::tap(
                "IHL 4, shorter than the fixed header",
                bad_ihl,
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "TCP header cut short",
                good()[..V4_TCP + 10].to_vec(),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "IHL past the end of the packet",
                long_ihl[..14 + 40].to_vec(),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "IP total length beyond the frame",
                long_total,
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "TCP data offset under five words",
                with_data_offset(good(), V4_TCP, 4),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "TCP data offset beyond the packet",
                with_data_offset(good(), V4_TCP, 15),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "IPv6 payload length beyond the frame",
                long_payload6,
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "IPv6 TCP data offset under five words",
                with_data_offset(request6(GUEST6, 80), V6_TCP, 2),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "IPv6 TCP header cut short",
                request6(GUEST6, 80)[..V6_TCP + 10].to_vec(),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "ARP with a hardware address length of 8",
                bad_arp,
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::tap(
                "a first fragment (MF)",
                fragment(0x2000),
                TC_ACT_SHOT,
                |c| c.drop_fragment,
            ),
            Case::tap(
                "a later fragment (offset)",
                fragment(0x0010),
                TC_ACT_SHOT,
                |c| c.drop_fragment,
            ),
        ],
    );
    // A solicitation with a hop limit other than 255 is not from the link.
    let mut forwarded = neighbor_solicitation(GUEST_MAC, GUEST6, METADATA6);
    forwarded[14 + 7] = 64;
    fx.check(&Case::tap(
        "a forwarded solicitation",
        forwarded,
        TC_ACT_SHOT,
        |c| c.drop_malformed,
    ));
}

#[test]
fn tap_ingress_drops_guest_traffic_using_the_datapaths_own_addresses() {
    let slot_icmp = ethernet(
        ROUTER_MAC,
        GUEST_MAC,
        0x0800,
        &ipv4(
            GUEST,
            SLOT_ADDR,
            1,
            &[8, 0, 0, 0, 0, 0, 0, 0],
            Ipv4Opts::default(),
        ),
    );
    let slot6_icmp = ethernet(
        HOST_MAC,
        GUEST_MAC,
        ETH_P_IPV6,
        &ipv6(GUEST6, SLOT6_ADDR, 58, 64, &[128, 0, 0, 0, 0, 0, 0, 0]),
    );
    let guest_tcp = |src, dst, ports, payload: &[u8]| {
        tcp_frame(
            (ROUTER_MAC, GUEST_MAC),
            src,
            dst,
            ports,
            payload,
            Ipv4Opts::default(),
        )
    };
    let guest_tcp6 = |src, dst, ports, payload: &[u8]| {
        tcp6_frame((HOST_MAC, GUEST_MAC), src, dst, ports, payload)
    };
    // Every one of these is dropped and counted as reserved.
    let reserved = [
        (
            "a forged proxy reply to another guest's slot",
            guest_tcp(PROXY, SLOT_ADDR, (PROXY_PORT, 40000), b"INJECTED"),
        ),
        (
            "a connection straight to the proxy's address",
            guest_tcp(GUEST, PROXY, (40000, PROXY_PORT), b""),
        ),
        (
            "a packet from a slot address",
            guest_tcp(SLOT_ADDR, PROXY, (40000, PROXY_PORT), b""),
        ),
        ("ICMP to a slot address, whatever the protocol", slot_icmp),
        (
            "ARP for a slot address",
            arp_request(GUEST_MAC, GUEST, SLOT_ADDR),
        ),
        (
            "ARP for the proxy's address",
            arp_request(GUEST_MAC, GUEST, PROXY),
        ),
        (
            "IPv6: the forged reply of the report, proxy to a slot",
            guest_tcp6(PROXY6, SLOT6_ADDR, (80, 40000), b"INJECTED"),
        ),
        (
            "IPv6: a connection straight to the proxy",
            guest_tcp6(SLOT6_ADDR, PROXY6, (40000, 80), b""),
        ),
        ("IPv6: ICMPv6 to a slot", slot6_icmp),
        (
            "IPv6: a solicitation for the proxy's address",
            neighbor_solicitation(GUEST_MAC, GUEST6, PROXY6),
        ),
        (
            "IPv6: a solicitation for a slot",
            neighbor_solicitation(GUEST_MAC, GUEST6, SLOT6_ADDR),
        ),
    ];
    let cases: Vec<Case> = reserved
        .into_iter()
        .map(|(why, frame)| Case::tap(why, frame, TC_ACT_SHOT, |c| c.drop_reserved))
        .collect();
    // Also with an object loaded without its load-time values: the fast
    // path must then be off, not pass these with zero ranges.
    for fx in [Fixture::new(), Fixture::configured(false)] {
        run_table(&fx, &cases);
    }
}

#[test]
fn tap_ingress_fails_closed_before_the_daemon_configures_it() {
    let fx = Fixture::unconfigured();
    run_table(
        &fx,
        &[
            Case::tap(
                "a request",
                request(80, GUEST, Ipv4Opts::default()),
                TC_ACT_SHOT,
                |c| c.drop_error,
            ),
            Case::tap(
                "ARP for the metadata address",
                arp_request(GUEST_MAC, GUEST, METADATA),
                TC_ACT_SHOT,
                |c| c.drop_error,
            ),
            Case::tap("an IPv6 request", request6(GUEST6, 80), TC_ACT_SHOT, |c| {
                c.drop_error
            }),
            Case::tap(
                "a solicitation for the metadata address",
                neighbor_solicitation(GUEST_MAC, GUEST6, METADATA6),
                TC_ACT_SHOT,
                |c| c.drop_error,
            ),
            Case::tap(
                "other traffic still flows",
                request(8080, GUEST, Ipv4Opts::default()),
                TC_ACT_OK,
                |c| c.passed,
            ),
        ],
    );
}

#[test]
fn tap_ingress_answers_arp_and_neighbour_solicitations_for_the_metadata_address() {
    let fx = Fixture::new();
    let advertisement = neighbor_advertisement((GUEST_MAC, GUEST6), (HOST_MAC, METADATA6));
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
    run_table(
        &fx,
        &[
            Case::tap(
                "ARP: the host device's MAC, back to the asker",
                arp_request(GUEST_MAC, GUEST, METADATA),
                TC_ACT_REDIRECT,
                |c| c.arp_replied,
            )
            .to(arp_reply((HOST_MAC, METADATA), (GUEST_MAC, GUEST))),
            Case::tap(
                "ARP for the network's metadata next hop: answered the same way",
                arp_request(GUEST_MAC, GUEST, NEXTHOP),
                TC_ACT_REDIRECT,
                |c| c.arp_replied,
            )
            .to(arp_reply((HOST_MAC, NEXTHOP), (GUEST_MAC, GUEST))),
            Case::tap(
                "NDP: a solicited advertisement with the target option",
                neighbor_solicitation(GUEST_MAC, GUEST6, METADATA6),
                TC_ACT_REDIRECT,
                |c| c.ndp_replied,
            )
            .to(advertisement.clone()),
            Case::tap(
                "NDP: a solicitation without the source option",
                short,
                TC_ACT_REDIRECT,
                |c| c.ndp_replied,
            )
            .to(advertisement),
        ],
    );
}

#[test]
fn host_egress_returns_replies_to_the_guest() {
    let fx = Fixture::new();
    // The guest's request taught the slot which MAC it addressed.
    fx.run("tap_ingress", &request(80, GUEST, Ipv4Opts::default()));
    run_table(
        &fx,
        &[
            Case::host(
                "IPv4: from the metadata address and the MAC the guest addressed",
                reply(SLOT_ADDR, PROXY, PROXY_PORT),
                TC_ACT_REDIRECT,
                |c| c.replied,
            )
            .to(tcp_frame(
                (GUEST_MAC, ROUTER_MAC),
                METADATA,
                GUEST,
                (80, 40000),
                RESPONSE,
                Ipv4Opts::default(),
            )),
            Case::host(
                "IPv6: no request learned a MAC yet, so from the host device's",
                reply6(SLOT6_ADDR),
                TC_ACT_REDIRECT,
                |c| c.replied,
            )
            .to(tcp6_frame(
                (GUEST_MAC, HOST_MAC),
                METADATA6,
                GUEST6,
                (80, 40000),
                RESPONSE,
            )),
        ],
    );
}

#[test]
fn host_egress_drops_forged_unknown_and_malformed_replies_and_passes_the_rest() {
    let fx = Fixture::new();
    let mut unknown6 = SLOT6_ADDR;
    unknown6[15] = 9;
    let udp_from_proxy = ethernet(
        HOST_MAC,
        HOST_MAC,
        0x0800,
        &ipv4(PROXY, SLOT_ADDR, 17, &[0; 8], Ipv4Opts::default()),
    );
    run_table(
        &fx,
        &[
            Case::host(
                "a reply to a slot with no entry",
                reply([100, 64, 0, 9], PROXY, PROXY_PORT),
                TC_ACT_SHOT,
                |c| c.drop_no_slot,
            ),
            Case::host(
                "an IPv6 reply to a slot with no entry",
                reply6(unknown6),
                TC_ACT_SHOT,
                |c| c.drop_no_slot,
            ),
            Case::host(
                "a truncated reply",
                reply(SLOT_ADDR, PROXY, PROXY_PORT)[..V4_TCP + 8].to_vec(),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::host(
                "a reply with a TCP data offset under five words",
                with_data_offset(reply(SLOT_ADDR, PROXY, PROXY_PORT), V4_TCP, 3),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::host(
                "a truncated IPv6 reply",
                reply6(SLOT6_ADDR)[..V6_TCP + 8].to_vec(),
                TC_ACT_SHOT,
                |c| c.drop_malformed,
            ),
            Case::host(
                "a forged reply a guest got forwarded here",
                reply(SLOT_ADDR, PROXY, PROXY_PORT),
                TC_ACT_SHOT,
                |c| c.drop_forged,
            )
            .entered_on(LO),
            Case::host(
                "a forged IPv6 reply a guest got forwarded here",
                reply6(SLOT6_ADDR),
                TC_ACT_SHOT,
                |c| c.drop_forged,
            )
            .entered_on(LO),
            Case::host(
                "anything forwarded from the proxy's address",
                udp_from_proxy,
                TC_ACT_SHOT,
                |c| c.drop_forged,
            )
            .entered_on(LO),
            Case::host(
                "not from the proxy's address",
                reply(SLOT_ADDR, [169, 254, 169, 1], PROXY_PORT),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::host(
                "not from the proxy's port",
                reply(SLOT_ADDR, PROXY, 22),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::host(
                "outside the NAT range",
                reply([10, 0, 0, 5], PROXY, PROXY_PORT),
                TC_ACT_OK,
                |c| c.passed,
            ),
            Case::host(
                "forwarded, but not from the proxy's address",
                reply(SLOT_ADDR, [169, 254, 169, 1], PROXY_PORT),
                TC_ACT_OK,
                |c| c.passed,
            )
            .entered_on(LO),
            Case::host(
                "IPv6 not from the proxy",
                ethernet(HOST_MAC, HOST_MAC, ETH_P_IPV6, &[0x60; 60]),
                TC_ACT_OK,
                |c| c.passed,
            ),
        ],
    );
}
