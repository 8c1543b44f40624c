//! The soak's short version: 50 VMs, 4 keep-alive connections each, ten
//! seconds of mixed requests with abusive guests among them (the minute
//! long one is `cargo xtask soak`).

use std::time::Duration;

use metadata_tests::soak::{SoakOptions, run};

#[test]
fn ten_seconds_of_mixed_load_with_abusive_guests_fails_no_well_behaved_request() {
    let report = run(SoakOptions {
        vms: 50,
        connections: 4,
        duration: Duration::from_secs(10),
        abusive: 4,
    })
    .unwrap();
    println!(
        "{} requests from well-behaved guests, {} failed, slowest {:?}, {} over 100 ms; {} abusive requests/connections; daemon RSS {} KiB -> {} KiB",
        report.requests,
        report.failed,
        report.slowest,
        report.over_100ms,
        report.abuse,
        report.rss_start_kib,
        report.rss_end_kib
    );
    assert_eq!(report.failed, 0, "{:#?}", report.failures);
    // 46 guests x 4 connections x 5/s x 10 s, less start-up.
    assert!(report.requests > 5_000, "{}", report.requests);
    assert!(
        report.abuse > 100,
        "the abusive guests ran: {}",
        report.abuse
    );
    // Abuse or not, 19 in 20 answers within 100 ms (measured: 1 to 29
    // in about 9,000 over it) and none waiting longer than two SYN
    // retransmissions (1 s + 2 s). The slow ones take about 1 s, a SYN
    // retransmission's time, while the abusive guests make tens of
    // thousands of requests and connections a second: most likely the
    // listener's accept queue overflowing for a moment, which a per-tap SYN
    // budget in the datapath would stop (not built yet).
    assert!(
        report.over_100ms * 20 <= report.requests,
        "{} of {} over 100 ms",
        report.over_100ms,
        report.requests
    );
    assert!(
        report.slowest < Duration::from_secs(4),
        "{:?}",
        report.slowest
    );
    assert!(
        report.rss_end_kib < report.rss_start_kib + 32 * 1024,
        "RSS grew from {} KiB to {} KiB",
        report.rss_start_kib,
        report.rss_end_kib
    );
}
