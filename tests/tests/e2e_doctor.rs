//! `metadata-redirector doctor`: a good setup passes; each broken
//! condition that can be made here fails and is named. One test, so that no
//! other test's namespaces (with their daemons on 169.254.169.254:80) are
//! around while it looks at every namespace.

use std::{net::Ipv4Addr, path::Path, process::Command};

use metadata_tests::{Hypervisor, InstanceSpec, Netns, daemon_binary};

/// Runs `doctor` with `config` in `hv`'s network namespace (or with
/// `ip netns exec`, `private`); returns (success, stdout + stderr).
fn doctor(hv: &Hypervisor, config: &Path, private: bool) -> (bool, String) {
    let binary = daemon_binary().unwrap();
    let mut command = if private {
        let mut c = hv.ns().command(binary.to_str().unwrap());
        c.arg("doctor");
        c
    } else {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", hv.ns().name()))
            .arg(&binary)
            .arg("doctor");
        c
    };
    let out = command.arg("--config").arg(config).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A copy of `hv`'s config with `from` replaced by `to`.
fn variant(hv: &Hypervisor, name: &str, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(hv.config_path()).unwrap();
    assert!(text.contains(from), "{text}");
    let path = hv.dir().join(name);
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path
}

#[test]
fn doctor_passes_a_good_setup_and_names_each_broken_condition() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "doctor")])
        .unwrap();
    hv.write_files().unwrap();

    let (ok, report) = doctor(&hv, &hv.config_path(), false);
    assert!(ok, "{report}");
    for line in [
        "ok   kernel",
        "ok   capabilities",
        "ok   bpffs",
        "ok   pinned state",
        "ok   metadata address",
        "ok   port source",
    ] {
        assert!(report.contains(line), "{line}: {report}");
    }

    let bpffs = format!("bpffs = \"{}\"", hv.bpffs().display());
    let cases = [
        (
            "no bpffs",
            variant(
                &hv,
                "no-bpffs.toml",
                &bpffs,
                &format!("bpffs = \"{}\"", hv.dir().join("pins").display()),
            ),
            "FAIL bpffs",
            "is not on a bpffs",
        ),
        (
            "bad instances file",
            {
                let bad = hv.dir().join("broken-instances.toml");
                std::fs::write(&bad, "[[instance]]\nid = 5\n").unwrap();
                variant(
                    &hv,
                    "bad-file.toml",
                    "file = \"instances.toml\"",
                    &format!("file = \"{}\"", bad.display()),
                )
            },
            "FAIL port source",
            "broken-instances.toml:2",
        ),
        (
            "unreachable Nova",
            {
                let path = variant(
                    &hv,
                    "nova.toml",
                    "file = \"instances.toml\"",
                    "file = \"instances.toml\"",
                );
                let mut text = std::fs::read_to_string(&path).unwrap();
                text.push_str("\n[backend]\ntype = \"nova\"\nurl = \"http://127.0.0.1:1\"\nshared_secret = \"s\"\n");
                std::fs::write(&path, text).unwrap();
                path
            },
            "FAIL nova",
            "127.0.0.1:1",
        ),
    ];
    for (what, config, line, detail) in cases {
        let (ok, report) = doctor(&hv, &config, false);
        assert!(!ok, "{what}: {report}");
        assert!(
            report.contains(line) && report.contains(detail),
            "{what}: {report}"
        );
    }

    // Under `ip netns exec`: a private /sys, so a private bpffs.
    let (ok, report) = doctor(&hv, &hv.config_path(), true);
    assert!(
        !ok && report.contains("mount namespace of its own"),
        "{report}"
    );

    // Neutron's haproxy still there: a qdhcp namespace serving the address.
    let qdhcp = Netns::new("qdhcp").unwrap();
    qdhcp
        .ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"])
        .unwrap();
    let _listener = qdhcp
        .run(|| std::net::TcpListener::bind("169.254.169.254:80"))
        .unwrap()
        .unwrap();
    let (ok, report) = doctor(&hv, &hv.config_path(), false);
    assert!(!ok, "{report}");
    assert!(
        report.contains("FAIL metadata address") && report.contains(qdhcp.name()),
        "{report}"
    );
}
