//! What the crate's randomized tests share: a replayable generator and the seed they print.

/// SplitMix64: enough randomness to shake the decoders, replayable from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// An index below `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The seed in the environment variable `var`, else one from the clock; printed with how to
/// replay it.
pub fn seed(var: &str, what: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{var} should be a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock should be after 1970")
            .as_nanos() as u64,
    };
    println!("{what} seed {seed} (replay with {var}={seed})");
    seed
}
