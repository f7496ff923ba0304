//! Histograms read from a Strata node's Prometheus text metrics (`/metrics` on its status port),
//! so a bench can say how the node's loop behaved over a step: the node's power-of-two buckets,
//! summed over its shards, and the difference between two scrapes.

/// A histogram summed over every shard's samples of one family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Cumulative counts by upper bound in µs, ascending; `u64::MAX` stands for `+Inf`.
    pub buckets: Vec<(u64, u64)>,
    pub sum_us: f64,
    pub count: u64,
}

/// The value of label `name` in a sample line's `{...}`.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// A sample line's value: the last field.
fn value(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

impl Histogram {
    /// The family `name` (without `_bucket`) in `text`, summed over its samples' label sets.
    /// Absent samples read as an empty histogram.
    #[must_use]
    pub fn parse(text: &str, name: &str) -> Self {
        let (bucket, sum, count) = (format!("{name}_bucket{{"), format!("{name}_sum{{"), format!("{name}_count{{"));
        let mut h = Self::default();
        for line in text.lines() {
            if line.starts_with(&bucket) {
                let Some(le) = label(line, "le") else { continue };
                let bound = if le == "+Inf" {
                    u64::MAX
                } else {
                    let Ok(seconds) = le.parse::<f64>() else { continue };
                    (seconds * 1e6).round() as u64
                };
                let n = value(line).unwrap_or(0.0) as u64;
                match h.buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, total)) => *total += n,
                    None => h.buckets.push((bound, n)),
                }
            } else if line.starts_with(&sum) {
                h.sum_us += value(line).unwrap_or(0.0) * 1e6;
            } else if line.starts_with(&count) {
                h.count += value(line).unwrap_or(0.0) as u64;
            }
        }
        h.buckets.sort_unstable();
        h
    }

    /// What was recorded after `before` (an earlier scrape of the same node).
    #[must_use]
    pub fn since(&self, before: &Self) -> Self {
        let earlier = |bound: u64| before.buckets.iter().find(|(b, _)| *b == bound).map_or(0, |(_, n)| *n);
        Self {
            buckets: self.buckets.iter().map(|&(b, n)| (b, n.saturating_sub(earlier(b)))).collect(),
            sum_us: (self.sum_us - before.sum_us).max(0.0),
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The upper bound (µs) of the bucket holding quantile `q`: the quantile is at most this, and
    /// more than the bound below it (a factor of two with the node's buckets). 0 when empty;
    /// `u64::MAX` when it lies beyond the last finite bound.
    #[must_use]
    pub fn quantile_bound_us(&self, q: f64) -> u64 {
        let Some(&(_, total)) = self.buckets.last() else { return 0 };
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        self.buckets.iter().find(|(_, n)| *n >= rank).map_or(u64::MAX, |(b, _)| *b)
    }

    /// The mean recorded value, µs (0 when empty).
    #[must_use]
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum_us / self.count as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    const TEXT: &str = "\
# TYPE strata_turn_seconds histogram
strata_turn_seconds_bucket{shard=\"0\",le=\"0.000016\"} 1
strata_turn_seconds_bucket{shard=\"0\",le=\"0.000032\"} 3
strata_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"} 4
strata_turn_seconds_sum{shard=\"0\"} 0.0001
strata_turn_seconds_count{shard=\"0\"} 4
strata_turn_seconds_bucket{shard=\"1\",le=\"0.000016\"} 0
strata_turn_seconds_bucket{shard=\"1\",le=\"0.000032\"} 2
strata_turn_seconds_bucket{shard=\"1\",le=\"+Inf\"} 2
strata_turn_seconds_sum{shard=\"1\"} 0.00005
strata_turn_seconds_count{shard=\"1\"} 2
strata_turn_seconds_other{shard=\"0\"} 9
strata_answer_hold_seconds_bucket{shard=\"0\",le=\"0.000016\"} 7
";

    #[test]
    fn shards_are_summed_by_bound_and_other_families_ignored() {
        let h = Histogram::parse(TEXT, "strata_turn_seconds");
        assert_eq!(h.buckets, vec![(16, 1), (32, 5), (u64::MAX, 6)]);
        assert_eq!(h.count, 6);
        assert!((h.sum_us - 150.0).abs() < 1e-6, "{}", h.sum_us);
        assert!((h.mean_us() - 25.0).abs() < 1e-6);
        assert_eq!(Histogram::parse(TEXT, "strata_missing"), Histogram::default());
    }

    #[test]
    fn a_quantile_is_bounded_by_its_bucket() {
        let h = Histogram::parse(TEXT, "strata_turn_seconds");
        assert_eq!(h.quantile_bound_us(0.1), 16);
        assert_eq!(h.quantile_bound_us(0.5), 32);
        assert_eq!(h.quantile_bound_us(0.99), u64::MAX);
        assert_eq!(Histogram::default().quantile_bound_us(0.5), 0);
    }

    #[test]
    fn a_difference_holds_only_what_came_after() {
        let before = Histogram::parse(TEXT, "strata_turn_seconds");
        let after = Histogram::parse(&TEXT.replace("} 4\n", "} 14\n"), "strata_turn_seconds");
        let d = after.since(&before);
        // The +Inf bucket and the count of shard 0 grew by 10, beyond the finite bounds.
        assert_eq!(d.buckets, vec![(16, 0), (32, 0), (u64::MAX, 10)]);
        assert_eq!(d.count, 10);
        assert_eq!(d.quantile_bound_us(0.5), u64::MAX);
        assert_eq!(before.since(&before).mean_us(), 0.0);
    }
}
