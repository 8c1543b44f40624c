//! Signed identity: what a token costs (an RSA-2048 signature with ring,
//! on the blocking pool), seen from a guest, and what a guest asking for
//! tokens flat out does to another guest's latency (the signing runs off
//! the serving threads, but on the same CPUs).

use std::{fmt::Write as _, net::Ipv4Addr, path::Path};

use anyhow::Context as _;
use metadata_tests::{Hypervisor, InstanceSpec};
use serde_json::{Value, json};

use super::{
    harness::{Load, SMALL, ratio, wait_served},
    settings::Settings,
    wrk::{Strictness, Wrk},
};

pub(super) struct IdentityCost {
    /// One guest alone asking for tokens, keep-alive: each answer is an
    /// RSA signature on the blocking pool plus the request's own cost.
    token_alone: Load,
    quiet: Load,
    loaded: Load,
    tokens_per_s: f64,
}

pub(super) fn measure(settings: &Settings) -> anyhow::Result<IdentityCost> {
    let dir = tempfile::tempdir().context("a folder for the bench's keys")?;
    let (key, cert) = key_pair(dir.path())?;
    eprintln!("bench: identity tokens, alone and flat out against another guest's latency");
    latency_under_tokens(settings, &key, &cert)
}

fn key_pair(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let key = dir.join("identity.key");
    let cert = dir.join("identity.crt");
    let (key_s, cert_s) = (key.display().to_string(), cert.display().to_string());
    metadata_tests::run("openssl", &["genrsa", "-out", &key_s, "2048"])?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    metadata_tests::run(
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            &key_s,
            "-subj",
            "/CN=bench",
            "-days",
            "1",
            "-out",
            &cert_s,
        ],
    )?;
    Ok((key, cert))
}

/// Another guest's keep-alive load alone, then while a guest asks for
/// tokens flat out (keep-alive, no rate limit: the worst case).
fn latency_under_tokens(
    settings: &Settings,
    key: &Path,
    cert: &Path,
) -> anyhow::Result<IdentityCost> {
    let mut hv = Hypervisor::new()?;
    let asker = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5))?;
    let other = hv.add_vm(Ipv4Addr::new(10, 0, 0, 6))?;
    hv.set_instances(vec![
        InstanceSpec::for_vm(&asker, "asker"),
        InstanceSpec::for_vm(&other, "other"),
    ])?;
    hv.extra_config = format!(
        "\n[identity]\nkey = \"{}\"\ncertificate = \"{}\"\nkey_id = \"bench\"\nissuer = \"https://bench.example\"\n",
        key.display(),
        cert.display()
    );
    hv.start_daemon()?;
    wait_served([&asker, &other].into_iter())?;
    let seconds = settings.duration_s * 2;
    let measured = Wrk {
        script: &settings.wrk_script,
        url: &format!("http://169.254.169.254{SMALL}"),
        close: false,
        seconds,
    };
    let quiet = measured.run(&[other.ns.name()], Strictness::EveryRequest)?;
    let tokens = Wrk {
        url: "http://169.254.169.254/openstack/latest/identity?audience=bench",
        ..measured
    };
    let token_alone = tokens.run(&[asker.ns.name()], Strictness::EveryRequest)?;
    let while_asking = |strictness| {
        std::thread::scope(|s| {
            let asking = s.spawn(|| tokens.run(&[asker.ns.name()], strictness));
            let loaded = measured.run(&[other.ns.name()], Strictness::EveryRequest);
            let asked = asking.join().expect("the token client did not panic");
            anyhow::Ok((loaded?, asked?.rps))
        })
    };
    let (loaded, tokens_per_s) = while_asking(Strictness::EveryRequest)?;
    Ok(IdentityCost {
        token_alone,
        quiet,
        loaded,
        tokens_per_s,
    })
}

pub(super) fn markdown(cost: Option<&IdentityCost>) -> String {
    let Some(c) = cost else {
        return String::new();
    };
    let mut md = String::from("\n## Signed identity\n\n");
    let _ = writeln!(
        md,
        "- one guest alone asking for tokens (keep-alive): {:.0} tokens/s, p50 {:.0} µs, p99 {:.0} µs, against p50 {:.0} µs for meta_data.json: one RSA-2048 signature (ring) and its trip to the signing thread cost about {:.0} µs (signing on its own thread at nice 19)",
        c.token_alone.rps,
        c.token_alone.p50_us,
        c.token_alone.p99_us,
        c.quiet.p50_us,
        c.token_alone.p50_us - c.quiet.p50_us
    );
    let _ = writeln!(
        md,
        "- another guest's keep-alive requests (meta_data.json): alone {:.0} requests/s, p50 {:.0} µs, p99 {:.0} µs; while a guest asks for tokens flat out ({:.0} tokens/s, keep-alive, no rate limit): {:.0} requests/s, p50 {:.0} µs, p99 {:.0} µs (p99 {:.2}x)",
        c.quiet.rps,
        c.quiet.p50_us,
        c.quiet.p99_us,
        c.tokens_per_s,
        c.loaded.rps,
        c.loaded.p50_us,
        c.loaded.p99_us,
        ratio(c.loaded.p99_us, c.quiet.p99_us)
    );
    md
}

pub(super) fn json(c: &IdentityCost) -> Value {
    json!({
        "token_alone": c.token_alone.json(),
        "other_guest_quiet": c.quiet.json(),
        "other_guest_while_tokens": c.loaded.json(),
        "tokens_per_s": c.tokens_per_s,
    })
}
