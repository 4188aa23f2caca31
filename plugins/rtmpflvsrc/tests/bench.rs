//! Benchmark (not a test: every function is #[ignore]; run with plugins/rtmpflvsrc/bench/run.sh).

mod common;

use std::time::Duration;

use common::{Options, Receiver};
use vcambridge_tests::rtmp::{FfmpegPublisher, Nginx};

/// Harness self-check against the upstream peer: ffmpeg -> nginx-rtmp -> rtmp2src ! flvdemux.
#[test]
#[ignore]
fn harness_check_nginx() {
    let nginx = Nginx::start();
    let rx = Receiver::start(Options {
        rtmp2src_url: Some(nginx.url("k")),
        ..Options::default()
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut p = FfmpegPublisher::new(&nginx.url("k"), 60);
    p.realtime = true;
    let (ok, err) = p.run(Duration::from_secs(30));
    assert!(ok, "{err}");
    rx.wait(Duration::from_secs(10), "frames", |d| d.samples.len() >= 50);
    println!("{}", rx.summary());
    rx.check(|d| println!("{:?}", d.samples.last()));
}
