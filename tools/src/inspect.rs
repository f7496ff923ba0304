//! Read-only decoding of WAL segments and cold files: header, batches or blocks, and where
//! damage starts.

use std::path::{Path, PathBuf};
use strata_format::BLOCK_SIZE;
use strata_format::wal::{BatchPlace, SEGMENT_DATA_OFFSET, SegmentHeader, WalFormatError, decode_batch};

/// What a segment holds.
#[derive(Debug, serde::Serialize)]
struct SegmentReport {
    file: PathBuf,
    header: Option<serde_json::Value>,
    header_error: Option<String>,
    batches: Vec<serde_json::Value>,
    records: u64,
    /// Where the valid batches end and why decoding stopped there.
    end_offset: u64,
    end_reason: String,
    /// A valid batch found after the end: the damage is in the middle of the log.
    valid_batch_after_end: Option<u64>,
}

fn inspect_segment(path: &Path) -> Result<SegmentReport, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut report = SegmentReport {
        file: path.to_path_buf(),
        header: None,
        header_error: None,
        batches: Vec::new(),
        records: 0,
        end_offset: 0,
        end_reason: String::new(),
        valid_batch_after_end: None,
    };
    let info = match SegmentHeader::decode(&bytes) {
        Ok(info) => info,
        Err(e) => {
            report.header_error = Some(format!("segment header at offset 0: {e}"));
            report.end_reason = "no valid header: the file is free (or its header is damaged)".into();
            return Ok(report);
        }
    };
    report.header = Some(serde_json::json!({
        "segment_seq": info.segment_seq,
        "segment_size": info.segment_size,
        "first_batch_seq": info.first_batch_seq,
        "prev_segment_seq": info.prev_segment_seq,
        "prev_segment_end": info.prev_segment_end,
        "version_lease": info.version_lease,
    }));
    let size = info.segment_size.min(bytes.len() as u64);
    let mut offset = SEGMENT_DATA_OFFSET;
    let mut batch_seq = info.first_batch_seq;
    let stop = loop {
        if offset >= size {
            break "end of segment".to_string();
        }
        let place = BatchPlace { batch_seq, segment_seq: info.segment_seq, offset, nonce: info.nonce };
        match decode_batch(&bytes[offset as usize..], place, size - offset) {
            Ok(batch) => {
                let records = batch.records().count() as u64;
                let bad_records = batch.records().filter(Result::is_err).count();
                report.batches.push(serde_json::json!({
                    "offset": offset, "batch_seq": batch.batch_seq, "records": records,
                    "framed_bytes": batch.framed_len(), "bad_records": bad_records,
                }));
                report.records += records;
                offset += batch.framed_len();
                batch_seq += 1;
            }
            Err(WalFormatError::Unwritten) => break "never written (clean end)".to_string(),
            Err(e) => break format!("invalid batch: {e}"),
        }
    };
    report.end_offset = offset;
    report.end_reason = stop;
    let mut at = offset + BLOCK_SIZE as u64;
    while at < size {
        let place = BatchPlace { batch_seq: 0, segment_seq: info.segment_seq, offset: at, nonce: info.nonce };
        if decode_batch(&bytes[at as usize..], place, size - at).is_ok() {
            report.valid_batch_after_end = Some(at);
            break;
        }
        at += BLOCK_SIZE as u64;
    }
    Ok(report)
}

pub fn run(path: &Path, json: bool) -> i32 {
    if path.extension().is_some_and(|x| x == "cold") {
        return inspect_cold(path, json);
    }
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect(),
            Err(e) => {
                eprintln!("strata-tool: cannot list {}: {e}", path.display());
                return 1;
            }
        };
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut damaged = false;
    let mut reports = Vec::new();
    for file in files {
        match inspect_segment(&file) {
            Ok(report) => {
                damaged |= report.valid_batch_after_end.is_some();
                reports.push(report);
            }
            Err(e) => {
                eprintln!("strata-tool: {e}");
                damaged = true;
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports).expect("reports serialize"));
    } else {
        for r in &reports {
            print_text(r);
        }
    }
    i32::from(damaged)
}

