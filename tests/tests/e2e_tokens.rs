//! Session tokens (IMDSv2 semantics) end to end: botocore's own IMDS
//! client in the VMs, raw requests for every status, the hop limit seen on
//! the wire in the guest and through a NAT behind it, and cloud-init.

use std::{net::Ipv4Addr, time::Duration};

use metadata_tests::{Hypervisor, InstanceSpec, Netns, RawSocket, Vm, veth_pair};

const SAME_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const TOKEN: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";

/// botocore's IMDS client, as the AWS SDKs and CLI run it: fetch a token
/// (falling back to v1 on 403/404/405), then the region and instance id.
const BOTOCORE: &str = r#"
import json
import botocore.utils as u
fetcher = u.InstanceMetadataRegionFetcher(timeout=2, num_attempts=2)
token = fetcher._fetch_metadata_token()
region = fetcher.retrieve_region()
instance = fetcher._get_request("latest/meta-data/instance-id", None, token).text
doc = json.loads(fetcher._get_request("latest/dynamic/instance-identity/document", None, token).text)
print(json.dumps({"token": token is not None, "region": region, "instance": instance, "account": doc["accountId"]}))
"#;

/// `curl ARGS URL` in `ns`: the HTTP status it got ("000" when none).
fn curl_status(ns: &Netns, args: &[&str], url: &str) -> String {
    let mut full = vec![
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "2",
    ];
    full.extend_from_slice(args);
    full.push(url);
    ns.exec("curl", &full).unwrap_or_default().trim().to_owned()
}

fn botocore(vm: &Vm) -> serde_json::Value {
    let out = vm.ns.exec("/usr/bin/python3", &["-c", BOTOCORE]).unwrap();
    serde_json::from_str(out.trim()).unwrap_or_else(|err| panic!("{err}: {out}"))
}

fn put_token(vm: &Vm, headers: &[&str]) -> (u16, String) {
    let (status, body) = vm.http("PUT", TOKEN, headers, b"").unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn get_with(vm: &Vm, token: &str) -> u16 {
    let header = format!("X-aws-ec2-metadata-token: {token}");
    vm.http("GET", "/latest/meta-data/instance-id", &[&header], b"")
        .unwrap()
        .0
}

/// Three VMs with the same IP, one per token mode (per-instance overrides
/// of the optional default).
fn three_modes() -> (Hypervisor, [(Vm, InstanceSpec); 3]) {
    let mut hv = Hypervisor::new().unwrap();
    let vms = ["optional", "required", "disabled"].map(|mode| {
        let vm = hv.add_vm(SAME_IP).unwrap();
        let mut spec = InstanceSpec::for_vm(&vm, mode);
        spec.tokens = Some(mode.to_owned());
        (vm, spec)
    });
    hv.set_instances(vms.iter().map(|(_, s)| s.clone()).collect())
        .unwrap();
    hv.start_daemon().unwrap();
    (hv, vms)
}

#[test]
fn botocore_gets_a_token_where_tokens_exist_and_falls_back_where_they_do_not() {
    let (_hv, [(optional, a), (required, b), (disabled, c)]) = three_modes();
    let ec2_id = |spec: &InstanceSpec| {
        let hex: String = spec
            .id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        format!("i-{hex}")
    };
    for (vm, spec, token) in [
        (&optional, &a, true),
        (&required, &b, true),
        (&disabled, &c, false),
    ] {
        let seen = botocore(vm);
        assert_eq!(seen["token"], token, "{}: {seen}", spec.name);
        assert_eq!(seen["instance"], ec2_id(spec).as_str(), "{seen}");
        assert_eq!(
            seen["region"], "nov",
            "the zone \"nova\" without its last letter, as botocore derives it"
        );
        assert_eq!(seen["account"], spec.project_id.as_str());
    }
    // Without a token, required mode refuses; the others serve.
    assert_eq!(
        required
            .http("GET", "/latest/meta-data/instance-id", &[], b"")
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        optional
            .http("GET", "/latest/meta-data/instance-id", &[], b"")
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        disabled
            .http("GET", "/latest/meta-data/instance-id", &[], b"")
            .unwrap()
            .0,
        200
    );
}

#[test]
fn every_token_status_over_raw_requests() {
    let (_hv, [(optional, _), (required, _), (disabled, _)]) = three_modes();
    let ttl = format!("{TTL_HEADER}: 60");
    assert_eq!(put_token(&optional, &[]).0, 400, "no TTL");
    assert_eq!(put_token(&optional, &[&format!("{TTL_HEADER}: 0")]).0, 400);
    assert_eq!(
        put_token(&optional, &[&format!("{TTL_HEADER}: 21601")]).0,
        400
    );
    assert_eq!(
        put_token(&optional, &[&ttl, "X-Forwarded-For: 203.0.113.9"]).0,
        403
    );
    assert_eq!(
        optional
            .http("PUT", "/2021-03-23/api/token", &[&ttl], b"")
            .unwrap()
            .0,
        403
    );
    assert_eq!(put_token(&disabled, &[&ttl]).0, 403, "tokens off");
    assert_eq!(
        put_token(&optional, &["X-metadata-token-ttl-seconds: 60"]).0,
        200,
        "Firecracker's names"
    );
    let allow = optional
        .ns
        .exec("curl", &["-si", "http://169.254.169.254/latest/api/token"])
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allow.starts_with("http/1.1 405") && allow.contains("allow: put"),
        "{allow}"
    );

    let (status, token) = put_token(&optional, &[&ttl]);
    assert_eq!(status, 200);
    assert_eq!(get_with(&optional, &token), 200);
    assert_eq!(
        get_with(&required, &token),
        401,
        "the other VM's token, same IP"
    );
    assert_eq!(get_with(&optional, "not-a-token"), 401);
    // Obtained over IPv4, used over IPv6: the same instance.
    let header = format!("X-aws-ec2-metadata-token: {token}");
    let url = "http://[fe80::a9fe:a9fe%eth0]/latest/meta-data/instance-id";
    let v6 = curl_status(&optional.ns, &["-g", "-H", &header], url);
    assert_eq!(v6, "200");
    // Expired: a one-second token, used after its second.
    let (_, short) = put_token(&optional, &[&format!("{TTL_HEADER}: 1")]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get_with(&optional, &short), 401, "expired");
}

