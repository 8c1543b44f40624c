//! A soak: many VMs, each with a few keep-alive connections making a mix
//! of requests at a steady pace, with abusive guests among them (a request
//! flood over its rate limit, slowloris connections, garbage bytes,
//! connection churn). Every answer a well-behaved guest gets is checked
//! against its own instance; the daemon's RSS is read before and after.
//! `cargo xtask soak` runs it for a minute, the test suite for seconds.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{Hypervisor, InstanceSpec, METADATA, Vm, enter_netns};

/// How big and how long.
#[derive(Debug, Clone, Copy)]
pub struct SoakOptions {
    pub vms: usize,
    /// Keep-alive connections per well-behaved VM.
    pub connections: usize,
    pub duration: Duration,
    /// How many of the VMs are abusive (one of each kind in turn).
    pub abusive: usize,
}

/// What happened.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Requests well-behaved guests made, and how many failed or were
    /// answered wrong (both must be zero).
    pub requests: u64,
    pub failed: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// How long each answered request of a well-behaved guest took.
    pub latencies: Vec<Duration>,
    /// Requests, connections or writes the abusive guests made, by kind
    /// (flood, slowloris, garbage, churn).
    pub abuse: [u64; 4],
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// The host's accept-queue overflows and listen drops during the run
    /// (TcpExt ListenOverflows and ListenDrops in the daemon's namespace).
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

impl SoakReport {
    /// The `q` quantile (0 to 1) of the well-behaved latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let Some(last) = sorted.len().checked_sub(1) else {
            return Duration::ZERO;
        };
        sorted[((last as f64) * q).round() as usize]
    }

    /// The slowest answer a well-behaved guest waited for.
    pub fn slowest(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }

    /// Every abusive request, connection or write.
    pub fn abuse_total(&self) -> u64 {
        self.abuse.iter().sum()
    }

    /// One line with everything a reader compares between runs.
    pub fn summary(&self, duration: Duration) -> String {
        let secs = duration.as_secs_f64();
        let [flood, slowloris, garbage, churn] = self.abuse.map(|n| n as f64 / secs);
        format!(
            "{} well-behaved requests, {} failed; latency p50 {:?} p99 {:?} p99.9 {:?} max {:?}; \
             abusive per second: flood {flood:.0} requests, slowloris {slowloris:.0} connections, \
             garbage {garbage:.0} connections, churn {churn:.0} connections; \
             ListenOverflows {} ListenDrops {}; daemon RSS {} KiB -> {} KiB",
            self.requests,
            self.failed,
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
            self.slowest(),
            self.listen_overflows,
            self.listen_drops,
            self.rss_start_kib,
            self.rss_end_kib,
        )
    }
}

/// The slowest answer a well-behaved guest may wait for, abuse or not:
/// what a quiet host gives, far under a SYN retransmission (1 s).
pub const BOUND: Duration = Duration::from_millis(200);

/// The soak's options in the suite and in `cargo xtask soak`: 50 VMs, 4
/// of them abusive (one of each kind), 4 keep-alive connections each.
pub fn standard(duration: Duration) -> SoakOptions {
    SoakOptions {
        vms: 50,
        connections: 4,
        duration,
        abusive: 4,
    }
}

/// What a soak must show: no failed or wrong answer, none slower than
/// [`BOUND`], every kind of abuse really running, and no memory growth
/// beyond 32 MiB.
pub fn check(report: &SoakReport, options: &SoakOptions) -> anyhow::Result<()> {
    if report.failed > 0 {
        bail!("well-behaved guests saw failures: {:#?}", report.failures);
    }
    let well_behaved = (options.vms - options.abusive) * options.connections;
    // 5 requests a second per connection, less start-up.
    let expected = well_behaved as f64 * 5.0 * options.duration.as_secs_f64() * 0.5;
    if (report.requests as f64) < expected {
        bail!(
            "only {} well-behaved requests (expected over {expected:.0})",
            report.requests
        );
    }
    if let Some(idle) = ABUSES
        .iter()
        .find(|kind| report.abuse[**kind as usize] < 10)
    {
        bail!("the {idle:?} guest did not run: {:?}", report.abuse);
    }
    let slowest = report.slowest();
    if slowest > BOUND {
        let over = report.latencies.iter().filter(|l| **l > BOUND).count();
        bail!("{over} well-behaved requests took over {BOUND:?}, the slowest {slowest:?}");
    }
    if report.rss_end_kib > report.rss_start_kib + 32 * 1024 {
        bail!(
            "daemon RSS grew from {} KiB to {} KiB",
            report.rss_start_kib,
            report.rss_end_kib
        );
    }
    Ok(())
}

