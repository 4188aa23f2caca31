// SPDX-License-Identifier: MPL-2.0
//! With no consumer for 5 s, upstream is not blocked (its frame count keeps
//! rising at the stream's rate), frames are counted as dropped and memory stays flat.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn no_consumer_does_not_block_upstream_and_memory_stays_flat() {
    let (_session, producer) = session_with_producer("vcam-idle", "BGRx", "");
    std::thread::sleep(Duration::from_secs(1)); // settle (measurement window, not a sync)
    let (count0, rss0) = (producer.frames(), rss_kb());
    let dropped0 = producer.stat_u64("frames-dropped");

    let mut last = count0;
    for second in 1..=5 {
        std::thread::sleep(Duration::from_secs(1));
        let now = producer.frames();
        assert!(
            now > last + 15,
            "upstream stalled in second {second}: {last} -> {now}"
        );
        last = now;
    }
    let (count1, rss1) = (producer.frames(), rss_kb());
    let frames = count1 - count0;
    // 5 s at 30 fps; allow a slow, shared machine some slack.
    assert!(frames >= 120, "only {frames} frames in 5 s");
    let dropped = producer.stat_u64("frames-dropped") - dropped0;
    assert!(
        dropped + 2 >= frames,
        "dropped {dropped} of {frames} frames"
    );
    assert_eq!(producer.stat_u64("frames-sent"), 0);
    assert_eq!(producer.consumers(), 0);
    // 150 frames of 300 KiB went by: a leak per frame would show as tens of MB.
    let growth = rss1 as i64 - rss0 as i64;
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} kB over 5 s ({rss0} -> {rss1})"
    );
    assert_eq!(producer.first_error(), None);
}