#[test]
fn cloud_init_reads_in_optional_mode_and_fails_with_401_in_required_mode() {
    let (_hv, [(optional, a), (required, _), _]) = three_modes();
    let view = optional
        .cloud_init_openstack("http://169.254.169.254")
        .unwrap();
    assert_eq!(view.uuid, a.id);
    // cloud-init sends no token on OpenStack: every path it reads is a
    // 401, and its reader gives up on the mandatory meta_data.json.
    let err = format!(
        "{:#}",
        required
            .cloud_init_openstack("http://169.254.169.254")
            .unwrap_err()
    );
    assert!(err.contains("Missing mandatory path"), "{err}");
    let (status, _) = required
        .http("GET", "/openstack/latest/meta_data.json", &[], b"")
        .unwrap();
    assert_eq!(status, 401);
}

/// A "container" namespace behind `vm`: the VM forwards and masquerades
/// its traffic, as a container host does.
fn container_behind(vm: &Vm) -> Netns {
    let ctr = Netns::new("mdr-vm").unwrap();
    veth_pair(&vm.ns, "ctr0", &ctr).unwrap();
    vm.ns
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "ctr0"])
        .unwrap();
    vm.ns.ip(&["link", "set", "ctr0", "up"]).unwrap();
    vm.ns
        .exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    vm.ns
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "eth0",
                "-j",
                "MASQUERADE",
            ],
        )
        .unwrap();
    ctr.ip(&["addr", "add", "192.168.77.2/24", "dev", "eth0"])
        .unwrap();
    ctr.ip(&["link", "set", "eth0", "up"]).unwrap();
    ctr.ip(&["route", "add", "default", "via", "192.168.77.1"])
        .unwrap();
    ctr
}

/// The token PUT from the container; the HTTP status, or none.
fn put_from(ctr: &Netns) -> Option<String> {
    let ttl = format!("{TTL_HEADER}: 60");
    let url = "http://169.254.169.254/latest/api/token";
    let status = curl_status(ctr, &["-X", "PUT", "-H", &ttl], url);
    (status != "000" && !status.is_empty()).then_some(status)
}

#[test]
fn the_hop_limit_keeps_tokens_inside_the_guest() {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(SAME_IP).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "hops")])
        .unwrap();
    hv.start_daemon().unwrap();
    let capture = vm.ns.run(|| RawSocket::open("eth0")).unwrap().unwrap();
    let (status, token) = put_token(&vm, &[&format!("{TTL_HEADER}: 60")]);
    assert_eq!(status, 200);
    let frames = capture.drain();
    let with_token = frames
        .iter()
        .find(|f| f.windows(token.len()).any(|w| w == token.as_bytes()))
        .expect("the token response on the guest's wire");
    assert_eq!(with_token[14 + 8], 1, "IPv4 TTL of the token response");

    let ctr = container_behind(&vm);
    assert_eq!(
        put_from(&ctr),
        None,
        "hop_limit = 1: no token leaves the guest"
    );
    // Plain requests from the container still work: only tokens are held in.
    let url = "http://169.254.169.254/latest/meta-data/instance-id";
    assert_eq!(curl_status(&ctr, &[], url), "200");
    hv.stop_daemon().unwrap();
    hv.extra_config = "\n[tokens]\nhop_limit = 2\n".into();
    hv.start_daemon().unwrap();
    assert_eq!(
        put_from(&ctr).as_deref(),
        Some("200"),
        "hop_limit = 2: one hop more"
    );
}
