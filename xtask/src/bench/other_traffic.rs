//! The cost to other traffic: iperf3 from one VM to another across a
//! bridge, without and with the programs on both taps, and the programs'
//! run time per packet against an empty and a peeking program.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use metadata_tests::{Hypervisor, InstanceSpec, Vm};
use serde_json::Value;
use serde_json::json;

use super::{
    floor_prog,
    floor_prog::Floor,
    harness::{KillOnDrop, ratio},
    settings::Settings,
};

fn sysctl(key: &str, value: Option<&str>) -> anyhow::Result<String> {
    match value {
        Some(v) => metadata_tests::run("sysctl", &["-qw", &format!("{key}={v}")]),
        None => metadata_tests::run("sysctl", &["-n", key]).map(|s| s.trim().to_owned()),
    }
}

/// iperf3 from one VM to another across a bridge, with the programs on
/// both taps and without, and the programs' mean run time per packet.
pub(super) fn measure(settings: &Settings) -> anyhow::Result<OtherTraffic> {
    eprintln!("bench: cost to other traffic");
    let mut hv = Hypervisor::new()?;
    let a = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5))?;
    let b = hv.add_vm(Ipv4Addr::new(10, 0, 0, 6))?;
    let bridge = hv.add_bridge()?;
    hv.plug(&a.tap, &bridge)?;
    hv.plug(&b.tap, &bridge)?;
    let _server = start_iperf_server(&b)?;
    // Alternate without and with programs and compare the medians: single
    // iperf3 runs on veths vary by a few percent. The rate with programs is
    // measured with the daemon's programs alone and statistics off; the
    // per-packet times come from separate runs with the floors in front
    // and statistics on (their clock reads cost more than the programs).
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..settings.iperf_rounds {
        without.push(iperf_bps(&a, &b, settings.iperf_s)?);
        with.push(with_programs(&mut hv, &a, &b, settings.iperf_s, Timing::Off)?.0);
    }
    let mut stats = [(0.0, 0.0); 3];
    for _ in 0..settings.timing_rounds {
        let (_, round) = with_programs(&mut hv, &a, &b, settings.iperf_s, Timing::On)?;
        for (total, (time, count)) in stats.iter_mut().zip(round) {
            *total = (total.0 + time, total.1 + count);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [
        (run_time, run_cnt),
        (empty_time, empty_cnt),
        (peek_time, peek_cnt),
    ] = stats;
    ensure!(
        run_cnt == empty_cnt && run_cnt == peek_cnt,
        "the empty program ran {empty_cnt} times, the peeking one {peek_cnt}, \
         tap_ingress {run_cnt}: not the same packets"
    );
    Ok(OtherTraffic {
        without_bps: median(&mut without),
        with_bps: median(&mut with),
        ns_per_packet: ratio(run_time, run_cnt),
        empty_ns_per_packet: ratio(empty_time, empty_cnt),
        peek_ns_per_packet: ratio(peek_time, peek_cnt),
        packets: run_cnt as u64,
    })
}

/// Whether a run with programs also times them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// The daemon's programs alone, statistics off: the rate other
    /// traffic gets.
    Off,
    /// The floors (the empty and the peeking program) in front of them on
    /// the same packets (data one way, ACKs the other), statistics on.
    On,
}

/// One iperf3 run from `a` to `b` with the daemon's programs on their taps.
/// Returns the rate and, when timed, (run time, run count) of tap_ingress,
/// the empty and the peeking program (zeros otherwise).
fn with_programs(
    hv: &mut Hypervisor,
    a: &Vm,
    b: &Vm,
    seconds: u32,
    timing: Timing,
) -> anyhow::Result<(f64, [(f64, f64); 3])> {
    hv.set_instances(vec![
        InstanceSpec::for_vm(a, "a"),
        InstanceSpec::for_vm(b, "b"),
    ])?;
    hv.start_daemon()?;
    let measured = if timing == Timing::On {
        timed_iperf(hv, a, b, seconds)
    } else {
        iperf_bps(a, b, seconds).map(|bps| (bps, [(0.0, 0.0); 3]))
    };
    hv.stop_daemon()?;
    hv.daemon_command(&["teardown"])?;
    measured
}

/// An iperf3 run with the floors attached and statistics on.
fn timed_iperf(
    hv: &Hypervisor,
    a: &Vm,
    b: &Vm,
    seconds: u32,
) -> anyhow::Result<(f64, [(f64, f64); 3])> {
    let taps = [hv.ifindex_of(&a.tap)?, hv.ifindex_of(&b.tap)?];
    let _floors = hv.ns().run(|| {
        anyhow::Ok([
            floor_prog::attach(Floor::Empty, &taps)?,
            floor_prog::attach(Floor::Peek, &taps)?,
        ])
    })??;
    let previous = sysctl("kernel.bpf_stats_enabled", None)?;
    sysctl("kernel.bpf_stats_enabled", Some("1"))?;
    let measured = iperf_bps(a, b, seconds);
    let stats = [
        run_stats("tap_ingress"),
        run_stats(Floor::Empty.name()),
        run_stats(Floor::Peek.name()),
    ];
    sysctl("kernel.bpf_stats_enabled", Some(&previous))?;
    let [ours, empty, peek] = stats;
    Ok((measured?, [ours?, empty?, peek?]))
}

