//! /proc/self/net/dev: the devices of this process's network namespace
//! and their packet counters, read from one file (no netlink dump).

use std::io;

/// One line of /proc/net/dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    pub name: String,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// The devices of the network namespace this process is in.
pub fn read() -> io::Result<Vec<DeviceStats>> {
    std::fs::read_to_string("/proc/self/net/dev").map(|text| parse(&text))
}

/// Two header lines, then `name: rx_bytes rx_packets (6 more) tx_bytes
/// tx_packets ...`; a line that does not read so is skipped.
pub fn parse(text: &str) -> Vec<DeviceStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let numbers: Vec<u64> = counters
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            Some(DeviceStats {
                name: name.trim().to_owned(),
                rx_packets: *numbers.get(1)?,
                tx_packets: *numbers.get(9)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_packet_counters_are_read_per_device() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n\
                    tap-a_b1:  1200      11    0    0    0     0          0         0      640       7    0    0    0     0       0          0\n\
                    broken: x\n";
        assert_eq!(
            parse(text),
            [
                DeviceStats {
                    name: "lo".into(),
                    rx_packets: 2,
                    tx_packets: 2
                },
                DeviceStats {
                    name: "tap-a_b1".into(),
                    rx_packets: 11,
                    tx_packets: 7
                },
            ]
        );
    }
}