/// Each well-behaved connection asks once per this (5 requests/s): four
/// connections stay well under the default rate limit (30/s sustained).
const PACE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
#[repr(usize)]
enum Abuse {
    Flood,
    Slowloris,
    Garbage,
    Churn,
}

const ABUSES: [Abuse; 4] = [Abuse::Flood, Abuse::Slowloris, Abuse::Garbage, Abuse::Churn];

/// Runs the soak; fails only when it could not be set up.
pub fn run(options: SoakOptions) -> anyhow::Result<SoakReport> {
    crate::raise_open_files_limit()?;
    let mut hv = Hypervisor::new()?;
    let vms: Vec<Vm> = (0..options.vms)
        .map(|_| hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)))
        .collect::<anyhow::Result<_>>()?;
    let specs: Vec<InstanceSpec> = vms
        .iter()
        .enumerate()
        .map(|(i, vm)| {
            let mut spec = InstanceSpec::for_vm(vm, &format!("soak-{i}"));
            spec.user_data = Some(format!("#cloud-config\n# soak {}\n", spec.id));
            spec
        })
        .collect();
    hv.extra_config = "\n[rate_limit]\nenabled = true\n".into();
    hv.set_instances(specs.clone())?;
    hv.start_daemon()?;
    let pid = hv.daemon_pid().context("the daemon's pid")?;
    let report = std::sync::Mutex::new(SoakReport {
        rss_start_kib: rss_kib(pid)?,
        ..SoakReport::default()
    });
    let listen_start = listen_counters(pid)?;
    let stop = AtomicBool::new(false);
    let abuse: [AtomicU64; 4] = Default::default();
    let deadline = Instant::now() + options.duration;
    std::thread::scope(|s| {
        for (i, (vm, spec)) in vms.iter().zip(&specs).enumerate() {
            if i < options.abusive {
                let kind = ABUSES[i % ABUSES.len()];
                let (stop, count) = (&stop, &abuse[kind as usize]);
                s.spawn(move || abusive(vm, kind, stop, count));
                continue;
            }
            for _ in 0..options.connections {
                let report = &report;
                s.spawn(move || well_behaved(vm, spec, deadline, report));
            }
        }
        std::thread::sleep(options.duration);
        stop.store(true, Ordering::SeqCst);
    });
    let mut report = report.into_inner().expect("no thread panicked holding it");
    report.abuse = abuse.map(|count| count.load(Ordering::SeqCst));
    report.rss_end_kib = rss_kib(pid)?;
    let listen_end = listen_counters(pid)?;
    report.listen_overflows = listen_end.0 - listen_start.0;
    report.listen_drops = listen_end.1 - listen_start.1;
    Ok(report)
}