/// Total run time (ns) and run count of the newest program called `name`.
fn run_stats(name: &str) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "name", name])
        .output()
        .context("running bpftool prog show")?;
    program_run_stats(&out.stdout).with_context(|| format!("stats of {name}"))
}

/// An iperf3 server in `vm`, returned once it listens (a probe connection
/// would count as a client).
fn start_iperf_server(vm: &Vm) -> anyhow::Result<KillOnDrop> {
    let server = vm
        .ns
        .command("iperf3")
        .args(["-s", "-B", &vm.ip.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .context("starting iperf3 -s")?;
    metadata_tests::wait_for("iperf3 server", Duration::from_secs(5), || {
        vm.ns
            .exec("ss", &["-Hltn", "sport = :5201"])
            .ok()
            .filter(|out| !out.trim().is_empty())
    })?;
    Ok(server)
}

/// TCP throughput from `client` to `server` over `seconds`, bits/s received.
fn iperf_bps(client: &Vm, server: &Vm, seconds: u32) -> anyhow::Result<f64> {
    let out = client.ns.exec(
        "iperf3",
        &[
            "-J",
            "-c",
            &server.ip.to_string(),
            "-t",
            &seconds.to_string(),
        ],
    )?;
    let json: Value = serde_json::from_str(&out)?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 result: {out}"))
}

/// Total run time (ns) and run count of the newest program in
/// `bpftool -j prog show name ...` output.
fn program_run_stats(bpftool_stdout: &[u8]) -> anyhow::Result<(f64, f64)> {
    let text = String::from_utf8_lossy(bpftool_stdout);
    // One object per program of that name; take ours (the newest).
    let progs: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|v| if let Value::Array(a) = v { a } else { vec![v] })
        .collect();
    let prog = progs
        .iter()
        .max_by_key(|p| p["id"].as_u64())
        .context("no such program")?;
    Ok((
        prog["run_time_ns"].as_f64().unwrap_or(0.0),
        prog["run_cnt"].as_f64().unwrap_or(0.0),
    ))
}

pub(super) struct OtherTraffic {
    without_bps: f64,
    with_bps: f64,
    ns_per_packet: f64,
    /// The empty program's, on the same packets.
    empty_ns_per_packet: f64,
    /// The peeking program's (headers read and compared), on the same
    /// packets.
    peek_ns_per_packet: f64,
    packets: u64,
}

/// Throughput of tenant traffic with and without the programs.
pub(super) fn markdown(o: &OtherTraffic) -> String {
    let mut md = String::new();
    {
        let _ = writeln!(
            md,
            "\n## Cost to other traffic (iperf3 TCP, VM to VM across a bridge)\n"
        );
        let _ = writeln!(
            md,
            "| without programs Gbit/s | with the daemon's programs Gbit/s | with/without | tap_ingress ns per packet | empty program ns per packet (same packets) | peeking program ns per packet (same packets) | ours above empty | ours above peeking | packets measured |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let _ = writeln!(
            md,
            "| {:.2} | {:.2} | {:.3} | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {:.1} ns | {} |",
            o.without_bps / 1e9,
            o.with_bps / 1e9,
            ratio(o.with_bps, o.without_bps),
            o.ns_per_packet,
            o.empty_ns_per_packet,
            o.peek_ns_per_packet,
            o.ns_per_packet - o.empty_ns_per_packet,
            o.ns_per_packet - o.peek_ns_per_packet,
            o.packets
        );
        let _ = writeln!(
            md,
            "\nRates: medians of alternating rounds, the daemon's programs alone and BPF statistics off. Per-packet times: separate runs with the empty and the peeking program attached in front of `tap_ingress` and statistics on."
        );
    }
    md
}

/// Within 1 % of no programs; tap_ingress at most 10 ns above an empty
/// program on the same packets.
pub(super) fn targets(o: &OtherTraffic) -> Vec<(String, bool)> {
    let r = ratio(o.with_bps, o.without_bps);
    let above = o.ns_per_packet - o.empty_ns_per_packet;
    vec![
        (
            format!("other traffic within 1% of no programs ({r:.3})"),
            r >= 0.99,
        ),
        (
            format!(
                "tap_ingress <= 10 ns above an empty program on the same packets ({above:.1} ns)"
            ),
            above <= 10.0,
        ),
    ]
}

pub(super) fn json(o: &OtherTraffic) -> Value {
    json!({
        "without_bps": o.without_bps, "with_bps": o.with_bps,
        "with_over_without": ratio(o.with_bps, o.without_bps),
        "tap_ingress_ns_per_packet": o.ns_per_packet,
        "empty_program_ns_per_packet": o.empty_ns_per_packet,
        "peeking_program_ns_per_packet": o.peek_ns_per_packet, "packets": o.packets,
    })
}
