//! `cargo xtask bench`: the OVN Southbound side. A Southbound with 20,000
//! Port_Bindings over 500 chassis (50 on this one), read once by the
//! daemon (source "ovn": a conditional monitor of the local bindings) and
//! once by neutron's own client for that table (the python `ovs` IDL,
//! Debian's python3-openvswitch, replicating Port_Binding whole as the OVN
//! metadata agent does), side by side: time to the first full view,
//! memory, and bytes received from the Southbound, counted by a relay in
//! front of it.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use metadata_tests::{
    Hypervisor,
    ovn::{LocalOvs, Southbound},
};
use serde_json::{Value, json};

const CHASSIS: usize = 500;
const BINDINGS: usize = 20_000;
const LOCAL: usize = 50;
const PORTS_PER_NETWORK: usize = 20;
const RELAY: &str = "127.0.0.1:6700";
const SB: &str = "127.0.0.1:6641";

/// One client's first full view.
#[derive(Debug, Clone)]
pub struct Sync {
    pub client: &'static str,
    pub seconds: f64,
    pub rss_mib: f64,
    pub bytes: u64,
    pub rows: usize,
}

pub fn measure() -> anyhow::Result<Vec<Sync>> {
    eprintln!("bench: OVN Southbound, {BINDINGS} bindings over {CHASSIS} chassis, {LOCAL} here");
    let mut hv = Hypervisor::new()?;
    let sb = Southbound::standalone(&hv)?;
    let local = populate(&hv)?;
    let ovs = LocalOvs::start(&hv, "chassis-0")?;
    for (i, port) in local.iter().enumerate() {
        ovs.vsctl(&[
            "--no-wait",
            "add-port",
            "br-int",
            &format!("vif{i}"),
            "--",
            "set",
            "Interface",
            &format!("vif{i}"),
            &format!("external_ids:iface-id={port}"),
        ])?;
    }
    let relay = Relay::start(&hv)?;
    hv.ports_config = Some(format!(
        "source = \"ovn\"\novs = \"{}\"\novn_sb = \"tcp:{RELAY}\"\n",
        ovs.remote()
    ));
    let started = Instant::now();
    hv.start_daemon()?;
    let ours = Sync {
        client: "ours (daemon, conditional monitor)",
        seconds: started.elapsed().as_secs_f64(),
        rss_mib: rss_mib(hv.daemon_pid().context("daemon pid")?)?,
        bytes: relay.take(),
        rows: LOCAL,
    };
    hv.stop_daemon()?;
    let neutron = neutron_idl(&hv, &relay)?;
    drop(sb);
    Ok(vec![ours, neutron])
}

/// The Southbound's rows in one transaction; returns the logical ports
/// bound to chassis-0 (this host).
fn populate(hv: &Hypervisor) -> anyhow::Result<Vec<String>> {
    let mut ops = Vec::new();
    for c in 0..CHASSIS {
        ops.push(json!({"op": "insert", "table": "Encap", "uuid-name": format!("e{c}"),
            "row": {"type": "geneve", "ip": format!("10.{}.{}.{}", c / 65536, (c / 256) % 256, c % 256), "chassis_name": format!("chassis-{c}")}}));
        ops.push(json!({"op": "insert", "table": "Chassis", "uuid-name": format!("c{c}"),
            "row": {"name": format!("chassis-{c}"), "hostname": format!("compute-{c}"), "encaps": ["named-uuid", format!("e{c}")]}}));
    }
    for n in 0..BINDINGS / PORTS_PER_NETWORK {
        ops.push(json!({"op": "insert", "table": "Datapath_Binding", "uuid-name": format!("d{n}"),
            "row": {"tunnel_key": n + 1, "external_ids": ["map", [["name", format!("neutron-net-{n}")]]]}}));
    }
    let mut local = Vec::new();
    for b in 0..BINDINGS {
        // Every 400th binding is here: 50 of 20,000.
        let chassis = if b % (BINDINGS / LOCAL) == 0 {
            0
        } else {
            1 + b % (CHASSIS - 1)
        };
        let port = format!("port-{b:05}");
        if chassis == 0 {
            local.push(port.clone());
        }
        let mac = format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x} 10.{}.{}.{}",
            b >> 16,
            (b >> 8) & 255,
            b & 255,
            b / 65536,
            (b / 256) % 256,
            b % 256 + 1
        );
        ops.push(json!({"op": "insert", "table": "Port_Binding", "row": {
            "logical_port": port, "datapath": ["named-uuid", format!("d{}", b / PORTS_PER_NETWORK)],
            "tunnel_key": b % PORTS_PER_NETWORK + 1, "mac": mac, "chassis": ["named-uuid", format!("c{chassis}")],
            "external_ids": ["map", [["neutron:device_id", format!("vm-{b}")], ["neutron:project_id", "project"]]],
        }}));
    }
    let mut params = vec![json!("OVN_Southbound")];
    params.extend(ops);
    let reply = hv.ns().run(|| {
        rpc(
            SB,
            &json!({"method": "transact", "params": params, "id": 1}),
        )
    })??;
    if reply["result"]
        .as_array()
        .is_none_or(|r| r.iter().any(|op| op.get("error").is_some()))
    {
        bail!(
            "populating the Southbound failed: {}",
            &reply.to_string()[..reply.to_string().len().min(400)]
        );
    }
    Ok(local)
}

