//! Rendezvous (highest-random-weight) hashing: which of several boxes serves one device's
//! download of one content, and which box takes over when it fails.
//!
//! Every (device, content, box) triple gets a weight; a device ranks the boxes by weight, highest
//! first: the first is the primary, the next one takes over on failure. Removing a box moves only
//! the pairs it was primary for, adding one takes over about `1/n` of them, and no coordination
//! is needed: every device and every box computes the same ranking from the same names.
//!
//! The weight is fixed (it is not `std`'s randomised hasher) so it is the same in every process,
//! on every machine and in every release: the first 8 bytes, big-endian, of
//! `SHA-256("tessera-rendezvous-v1" || field(device) || field(content) || field(box))`, where
//! `field(s)` is the length of `s` in bytes as a big-endian `u32`, then the UTF-8 bytes of `s`.
//! Sans-I/O: names in, an order out.

use crate::hash::sha256;

/// Separates this use of SHA-256 from every other; a new weight function gets a new version.
const DOMAIN: &[u8] = b"tessera-rendezvous-v1";

/// The weight of `node` (a box: `HOST:PORT` or a service URL) for `device`'s download of `content`.
pub fn weight(device: &str, content: &str, node: &str) -> u64 {
    let mut input = Vec::with_capacity(DOMAIN.len() + 12 + device.len() + content.len() + node.len());
    input.extend_from_slice(DOMAIN);
    for field in [device, content, node] {
        let length = u32::try_from(field.len()).expect("names are far shorter than 4 GiB");
        input.extend_from_slice(&length.to_be_bytes());
        input.extend_from_slice(field.as_bytes());
    }
    let digest = sha256(&input);
    u64::from_be_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
}

/// Indexes of `nodes`, best first: highest weight, ties (equal weights, or a node named twice)
/// by name, then by index, so the order never depends on how `nodes` was listed.
pub fn rank<T: AsRef<str>>(device: &str, content: &str, nodes: &[T]) -> Vec<usize> {
    let mut weighted: Vec<(u64, &str, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| (weight(device, content, node.as_ref()), node.as_ref(), index))
        .collect();
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)).then_with(|| a.2.cmp(&b.2)));
    weighted.into_iter().map(|(_, _, index)| index).collect()
}

/// `nodes` in [`rank`] order.
pub fn ranked<T: AsRef<str> + Clone>(device: &str, content: &str, nodes: &[T]) -> Vec<T> {
    rank(device, content, nodes).into_iter().map(|index| nodes[index].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxes(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("10.0.0.{}:7680", i + 1)).collect()
    }

    #[test]
    fn the_weight_is_the_documented_sha256_prefix() {
        // Computed apart from this code (Python's hashlib over the encoding in the module docs):
        // devices and boxes of different releases must rank alike.
        assert_eq!(weight("laptop-17", "kb5031445", "10.0.0.5:7680"), 0xec2c_29cf_3141_f5d8);
        // Field boundaries count: moving a byte from one name to the next changes the weight.
        assert_ne!(weight("ab", "c", "x"), weight("a", "bc", "x"));
    }

    #[test]
    fn the_ranking_does_not_depend_on_the_listing_order() {
        let nodes = boxes(5);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for content in ["a", "kb5031445", "iso-2026-11"] {
            assert_eq!(ranked("dev", content, &nodes), ranked("dev", content, &reversed));
            let order = rank("dev", content, &nodes);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4], "every node once");
        }
    }

    #[test]
    fn many_contents_spread_evenly_over_the_boxes() {
        let nodes = boxes(4);
        let contents = 4000;
        let mut primaries = [0u32; 4];
        for id in 0..contents {
            primaries[rank("device-1", &format!("content-{id}"), &nodes)[0]] += 1;
        }
        // 1000 expected each; a binomial's standard deviation here is about 27.
        for (index, count) in primaries.iter().enumerate() {
            assert!((850..=1150).contains(count), "box {index} is primary for {count} of {contents}: {primaries:?}");
        }
        let mut devices = [0u32; 4];
        for device in 0..contents {
            devices[rank(&format!("device-{device}"), "one-content", &nodes)[0]] += 1;
        }
        assert!(devices.iter().all(|count| (850..=1150).contains(count)), "devices spread too: {devices:?}");
    }

    #[test]
    fn removing_a_box_moves_only_the_contents_it_was_primary_for() {
        let nodes = boxes(5);
        let removed = 2;
        let remaining: Vec<String> =
            nodes.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, n)| n.clone()).collect();
        let (mut moved, mut kept) = (0, 0);
        for id in 0..2000 {
            let content = format!("content-{id}");
            let before = ranked("device-1", &content, &nodes);
            let after = ranked("device-1", &content, &remaining);
            if before[0] == nodes[removed] {
                // Its contents go to the box ranked next for them: the failover target.
                assert_eq!(after[0], before[1], "{content}");
                moved += 1;
            } else {
                assert_eq!(after[0], before[0], "{content} moved though its box stayed");
                kept += 1;
            }
            let without: Vec<&String> = before.iter().filter(|n| **n != nodes[removed]).collect();
            assert_eq!(after.iter().collect::<Vec<_>>(), without, "the rest of the order is kept");
        }
        assert!(moved > 300 && kept > 1200, "moved {moved}, kept {kept}");
    }
}
