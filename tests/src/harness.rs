//! Small helpers shared by the integration tests: opening a shard on the simulated disk and
//! driving writers on the deterministic executor.

use std::cell::Cell;
use std::rc::Rc;
use strata_ioengine::simexec::block_on;
use strata_ioengine::{Disk, SimClock, SimExecutor};
use strata_node::{OpenError, RecoveryReport, Shard, ShardOptions};

/// Options for a small shard on the simulated disk.
#[must_use]
pub fn small_options(segment_bytes: u64) -> ShardOptions {
    let mut options = ShardOptions::new("/data/shard-0");
    options.segment_bytes = segment_bytes;
    options.batch_bytes_max = 16 * 1024;
    options.value_bytes_max = 2048;
    options.nonce_seed = 1;
    options.ssd_reserve_bytes = 0;
    options.ssd_throttle_bytes = 0;
    options
}

/// Reads `(pkey, ts)` on a throwaway executor.
pub fn get<D: Disk>(shard: &Shard<D, SimClock>, pkey: &[u8], ts: u64) -> Option<(u64, Vec<u8>)> {
    let (shard, pkey) = (shard.clone(), pkey.to_vec());
    block_on(async move { shard.get(&pkey, ts).await }).expect("the read succeeds")
}

/// Opens a shard, running the open on a throwaway executor.
pub fn open_shard<D: Disk>(
    disk: &D,
    clock: &SimClock,
    options: &ShardOptions,
) -> Result<(Shard<D, SimClock>, RecoveryReport), OpenError> {
    let (d, c, o) = (disk.clone(), clock.clone(), options.clone());
    block_on(async move { Shard::open(d, c, o).await })
}

/// Runs `writers` tasks, each putting `per_writer` values (`pkey = "w{writer}"`, `ts = i`), with
/// the shard's background work; returns the acknowledged `(pkey, ts, version)` in ack order.
pub fn put_many<D: Disk>(
    shard: &Shard<D, SimClock>,
    writers: u64,
    per_writer: u64,
    value_len: usize,
) -> Vec<(Vec<u8>, u64, u64)> {
    let exec = SimExecutor::new();
    exec.spawn(shard.background());
    exec.spawn(shard.maintenance());
    let acked = Rc::new(std::cell::RefCell::new(Vec::new()));
    let live = Rc::new(Cell::new(writers));
    for w in 0..writers {
        let (shard, acked, live) = (shard.clone(), acked.clone(), live.clone());
        exec.spawn(async move {
            let pkey = format!("w{w}").into_bytes();
            for i in 0..per_writer {
                let value = value_for(&pkey, i, value_len);
                if let Ok(version) = shard.put(&pkey, i, &value).await {
                    acked.borrow_mut().push((pkey.clone(), i, version));
                }
            }
            live.set(live.get() - 1);
        });
    }
    while live.get() > 0 {
        assert!(exec.step(), "writers stalled");
    }
    exec.clear();
    acked.take()
}

/// The value `put_many` writes at `(pkey, i)`.
#[must_use]
pub fn value_for(pkey: &[u8], i: u64, len: usize) -> Vec<u8> {
    let mut value = format!("{}-{i}-", String::from_utf8_lossy(pkey)).into_bytes();
    value.resize(len.max(value.len()), b'v');
    value
}

/// A segment file's header and the `(offset, framed length)` of each valid batch, in order.
pub fn read_segment<D: Disk>(disk: &D, path: &std::path::Path) -> (strata_format::wal::SegmentInfo, Vec<(u64, u64)>) {
    use strata_format::wal::{BatchPlace, SEGMENT_DATA_OFFSET, SegmentHeader, decode_batch};
    use strata_ioengine::DiskFile;
    let (d, p) = (disk.clone(), path.to_path_buf());
    let bytes = block_on(async move {
        let file = d.open(&p).await.expect("segment opens");
        let size = file.size().await.expect("segment has a size");
        file.read_at(0, size as usize).await.expect("segment reads").as_ref().to_vec()
    });
    let info = SegmentHeader::decode(&bytes).expect("segment header decodes");
    let mut batches = Vec::new();
    let mut offset = SEGMENT_DATA_OFFSET;
    let mut batch_seq = info.first_batch_seq;
    while offset < info.segment_size {
        let place = BatchPlace { batch_seq, segment_seq: info.segment_seq, offset, nonce: info.nonce };
        let Ok(batch) = decode_batch(&bytes[offset as usize..], place, info.segment_size - offset) else { break };
        batches.push((offset, batch.framed_len()));
        offset += batch.framed_len();
        batch_seq += 1;
    }
    (info, batches)
}

/// Segment files of a shard's WAL, sorted by segment sequence (files without a valid header
/// are left out).
pub fn segments_by_seq<D: Disk>(
    disk: &D,
    wal_dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, strata_format::wal::SegmentInfo)> {
    use strata_format::wal::SegmentHeader;
    use strata_ioengine::DiskFile;
    let (d, dir) = (disk.clone(), wal_dir.to_path_buf());
    let mut found = block_on(async move {
        let mut found = Vec::new();
        for name in d.list(&dir).await.expect("wal directory lists") {
            let path = dir.join(&name);
            let file = d.open(&path).await.expect("segment opens");
            let head = file.read_at(0, 4096).await.expect("header reads").as_ref().to_vec();
            if let Ok(info) = SegmentHeader::decode(&head) {
                found.push((path, info));
            }
        }
        found
    });
    found.sort_by_key(|(_, info)| info.segment_seq);
    found
}

/// Overwrites `bytes` at `offset` (sector-aligned) of a file and syncs it.
pub fn overwrite<D: Disk>(disk: &D, path: &std::path::Path, offset: u64, bytes: Vec<u8>) {
    use strata_ioengine::DiskFile;
    let (d, p) = (disk.clone(), path.to_path_buf());
    block_on(async move {
        let file = d.open(&p).await.expect("file opens");
        file.write_at(&bytes, offset).await.expect("overwrite succeeds");
        file.fdatasync().await.expect("sync succeeds");
    });
}

/// Flips one bit at byte `offset` of a file.
pub fn flip_bit<D: Disk>(disk: &D, path: &std::path::Path, offset: u64) {
    use strata_ioengine::DiskFile;
    let block_start = offset - offset % 4096;
    let (d, p) = (disk.clone(), path.to_path_buf());
    let mut block = block_on(async move {
        let file = d.open(&p).await.expect("file opens");
        file.read_at(block_start, 4096).await.expect("block reads").as_ref().to_vec()
    });
    block[(offset - block_start) as usize] ^= 0x10;
    overwrite(disk, path, block_start, block);
}
