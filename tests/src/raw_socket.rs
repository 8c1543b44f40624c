//! Raw frames: an AF_PACKET socket to send what a guest crafts and
//! capture what a device receives.

use std::os::fd::AsRawFd as _;

use anyhow::ensure;

/// An AF_PACKET socket on one device of a namespace: sends whole frames a
/// guest crafts and captures every frame the device receives.
#[derive(Debug)]
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens the socket on `device` of the namespace the calling thread is
    /// in (use it inside [`Netns::run`]); it keeps capturing wherever it
    /// is read from.
    pub fn open(device: &str) -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        let name = std::ffi::CString::new(device)?;
        // SAFETY: if_nametoindex reads a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        ensure!(ifindex > 0, "no device {device}");
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(all),
            )
        };
        ensure!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let socket = Self { fd, ifindex };
        let addr = socket.address(all);
        // SAFETY: binding our socket to a sockaddr_ll we own.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "binding to {device}: {}",
            std::io::Error::last_os_error()
        );
        Ok(socket)
    }

    fn address(&self, protocol: u16) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr
    }

    /// Sends one whole Ethernet frame out of the device.
    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        let addr = self.address(0);
        // SAFETY: sendto with a buffer and an address we own.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            sent == frame.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Every frame received since the last call (or since it was opened).
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: recv into a buffer we own.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return frames;
            }
            frames.push(buf[..n as usize].to_vec());
        }
    }
}
