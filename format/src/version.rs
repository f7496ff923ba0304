//! Versions: a `u64` assigned once to every write, when the shard accepts it.
//!
//! Invariant: a key's version strictly increases over its whole life, across restarts, and two
//! different values never share a version. The shard's [`VersionClock`] is a hybrid logical
//! clock: `next = max(last + 1, min(now_us, lease - VERSION_LEASE_SPAN / 2))`, never below any
//! version the shard has seen. To survive a
//! crash without reissuing a version that a lost, unacknowledged write had taken, every issued
//! version is covered by a durable *lease*: a bound written to the WAL (segment header or batch
//! header) before any version above the previous bound is handed out. Recovery restarts the clock
//! above the highest lease it finds, so a version once issued is never issued again. The wall
//! clock may pull versions only halfway into the durable lease: the other half (2^31 versions)
//! is headroom for the writes that arrive before the next batch renews the lease, so a shard
//! idle for longer than the lease span does not run out of versions.

pub type Version = u64;

/// How far above the versions it has issued a shard's lease reaches: 2^32 versions, about 71
/// minutes of microseconds. A batch never holds that many writes.
pub const VERSION_LEASE_SPAN: u64 = 1 << 32;

/// Why a version could not be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// More versions were requested than the durable lease covers (a programmer error upstream:
    /// the lease must be renewed by every batch).
    LeaseExhausted { last: Version, lease: Version },
}

impl std::fmt::Display for VersionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LeaseExhausted { last, lease } => {
                write!(f, "version lease exhausted: last issued {last}, durable lease {lease}")
            }
        }
    }
}

impl std::error::Error for VersionError {}

/// A shard's version clock. See the module comment for the rules it keeps.
#[derive(Debug, Clone)]
pub struct VersionClock {
    last: Version,
    lease_durable: Version,
}

impl VersionClock {
    /// A clock that will issue versions above `floor` (every version and lease seen so far must
    /// be `<= floor`), covered by the durable lease `lease_durable`.
    #[must_use]
    pub fn new(floor: Version, lease_durable: Version) -> Self {
        assert!(lease_durable > floor, "a fresh lease must lie above the floor");
        Self { last: floor, lease_durable }
    }

    /// The next version, given the wall clock in microseconds.
    pub fn next(&mut self, now_us: u64) -> Result<Version, VersionError> {
        let logical = self
            .last
            .checked_add(1)
            .ok_or(VersionError::LeaseExhausted { last: self.last, lease: self.lease_durable })?;
        // The wall clock pulls versions forward only halfway into the durable lease, keeping the
        // rest as headroom for logical increments until the next batch renews the lease.
        let wall_limit = self.lease_durable.saturating_sub(VERSION_LEASE_SPAN / 2);
        let version = logical.max(now_us.min(wall_limit));
        if version > self.lease_durable {
            return Err(VersionError::LeaseExhausted { last: self.last, lease: self.lease_durable });
        }
        assert!(version > self.last);
        self.last = version;
        Ok(version)
    }

    /// Raises the clock so that it never issues `version` or anything below it again.
    pub fn observe(&mut self, version: Version) {
        self.last = self.last.max(version);
    }

    /// The lease the next batch should record: room for the wall clock to catch up.
    #[must_use]
    pub fn lease_to_record(&self, now_us: u64) -> Version {
        self.last.max(now_us).saturating_add(VERSION_LEASE_SPAN).max(self.lease_durable)
    }

    /// Records that `lease` is now durable (its batch was written and synced).
    pub fn lease_made_durable(&mut self, lease: Version) {
        self.lease_durable = self.lease_durable.max(lease);
    }

    #[must_use]
    pub fn last(&self) -> Version {
        self.last
    }

    #[must_use]
    pub fn lease_durable(&self) -> Version {
        self.lease_durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_clock_strictly_increases_even_when_wall_clock_goes_back() {
        let mut clock = VersionClock::new(1000, 1000 + VERSION_LEASE_SPAN);
        let a = clock.next(5000).unwrap();
        let b = clock.next(10).unwrap();
        let c = clock.next(5000).unwrap();
        assert!(1000 < a && a < b && b < c);
        assert_eq!(a, 5000);
    }

    #[test]
    fn version_clock_never_passes_its_durable_lease() {
        let mut clock = VersionClock::new(10, 12);
        assert_eq!(clock.next(u64::MAX).unwrap(), 11);
        assert_eq!(clock.next(u64::MAX).unwrap(), 12);
        assert!(matches!(clock.next(0), Err(VersionError::LeaseExhausted { .. })));
        clock.lease_made_durable(clock.lease_to_record(0));
        assert_eq!(clock.next(0).unwrap(), 13);
    }

    #[test]
    fn version_clock_keeps_headroom_after_a_long_idle() {
        // The wall clock is far past the lease (the shard sat idle for hours): many writes must
        // still get versions before the next batch renews the lease.
        let lease = 1_000_000 + VERSION_LEASE_SPAN;
        let mut clock = VersionClock::new(1_000_000, lease);
        let now = lease + 10 * VERSION_LEASE_SPAN;
        let mut last = 0;
        for _ in 0..100_000 {
            let v = clock.next(now).unwrap();
            assert!(v > last && v <= lease);
            last = v;
        }
        clock.lease_made_durable(clock.lease_to_record(now));
        assert_eq!(clock.next(now).unwrap(), now, "the next lease lets the wall clock catch up");
    }

    #[test]
    fn version_clock_stays_above_observed_versions() {
        let mut clock = VersionClock::new(0, VERSION_LEASE_SPAN);
        clock.observe(500);
        assert_eq!(clock.next(0).unwrap(), 501);
    }
}
