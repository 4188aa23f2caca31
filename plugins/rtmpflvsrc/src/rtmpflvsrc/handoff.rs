// SPDX-License-Identifier: MPL-2.0

//! What the network side hands to the streaming threads: the [`Item`]s on their queues, the
//! messages posted once both threads got to them, and what the publisher announced.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::OwnedSemaphorePermit;

use super::lock;
use crate::flv::{AudioTag, VideoTag};

/// What the network side hands to a streaming thread.
#[derive(Debug)]
pub(super) enum Item {
    SessionStart {
        session: u64,
        publisher: String,
    },
    /// `_budget` holds the item's share of the bytes queued towards the streaming threads
    /// ([`MAX_QUEUED_BYTES`](super::server::MAX_QUEUED_BYTES)) until the item is dropped.
    Video {
        dts_ms: i64,
        tag: VideoTag,
        _budget: Option<OwnedSemaphorePermit>,
    },
    Audio {
        dts_ms: i64,
        tag: AudioTag,
        _budget: Option<OwnedSemaphorePermit>,
    },
    SessionEnd {
        reason: String,
        /// The "rtmpflvsrc-disconnected" message, posted by the second streaming thread to
        /// handle this item, i.e. once every buffer of the session has been pushed.
        message: Option<Arc<PostAfterAll>>,
    },
}

/// An element message to post once all streaming threads got to it.
#[derive(Debug)]
pub(super) struct PostAfterAll {
    remaining: AtomicUsize,
    structure: Mutex<Option<gst::Structure>>,
}

impl PostAfterAll {
    pub(super) fn new(count: usize, structure: gst::Structure) -> Arc<Self> {
        Arc::new(PostAfterAll {
            remaining: AtomicUsize::new(count),
            structure: Mutex::new(Some(structure)),
        })
    }

    /// Counts one thread in; returns the structure to post for the last one.
    pub(super) fn arrive(&self) -> Option<gst::Structure> {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            lock(&self.structure).take()
        } else {
            None
        }
    }
}

/// What the current publisher announced, written by the network side and read by the
/// streaming threads to add pads in a predictable order and signal no-more-pads.
#[derive(Default)]
pub(super) struct Announced {
    /// A video message was received.
    pub(super) video: AtomicBool,
    /// onMetaData: (has video, has audio).
    pub(super) metadata: Mutex<Option<(bool, bool)>>,
}
