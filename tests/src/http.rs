//! A minimal HTTP/1.1 client, for requests from inside a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

/// A minimal HTTP/1.1 client: one request, `Connection: close`.
pub fn http_get(
    from: Option<Ipv4Addr>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = match from {
        None => TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?,
        Some(local) => connect_from(local, addr, timeout)?,
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the response to GET {path}"))?;
    parse_response(&response)
}

pub(crate) fn connect_from(
    local: Ipv4Addr,
    addr: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    // std cannot bind before connect: do it with libc, then hand over.
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(local.octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        ensure!(rc == 0, "bind {local}: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let SocketAddr::V4(v4) = addr else {
            bail!("IPv4 only");
        };
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        ensure!(
            rc == 0,
            "connect {addr} from {local}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// Splits a raw HTTP/1.1 response into status and body (plain or chunked).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers in the response")?;
    let head = std::str::from_utf8(&raw[..split]).context("non-UTF-8 headers")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let body = raw[split + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((status, body));
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end])?.trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(rest.get(..size).context("short chunk")?);
        rest = rest.get(size + 2..).context("chunk end")?;
    }
}

/// The metadata service as a guest addresses it.
pub const METADATA: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    Ipv4Addr::new(169, 254, 169, 254),
    80,
));
