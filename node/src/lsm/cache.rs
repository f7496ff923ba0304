//! The block cache: decoded data blocks keyed by (table id, offset), bounded in bytes.
//!
//! Eviction is CLOCK (second chance): a hit marks the block; the hand skips marked blocks once.
//! Table ids are never reused, so a cached block is never stale.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use strata_format::table::DecodedBlock;

type BlockKey = (u64, u64);

#[derive(Debug, Default)]
pub struct BlockCache {
    blocks: HashMap<BlockKey, (Rc<DecodedBlock>, bool)>,
    hand: VecDeque<BlockKey>,
    bytes: usize,
    bytes_max: usize,
    pub hits: u64,
    pub misses: u64,
}

impl BlockCache {
    #[must_use]
    pub fn new(bytes_max: usize) -> Self {
        Self { bytes_max, ..Self::default() }
    }

    pub fn get(&mut self, table_id: u64, offset: u64) -> Option<Rc<DecodedBlock>> {
        match self.blocks.get_mut(&(table_id, offset)) {
            Some((block, referenced)) => {
                *referenced = true;
                self.hits += 1;
                Some(block.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, table_id: u64, offset: u64, block: Rc<DecodedBlock>) {
        let size = block.raw.len() + 64;
        if size > self.bytes_max || self.blocks.contains_key(&(table_id, offset)) {
            return;
        }
        while self.bytes + size > self.bytes_max {
            let Some(key) = self.hand.pop_front() else { break };
            let Some(entry) = self.blocks.get_mut(&key) else { continue };
            if entry.1 {
                entry.1 = false;
                self.hand.push_back(key);
            } else if let Some((evicted, _)) = self.blocks.remove(&key) {
                self.bytes -= evicted.raw.len() + 64;
            }
        }
        self.bytes += size;
        self.blocks.insert((table_id, offset), (block, false));
        self.hand.push_back((table_id, offset));
    }

    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize) -> Rc<DecodedBlock> {
        Rc::new(DecodedBlock::new(vec![0; n], 0, strata_format::table::EntryLayout::Fixed))
    }

    #[test]
    fn cache_stays_within_its_budget_and_keeps_hot_blocks() {
        let mut cache = BlockCache::new(10 * (1000 + 64));
        cache.insert(1, 0, block(1000));
        for i in 1..100 {
            assert!(cache.get(1, 0).is_some(), "the hot block survives round {i}");
            cache.insert(2, i * 4096, block(1000));
            assert!(cache.bytes() <= 10 * 1064);
        }
    }
}