fn print_text(r: &SegmentReport) {
    println!("{}", r.file.display());
    if let Some(e) = &r.header_error {
        println!("  {e}");
        return;
    }
    if let Some(h) = &r.header {
        println!(
            "  segment {} (follows segment {} which ended at offset {}), first batch {}, {} bytes",
            h["segment_seq"], h["prev_segment_seq"], h["prev_segment_end"], h["first_batch_seq"], h["segment_size"]
        );
    }
    println!(
        "  {} batches, {} records; valid batches end at offset {}: {}",
        r.batches.len(),
        r.records,
        r.end_offset,
        r.end_reason
    );
    if let Some(at) = r.valid_batch_after_end {
        println!("  DAMAGE: the batch at offset {} is invalid but a valid batch follows at offset {at}", r.end_offset);
    }
}

/// Decodes a cold file: its header, its blocks, and every damaged range (read-only).
fn inspect_cold(path: &Path, json: bool) -> i32 {
    use strata_format::cold::{COLD_DATA_START, ColdFileHeader, ColdFileId};
    let head = match std::fs::File::open(path).and_then(|f| {
        let mut buf = vec![0u8; COLD_DATA_START as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).map(|()| buf)
    }) {
        Ok(head) => head,
        Err(e) => {
            eprintln!("strata-tool: cannot read {}: {e}", path.display());
            return 1;
        }
    };
    let header = ColdFileHeader::decode(&head);
    // The file's identity: from its header, or else from its name and directory.
    let named = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .and_then(|d| d.strip_prefix('s'))
        .and_then(|s| s.parse().ok())
        .and_then(|shard| ColdFileId::parse(shard, path.file_name()?.to_str()?));
    let Some(id) = header.as_ref().ok().map(|h| h.file).or(named) else {
        eprintln!("strata-tool: {} has a damaged header and a name that is not a cold file's", path.display());
        return 1;
    };
    let scan = strata_ioengine::uring::block_on({
        let path = path.to_path_buf();
        async move { crate::cold::scan_file(0, &path, id).await }
    });
    let scan = match scan {
        Ok(Ok(scan)) => scan,
        Ok(Err(e)) => {
            eprintln!("strata-tool: {e}");
            return 1;
        }
        Err(e) => {
            eprintln!("strata-tool: cannot start io_uring: {e}");
            return 1;
        }
    };
    if json {
        let header = header.as_ref().map(|h| serde_json::json!({ "window": h.file.window, "shard": h.file.shard, "generation": h.file.generation, "part": h.file.part, "disk": h.disk, "epoch": h.epoch, "block_count": h.block_count, "used_bytes": h.used_bytes, "file_bytes": h.file_bytes })).map_err(ToString::to_string);
        println!(
            "{}",
            serde_json::json!({ "file": path, "header": header.as_ref().ok(), "header_error": header.as_ref().err(), "blocks": scan.blocks, "bytes": scan.bytes, "damage": scan.damage })
        );
    } else {
        match &header {
            Ok(h) => println!(
                "{}: window {} shard {} generation {} part {} (disk {}, epoch {}): {} blocks in {} of {} bytes",
                path.display(),
                h.file.window,
                h.file.shard,
                h.file.generation,
                h.file.part,
                h.disk,
                h.epoch,
                h.block_count,
                h.used_bytes,
                h.file_bytes
            ),
            Err(e) => println!("{}: file header at offset 0: {e}", path.display()),
        }
        println!("{} good blocks, {} bytes", scan.blocks, scan.bytes);
        for d in &scan.damage {
            println!("damage at offset {} ({} bytes): {}", d.offset, d.len, d.reason);
        }
    }
    i32::from(!scan.damage.is_empty())
}
