//! The fuzz targets' bodies (metadata-userspace/fuzz, `cargo xtask
//! fuzz`), kept in the library so that the normal test suite runs them over
//! the seeds and over every input a fuzzer ever crashed them with.

use std::sync::{Arc, OnceLock};

use http::{StatusCode, Version};

use crate::{
    backends::local::LocalBackend,
    config::LocalBackendConfig,
    inventory::{Identity, PortIndex},
    serve::request_rules,
};

/// The most headers a request head may have here (hyper allows 100; the
/// fuzzer needs no more to reach every rule).
const MAX_HEADERS: usize = 64;

/// Raw bytes as a guest would send them: the head parsed as hyper parses
/// it (httparse), the serving core's request rules, then, if it passes
/// them, both trees of the local backend (OpenStack and EC2). Panics when
/// a rule answers anything but 4xx or the backend answers 5xx.
pub fn request_routes(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = head.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (head.method, head.path, head.version) else {
        return;
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .version(if version == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for header in head.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    // What hyper itself refuses (a method or URI http cannot hold) never
    // reaches our code.
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    if let Some(reply) = request_rules::refusal(&parts) {
        assert!(
            reply.status.is_client_error(),
            "rule answered {}",
            reply.status
        );
        return;
    }
    let (backend, who) = local();
    let reply = backend.handle(who, &parts.method, parts.uri.path(), &data[head_len..]);
    assert!(
        !reply.status.is_server_error() || reply.status == StatusCode::SERVICE_UNAVAILABLE,
        "{} {} answered {}",
        parts.method,
        parts.uri,
        reply.status
    );
}

/// Where the fuzzed backend keeps a POSTed password: one folder per
/// process, removed by the unit test and by `cargo xtask`'s sweep.
fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mdr-fuzz-{}", std::process::id()))
}

/// A local backend with one instance, and that instance's identity.
fn local() -> &'static (LocalBackend, Identity) {
    static LOCAL: OnceLock<(LocalBackend, Identity)> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let text = "[[instance]]\nid = \"fuzz\"\nproject_id = \"p\"\nname = \"fuzz\"\n\
                    user_data = \"#cloud-config\\n\"\npublic_keys = { default = \"ssh-ed25519 AAAA fuzz\" }\n\
                    [[instance.port]]\ndevice = \"tap0\"\nmac = \"fa:16:3e:00:00:01\"\n\
                    network_id = \"n\"\nips = [\"10.0.0.5/24\", \"fd00::5/64\"]\n";
        let index = PortIndex::parse(std::path::Path::new("instances.toml"), text)
            .expect("the fuzz instance is valid");
        let instance = Arc::new(index.instances().next().expect("one instance").clone());
        let state = state_dir();
        let who = Identity {
            instance,
            port: 0,
            device: "tap0".into(),
            guest_addr: "10.0.0.5".parse().expect("an address"),
        };
        (LocalBackend::new(&LocalBackendConfig::default(), &state), who)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds and every input a fuzzer found a crash with (none so far).
    const CASES: &[&[u8]] = &[
        b"GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /latest/meta-data/public-keys/0/openssh-key HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /2009-04-04/meta-data/ HTTP/1.0\r\n\r\n",
        b"GET /openstack/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /openstack/latest/%00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /openstack/latest/%ff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://evil/openstack HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT x:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\n\r\nsecret",
        b"GET /latest/meta-data/public-keys/99999999999999999999/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /latest/meta-data/block-device-mapping/../ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"DELETE //openstack//latest// HTTP/1.1\r\nHost: x\r\n\r\n",
    ];

    #[test]
    fn request_routes_holds_on_the_seeds_and_regressions() {
        for case in CASES {
            request_routes(case);
        }
        // The password POST among the cases wrote there.
        match std::fs::remove_dir_all(state_dir()) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                panic!("removing {}: {err}", state_dir().display())
            }
            _ => {}
        }
    }
}
