//! A fixed-capacity table of per-connection state, addressed by slot index plus a generation
//! so that a stale event or completion for a reused slot is recognised and ignored.

/// Where an entry lives: its index and the generation it was inserted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub index: u32,
    pub generation: u32,
}

impl SlotKey {
    /// The key as one number (for readiness tokens): generation above the 24-bit index.
    pub fn to_bits(self) -> usize {
        ((self.generation as usize) << 24) | self.index as usize
    }

    /// The key [`SlotKey::to_bits`] made `bits` from.
    pub fn from_bits(bits: usize) -> SlotKey {
        SlotKey { index: (bits & 0xff_ffff) as u32, generation: (bits >> 24) as u32 }
    }
}

/// A table of at most `capacity` entries, allocated up front.
#[derive(Debug)]
pub struct Slots<T> {
    entries: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    length: usize,
}

impl<T> Slots<T> {
    /// An empty table of `capacity` slots.
    pub fn new(capacity: usize) -> Slots<T> {
        assert!(capacity > 0 && capacity < (1 << 24), "slot capacity {capacity} outside 1..2^24");
        Slots {
            entries: (0..capacity).map(|_| None).collect(),
            generations: vec![0; capacity],
            free: (0..capacity as u32).rev().collect(),
            length: 0,
        }
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.length
    }

    /// Whether no entry is in use.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Whether every slot is in use.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Stores `make(key)` in a free slot; `None` when full.
    pub fn insert_with(&mut self, make: impl FnOnce(SlotKey) -> T) -> Option<SlotKey> {
        let index = self.free.pop()?;
        let generation = self.generations[index as usize].wrapping_add(1);
        self.generations[index as usize] = generation;
        let key = SlotKey { index, generation };
        self.entries[index as usize] = Some(make(key));
        self.length += 1;
        Some(key)
    }

    /// The entry at `key`, if it is still the one inserted with that generation.
    pub fn get_mut(&mut self, key: SlotKey) -> Option<&mut T> {
        if self.generations.get(key.index as usize) != Some(&key.generation) {
            return None;
        }
        self.entries[key.index as usize].as_mut()
    }

    /// Removes and returns the entry at `key`.
    pub fn remove(&mut self, key: SlotKey) -> Option<T> {
        if self.generations.get(key.index as usize) != Some(&key.generation) {
            return None;
        }
        let entry = self.entries[key.index as usize].take()?;
        self.free.push(key.index);
        self.length -= 1;
        Some(entry)
    }

    /// Keys of every entry in use.
    pub fn keys(&self) -> Vec<SlotKey> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.is_some())
            .map(|(index, _)| SlotKey { index: index as u32, generation: self.generations[index] })
            .collect()
    }

    /// Every entry in use, with its key.
    pub fn iter(&self) -> impl Iterator<Item = (SlotKey, &T)> {
        self.entries.iter().enumerate().filter_map(|(index, entry)| {
            let key = SlotKey { index: index as u32, generation: self.generations[index] };
            entry.as_ref().map(|entry| (key, entry))
        })
    }

    /// Takes every entry out (for teardown).
    pub fn drain(&mut self) -> Vec<T> {
        let drained: Vec<T> = self.entries.iter_mut().filter_map(Option::take).collect();
        self.free = (0..self.entries.len() as u32).rev().collect();
        self.length = 0;
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss_reused_slots() {
        let mut slots = Slots::new(1);
        let first = slots.insert_with(|_| "a").unwrap();
        assert!(slots.is_full() && slots.insert_with(|_| "b").is_none());
        assert_eq!(slots.remove(first), Some("a"));
        let second = slots.insert_with(|_| "c").unwrap();
        assert_eq!(first.index, second.index);
        assert_eq!(slots.get_mut(first), None);
        assert_eq!(slots.get_mut(second), Some(&mut "c"));
        assert_eq!(slots.keys(), vec![second]);
        assert_eq!(slots.iter().collect::<Vec<_>>(), vec![(second, &"c")]);
        assert_eq!(SlotKey::from_bits(second.to_bits()), second);
        assert_eq!(slots.drain(), vec!["c"]);
        assert!(slots.is_empty());
    }
}
