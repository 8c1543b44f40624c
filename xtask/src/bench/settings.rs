//! How long and how wide each section measures: the full run, or the
//! quick one (`--quick`).

use std::path::PathBuf;

/// How long and how wide each section measures.
pub(super) struct Settings {
    pub quick: bool,
    pub duration_s: u32,
    pub concurrency: Vec<usize>,
    pub memory_networks: Vec<usize>,
    /// Tap counts measured for ours alone.
    pub memory_taps_only: Vec<usize>,
    pub burst_taps: usize,
    pub iperf_s: u32,
    /// Rounds of iperf3 without and with programs, alternating.
    pub iperf_rounds: usize,
    /// iperf3 runs that time the programs against the floors.
    pub timing_rounds: usize,
    /// Rounds of each throughput row (every path once per round); each
    /// figure is the median over them. Several short rounds, because this
    /// VM's vCPUs stall for milliseconds a few times a second (the stall
    /// probe's section): one long run's p99 is set by whether a stall fell
    /// into it.
    pub rounds: usize,
    /// Length of one path's run in a round.
    pub round_s: u32,
    /// wrk's Lua hook that prints each client's latency quantiles.
    pub wrk_script: PathBuf,
}

impl Settings {
    pub(super) fn new(quick: bool, wrk_script: PathBuf) -> Self {
        if quick {
            Self {
                quick,
                duration_s: 1,
                concurrency: vec![1, 10],
                memory_networks: vec![10],
                memory_taps_only: Vec::new(),
                burst_taps: 50,
                iperf_s: 2,
                iperf_rounds: 3,
                timing_rounds: 1,
                rounds: 1,
                round_s: 1,
                wrk_script,
            }
        } else {
            Self {
                quick,
                duration_s: 4,
                concurrency: vec![1, 10, 50],
                memory_networks: vec![10, 100, 500],
                memory_taps_only: vec![5_000],
                burst_taps: 500,
                iperf_s: 5,
                iperf_rounds: 9,
                timing_rounds: 3,
                rounds: 5,
                round_s: 2,
                wrk_script,
            }
        }
    }
}
