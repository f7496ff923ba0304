//! The committed routing table keeps both promises for every group count in 1..=1000: groups
//! hold equal shares of the buckets ((max − min) / mean ≤ 2%), and adding a group moves buckets
//! only into the new group. Every bucket is checked at every count.

use strata_format::key::{BUCKET_COUNT, Bucket};
use strata_format::route::{GROUP_COUNT_MAX, Group, route_table};

const SPREAD_RATIO_MAX: f64 = 0.02;

#[test]
fn route_table_balances_and_only_moves_into_the_new_group() {
    let table = route_table();
    let mut previous: Vec<Group> = vec![0; BUCKET_COUNT as usize];
    for groups in 1..=GROUP_COUNT_MAX {
        let mut held = vec![0u32; usize::from(groups)];
        for bucket in 0..BUCKET_COUNT {
            let b = bucket as usize;
            let group = table.group_of(bucket as Bucket, groups);
            assert!(group < groups, "bucket {bucket} in group {group} of {groups}");
            assert!(
                group == previous[b] || group == groups - 1,
                "going to {groups} groups, bucket {bucket} moved from group {} to group {group}, not into the new group",
                previous[b],
            );
            previous[b] = group;
            held[usize::from(group)] += 1;
        }
        let held_min = *held.iter().min().unwrap();
        let held_max = *held.iter().max().unwrap();
        let mean = f64::from(BUCKET_COUNT) / f64::from(groups);
        let spread = f64::from(held_max - held_min) / mean;
        assert!(spread <= SPREAD_RATIO_MAX, "{groups} groups hold {held_min}..={held_max} buckets: spread {spread:.4}");
        assert!(held_max - held_min <= 1, "{groups} groups hold {held_min}..={held_max} buckets");
    }
}

#[test]
fn route_table_spreads_a_new_group_over_the_bucket_space() {
    // The buckets a group gives up follow a hash order, not bucket numbers: at 2 groups, group 1
    // holds about half of every 1/16th of the bucket space (the expected 2048 ± 32, 1 sigma).
    let table = route_table();
    let slice = BUCKET_COUNT / 16;
    for start in (0..BUCKET_COUNT).step_by(slice as usize) {
        let held = (start..start + slice).filter(|&b| table.group_of(b as Bucket, 2) == 1).count();
        assert!((1_850..=2_250).contains(&held), "group 1 holds {held} of buckets {start}..{}", start + slice);
    }
}