/// One JSON-RPC call over a fresh connection.
fn rpc(addr: &str, request: &Value) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.write_all(request.to_string().as_bytes())?;
    let mut values = serde_json::Deserializer::from_reader(stream).into_iter::<Value>();
    Ok(values.next().context("no reply")??)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// neutron's client: the python IDL registering the tables the OVN
/// metadata agent registers, whole, until it holds every binding.
fn neutron_idl(hv: &Hypervisor, relay: &Relay) -> anyhow::Result<Sync> {
    const SCRIPT: &str = r#"
import json, resource, sys, time
import ovs.db.idl, ovs.poller
helper = ovs.db.idl.SchemaHelper("/usr/share/ovn/ovn-sb.ovsschema")
for table in ("Chassis", "Chassis_Private", "Datapath_Binding", "Port_Binding", "Encap"):
    if table in helper.schema_json["tables"]:
        helper.register_table(table)
idl = ovs.db.idl.Idl(sys.argv[1], helper)
start = time.monotonic()
while len(idl.tables["Port_Binding"].rows) < int(sys.argv[2]):
    idl.run()
    poller = ovs.poller.Poller()
    idl.wait(poller)
    poller.block()
print(json.dumps({"seconds": time.monotonic() - start, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rows": len(idl.tables["Port_Binding"].rows)}))
"#;
    let remote = format!("tcp:{RELAY}");
    let out = hv.ns().exec(
        "/usr/bin/python3",
        &["-c", SCRIPT, &remote, &BINDINGS.to_string()],
    )?;
    let result: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("python said: {out}"))?;
    Ok(Sync {
        client: "neutron (python ovs IDL, whole Port_Binding)",
        seconds: result["seconds"].as_f64().unwrap_or_default(),
        rss_mib: result["maxrss_kib"].as_f64().unwrap_or_default() / 1024.0,
        bytes: relay.take(),
        rows: result["rows"].as_u64().unwrap_or_default() as usize,
    })
}

/// A TCP relay in front of the Southbound that counts what the server
/// sends to its clients.
struct Relay {
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(hv: &Hypervisor) -> anyhow::Result<Self> {
        let listener = hv.ns().run(|| TcpListener::bind(RELAY))??;
        listener.set_nonblocking(true)?;
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&bytes), Arc::clone(&stop));
        let ns = hv.ns().name().to_owned();
        std::thread::spawn(move || {
            // This thread and the ones it starts live in the namespace.
            if let Err(err) = metadata_tests::enter_netns(&ns) {
                eprintln!("bench: relay: {err}");
                return;
            }
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => relay(client, Arc::clone(&count)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { bytes, stop })
    }

    /// The bytes counted since the last call.
    fn take(&self) -> u64 {
        self.bytes.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, count: Arc<AtomicU64>) {
    let Ok(server) = TcpStream::connect(SB) else {
        return;
    };
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    client.set_nonblocking(false).ok();
    std::thread::spawn(move || std::io::copy(&mut c2, &mut { server }).ok());
    std::thread::spawn(move || {
        let mut client = client;
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s2.read(&mut buf) {
            if n == 0 || client.write_all(&buf[..n]).is_err() {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
}

/// The report's section.
pub fn markdown(syncs: &[Sync]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## OVN Southbound: first full view ({BINDINGS} bindings, {CHASSIS} chassis, {LOCAL} here)\n"
    );
    let _ = writeln!(
        md,
        "| client | rows held | time s | RSS MiB | bytes from the Southbound |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for s in syncs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.1} | {} |",
            s.client, s.rows, s.seconds, s.rss_mib, s.bytes
        );
    }
    let _ = writeln!(
        md,
        "\nOurs: daemon start to `ready` (host device, programs, and the first Southbound view). Neutron: the IDL alone."
    );
    md
}

pub fn json(syncs: &[Sync]) -> Value {
    Value::Array(
        syncs
            .iter()
            .map(|s| json!({"client": s.client, "rows": s.rows, "seconds": s.seconds, "rss_mib": s.rss_mib, "bytes": s.bytes}))
            .collect(),
    )
}
