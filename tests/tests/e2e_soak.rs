//! The soak's short version: 50 VMs, 4 keep-alive connections each, ten
//! seconds of mixed requests with abusive guests among them (the minute
//! long one is `cargo xtask soak`).

use std::time::Duration;

use metadata_tests::soak;

#[test]
fn ten_seconds_of_mixed_load_with_abusive_guests_delay_no_well_behaved_request() {
    let options = soak::standard(Duration::from_secs(10));
    let report = soak::run(options).unwrap();
    println!("{}", report.summary(options.duration));
    // No failed or wrong answer, none over 200 ms: the abusive guests'
    // connection floods stop at their taps' budgets.
    if let Err(err) = soak::check(&report, &options) {
        panic!("{err:#}\n{}", report.summary(options.duration));
    }
}
