//! The history ring of a ModelCostMapSync: the last `spec.history` published maps, each in
//! an owned ConfigMap `<target>-history-<n>`. A new map overwrites the oldest slot, so
//! keeping history needs no delete right; `costmap.dev/reject-digest` puts the newest other
//! one back (see [`crate::controller::core`]).

use crate::api::HistoryEntry;

/// Where a new map goes in the ring, and the ring after it (newest first). `None` for the
/// slot when nothing is written: no history kept, or the map is already the newest entry.
pub(super) fn next_ring(
    previous: &[HistoryEntry],
    keep: usize,
    target: &str,
    new: HistoryEntry,
) -> (Option<String>, Vec<HistoryEntry>) {
    if keep == 0 {
        return (None, Vec::new());
    }
    if previous
        .first()
        .is_some_and(|newest| newest.digest == new.digest)
    {
        return (None, previous.iter().take(keep).cloned().collect());
    }
    let kept: Vec<HistoryEntry> = previous.iter().take(keep - 1).cloned().collect();
    let slot = (1..=keep)
        .map(|n| format!("{target}-history-{n}"))
        .find(|name| kept.iter().all(|entry| &entry.config_map != name))
        .unwrap_or_else(|| format!("{target}-history-{keep}"));
    let mut ring = vec![HistoryEntry {
        config_map: slot.clone(),
        ..new
    }];
    ring.extend(kept);
    (Some(slot), ring)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn entry(digest: &str, slot: &str) -> HistoryEntry {
        HistoryEntry {
            digest: digest.into(),
            git_blob_id: format!("blob-{digest}"),
            models: 1,
            published_at: Time(Timestamp::UNIX_EPOCH),
            config_map: slot.into(),
        }
    }

    fn ring_of(digests: &[&str], keep: usize) -> Vec<HistoryEntry> {
        let mut ring = Vec::new();
        for digest in digests {
            let (_, next) = next_ring(&ring, keep, "litellm", entry(digest, ""));
            ring = next;
        }
        ring
    }

    #[test]
    fn a_ring_of_three_keeps_the_newest_three_overwriting_the_oldest_slot() {
        let ring = ring_of(&["a", "b", "c"], 3);
        let slots: Vec<(&str, &str)> = ring
            .iter()
            .map(|e| (e.digest.as_str(), e.config_map.as_str()))
            .collect();
        assert_eq!(
            slots,
            [
                ("c", "litellm-history-3"),
                ("b", "litellm-history-2"),
                ("a", "litellm-history-1")
            ]
        );
        let (slot, ring) = next_ring(&ring, 3, "litellm", entry("d", ""));
        assert_eq!(
            slot.as_deref(),
            Some("litellm-history-1"),
            "a's slot, the oldest"
        );
        let digests: Vec<&str> = ring.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(digests, ["d", "c", "b"]);
        let (slot, _) = next_ring(&ring, 3, "litellm", entry("e", ""));
        assert_eq!(slot.as_deref(), Some("litellm-history-2"));
    }

    #[test]
    fn the_same_map_again_writes_nothing_and_no_history_keeps_nothing() {
        let ring = ring_of(&["a", "b"], 3);
        let (slot, again) = next_ring(&ring, 3, "litellm", entry("b", ""));
        assert_eq!(slot, None);
        assert_eq!(again, ring);
        assert_eq!(
            next_ring(&ring, 0, "litellm", entry("c", "")),
            (None, Vec::new())
        );
    }

    #[test]
    fn a_smaller_ring_drops_the_oldest_entries() {
        let ring = ring_of(&["a", "b", "c"], 3);
        let (slot, smaller) = next_ring(&ring, 2, "litellm", entry("d", ""));
        assert_eq!(slot.as_deref(), Some("litellm-history-1"));
        let digests: Vec<&str> = smaller.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(digests, ["d", "c"]);
    }
}
