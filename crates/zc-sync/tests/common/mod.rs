//! Helpers shared by the integration tests that build a replica by hand.

use zc_types::Lsn;
use zc_wal::{SyncState, Watermark};

/// The state of an initial sync that ended at `lsn` (slot `test`, publication `p`).
pub fn synced_at(lsn: Lsn) -> SyncState {
    SyncState {
        slot: "test".into(),
        publications: vec!["p".into()],
        replica_version: lsn,
        watermark: Watermark {
            commit_lsn: lsn,
            ack_lsn: lsn,
        },
    }
}
