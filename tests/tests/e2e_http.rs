//! The serving core's HTTP limits, each with the raw bytes a guest sends
//! and the exact answer it gets.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use metadata_tests::{Hypervisor, InstanceSpec, METADATA, Vm};

/// Sends `bytes` from `vm` and reads until the server closes or `wait`
/// passes; returns what came back.
fn raw(vm: &Vm, bytes: &[u8], wait: Duration) -> String {
    let bytes = bytes.to_vec();
    vm.ns
        .run(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&METADATA, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(wait))?;
            stream.write_all(&bytes)?;
            let mut out = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
        .unwrap()
        .unwrap()
}

fn status_of(response: &str) -> &str {
    response.get(9..12).unwrap_or("")
}

fn setup(extra: &str) -> (Hypervisor, Vm) {
    let mut hv = Hypervisor::new().unwrap();
    let vm = hv.add_vm(Ipv4Addr::new(10, 0, 0, 5)).unwrap();
    hv.set_instances(vec![InstanceSpec::for_vm(&vm, "http")])
        .unwrap();
    hv.extra_config = extra.into();
    hv.start_daemon().unwrap();
    (hv, vm)
}

#[test]
fn malformed_and_abusive_requests_get_the_right_status() {
    let (_hv, vm) = setup("");
    let quick = Duration::from_secs(2);
    let many_headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let big_body = "p".repeat(70 * 1024);
    let cases: Vec<(&str, String, &str)> = vec![
        ("a plain GET", "GET /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n".into(), "200"),
        ("70 headers", format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"), "431"),
        ("a 20 KiB header", format!("GET / HTTP/1.1\r\nHost: x\r\n{big_header}\r\n"), "431"),
        ("a 70 KiB password", format!("POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big_body}", big_body.len()), "413"),
        ("HTTP/1.1 without Host", "GET /openstack HTTP/1.1\r\nConnection: close\r\n\r\n".into(), "400"),
        ("HTTP/1.0 without Host", "GET /openstack HTTP/1.0\r\n\r\n".into(), "200"),
        ("absolute-form", "GET http://example.com/openstack HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n".into(), "400"),
        ("CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".into(), "405"),
        ("a .. segment", "GET /openstack/../latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), "400"),
        ("an encoded .. segment", "GET /openstack/%2e%2e/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), "400"),
        ("an encoded NUL", "GET /openstack/lat%00est HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), "400"),
        ("invalid UTF-8", "GET /openstack/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), "400"),
        ("an unknown path", "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), "404"),
    ];
    for (what, request, status) in cases {
        let response = raw(&vm, request.as_bytes(), quick);
        assert_eq!(status_of(&response), status, "{what}: {response:.200}");
    }
    // Content-Length and Transfer-Encoding: read as chunked, then the
    // connection closes (RFC 9112 6.3), so a smuggled second request
    // behind it is never read.
    let smuggle = "POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /openstack HTTP/1.1\r\nHost: x\r\n\r\n";
    let response = raw(&vm, smuggle.as_bytes(), quick);
    assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    // Pipelined: both answered, in order.
    let two = "GET /openstack HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let response = raw(&vm, two.as_bytes(), quick);
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &response[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404"], "{response}");
    // The HTTP/2 preface: refused (never a 2xx), and the next guest request works.
    let h2 = raw(&vm, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", quick);
    assert!(h2.is_empty() || !status_of(&h2).starts_with('2'), "{h2}");
    assert_eq!(vm.http_get(METADATA, "/openstack").unwrap().0, 200);
}

#[test]
fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let (_hv, vm) = setup("\n[proxy]\nheader_read_timeout_s = 1\n");
    // Slowloris: half a request head, then nothing.
    let started = Instant::now();
    let response = raw(
        &vm,
        b"GET /openstack HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(10),
    );
    let slow = started.elapsed();
    assert!(
        slow < Duration::from_secs(5),
        "closed after {slow:?}: {response}"
    );
    // Idle keep-alive: one request answered, then closed for idling.
    let started = Instant::now();
    let response = raw(
        &vm,
        b"GET /openstack HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    let idle = started.elapsed();
    assert_eq!(status_of(&response), "200");
    assert!(idle < Duration::from_secs(5), "closed after {idle:?}");
    println!("slow head closed after {slow:?}, idle keep-alive after {idle:?}");
}