/// One keep-alive connection asking in turn for each checked path, at
/// [`PACE`], until `deadline`; reconnects only when the server closed.
fn well_behaved(
    vm: &Vm,
    spec: &InstanceSpec,
    deadline: Instant,
    report: &std::sync::Mutex<SoakReport>,
) {
    let record = |outcome: Result<Duration, String>| {
        let mut report = report.lock().expect("report");
        report.requests += 1;
        match outcome {
            Ok(took) => report.latencies.push(took),
            Err(failure) => {
                report.failed += 1;
                if report.failures.len() < 5 {
                    report.failures.push(format!("{}: {failure}", spec.name));
                }
            }
        }
    };
    if let Err(err) = enter_netns(vm.ns.name()) {
        record(Err(format!("entering the VM: {err}")));
        return;
    }
    let mut connection: Option<BufReader<TcpStream>> = None;
    let mut turn = 0usize;
    while Instant::now() < deadline {
        let next = Instant::now() + PACE;
        let (path, check) = checked_request(spec, turn);
        turn += 1;
        let started = Instant::now();
        let outcome = ask(&mut connection, path).and_then(|(status, body)| check(status, &body));
        record(outcome.map(|()| started.elapsed()));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

type Check<'a> = Box<dyn Fn(u16, &[u8]) -> Result<(), String> + 'a>;

/// The `turn`th request of the mix, and what its answer must be.
fn checked_request(spec: &InstanceSpec, turn: usize) -> (&'static str, Check<'_>) {
    let expect = move |want_status: u16, want: Option<Vec<u8>>| -> Check<'_> {
        Box::new(move |status, body: &[u8]| {
            if status != want_status {
                return Err(format!("status {status}, wanted {want_status}"));
            }
            match &want {
                Some(want) if !body.windows(want.len()).any(|w| w == want.as_slice()) => {
                    Err(format!(
                        "answer without {:?}: {:?}",
                        String::from_utf8_lossy(want),
                        String::from_utf8_lossy(body)
                    ))
                }
                _ => Ok(()),
            }
        })
    };
    let id = spec.id.as_bytes().to_vec();
    // EC2's instance id is "i-" and the uuid's first 8 hex digits.
    let ec2_id = format!("i-{}", &spec.id[..8]).into_bytes();
    let user_data = spec.user_data.clone().unwrap_or_default().into_bytes();
    match turn % 4 {
        0 => ("/openstack/latest/meta_data.json", expect(200, Some(id))),
        1 => ("/openstack/latest/user_data", expect(200, Some(user_data))),
        2 => ("/latest/meta-data/instance-id", expect(200, Some(ec2_id))),
        _ => ("/openstack/latest/no_such_file", expect(404, None)),
    }
}

/// One GET on the kept connection (opened when there is none).
fn ask(
    connection: &mut Option<BufReader<TcpStream>>,
    path: &str,
) -> Result<(u16, Vec<u8>), String> {
    if connection.is_none() {
        let stream = TcpStream::connect_timeout(&METADATA, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        *connection = Some(BufReader::new(stream));
    }
    let reader = connection.as_mut().expect("just opened");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n");
    let result = reader
        .get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))
        .and_then(|()| read_response(reader).map_err(|e| format!("read: {e}")));
    if result.is_err() {
        *connection = None;
    }
    result
}

/// One HTTP/1.1 response with a Content-Length body.
fn read_response(reader: &mut BufReader<TcpStream>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("closed");
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, body))
}

/// An abusive guest until `stop`.
fn abusive(vm: &Vm, kind: Abuse, stop: &AtomicBool, count: &AtomicU64) {
    if enter_netns(vm.ns.name()).is_err() {
        return;
    }
    let request = b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut stream) = TcpStream::connect_timeout(&METADATA, Duration::from_secs(1)) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        count.fetch_add(1, Ordering::Relaxed);
        match kind {
            // As fast as answers come, far over the rate limit (429s).
            Abuse::Flood => {
                for _ in 0..100 {
                    if stream.write_all(request).is_err() {
                        break;
                    }
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A request head that never ends, one byte at a time.
            Abuse::Slowloris => {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ");
                held.push(stream);
                if held.len() >= 200 {
                    for stream in &mut held {
                        let _ = stream.write_all(b"a");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Abuse::Garbage => {
                let _ = stream.write_all(b"\x16\x03\x01\x00\xff\x00garbage\r\n\r\n\x00\x01");
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf);
            }
            Abuse::Churn => drop(stream),
        }
    }
}

/// TcpExt ListenOverflows and ListenDrops in `pid`'s network namespace.
fn listen_counters(pid: u32) -> anyhow::Result<(u64, u64)> {
    let netstat = std::fs::read_to_string(format!("/proc/{pid}/net/netstat"))?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = lines.next().zip(lines.next()).context("TcpExt lines")?;
    let field = |wanted: &str| -> anyhow::Result<u64> {
        let at = names
            .split_whitespace()
            .position(|n| n == wanted)
            .with_context(|| format!("TcpExt {wanted}"))?;
        Ok(values
            .split_whitespace()
            .nth(at)
            .context("value")?
            .parse()?)
    };
    Ok((field("ListenOverflows")?, field("ListenDrops")?))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}
