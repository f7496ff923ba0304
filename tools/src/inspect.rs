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

/// What a file is: by its first four bytes, or, when they name no kind (a damaged header, a
/// header not written yet: a preallocated WAL segment, a cold file being sunk), by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Segment,
    Table,
    Manifest,
    Cold,
}

fn kind_of(path: &Path) -> Result<Kind, String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut head = Vec::with_capacity(4);
    file.by_ref().take(4).read_to_end(&mut head).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let by_magic = match head.first_chunk::<4>().map(|m| u32::from_le_bytes(*m)) {
        Some(strata_format::wal::SEGMENT_MAGIC) => Some(Kind::Segment),
        Some(strata_format::table::BLOCK_MAGIC) => Some(Kind::Table),
        Some(strata_format::manifest::MANIFEST_MAGIC) => Some(Kind::Manifest),
        Some(strata_format::cold::COLD_FILE_MAGIC) => Some(Kind::Cold),
        _ => None,
    };
    // Named like one of the node's files: inspected as that, so damage at its start is
    // reported as damage.
    let extension = path.extension().and_then(|x| x.to_str());
    let by_name = match (extension, path.file_name().and_then(|n| n.to_str())) {
        (Some("seg"), _) => Some(Kind::Segment),
        (Some("sst"), _) => Some(Kind::Table),
        (Some("cold"), _) => Some(Kind::Cold),
        (_, Some("MANIFEST")) => Some(Kind::Manifest),
        _ => None,
    };
    by_magic.or(by_name).ok_or_else(|| {
        format!(
            "{} is not a Strata file: it starts with {head:02x?}, and a WAL segment starts with \"STWS\", a \
             table with \"STBK\", a manifest with \"STMF\", a cold file with \"STCF\" (a file named like \
             one, *.seg, *.sst, MANIFEST or *.cold, is inspected as that whatever it starts with)",
            path.display()
        )
    })
}

/// Inspects a file (by its kind) or a shard's `wal/` directory: 0 when sound, 1 when damage
/// was found, 2 when the path is not something to inspect.
pub fn run(path: &Path, json: bool) -> i32 {
    if !path.is_dir() {
        match kind_of(path) {
            Ok(Kind::Cold) => return inspect_cold(path, json),
            Ok(Kind::Table) => return inspect_table(path, json),
            Ok(Kind::Manifest) => return inspect_manifest(path, json),
            Ok(Kind::Segment) => {}
            Err(e) => {
                eprintln!("strata-tool: {e}");
                return 2;
            }
        }
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

/// The whole file, or `None` after saying why it cannot be read.
fn read_reporting(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).map_err(|e| eprintln!("strata-tool: cannot read {}: {e}", path.display())).ok()
}

/// Decodes a table: footer, index, filter, then every data block's checksum and entries.
fn inspect_table(path: &Path, json: bool) -> i32 {
    use strata_format::key::ts_of_key;
    use strata_format::table::{BlockEntries, BlockKind, TableFooter, decode_block, decode_index, peek_block_len};
    let Some(bytes) = read_reporting(path) else { return 1 };
    let mut damage: Vec<String> = Vec::new();
    let (mut blocks, mut entries) = (0u64, 0u64);
    // Entries whose value is a cold block's link (a sunk window's link table).
    let mut block_links = 0u64;
    // Entries whose ts lies outside the footer's bounds.
    let mut ts_outside = 0u64;
    let (mut first_key, mut last_key): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let footer = if bytes.len() >= BLOCK_SIZE && bytes.len() % BLOCK_SIZE == 0 {
        TableFooter::decode(&bytes[bytes.len() - BLOCK_SIZE..]).map_err(|e| e.to_string())
    } else {
        Err(format!("the file is {} bytes, not a whole number of 4 KiB blocks", bytes.len()))
    };
    match &footer {
        Err(e) => damage.push(format!("footer at offset {}: {e}", bytes.len().saturating_sub(BLOCK_SIZE))),
        Ok(f) => {
            let block_at = |offset: u64, len: u32, kind| {
                let (start, end) = (offset as usize, offset as usize + len as usize);
                if end > bytes.len() {
                    return Err("points outside the file".to_string());
                }
                decode_block(&bytes[start..end], f.table_id, offset, kind).map_err(|e| e.to_string())
            };
            let index = block_at(f.index_offset, f.index_len, BlockKind::Index)
                .and_then(|b| decode_index(&b).map_err(|e| e.to_string()));
            if let Err(e) = block_at(f.filter_offset, f.filter_len, BlockKind::Filter) {
                damage.push(format!("filter block at offset {}: {e}", f.filter_offset));
            }
            match index {
                Err(e) => damage.push(format!("index block at offset {}: {e}", f.index_offset)),
                Ok(index) => {
                    for entry in &index {
                        let (start, end) = (entry.offset as usize, entry.offset as usize + entry.len as usize);
                        let decoded = if end <= bytes.len() {
                            peek_block_len(&bytes[start..]).map_err(|e| e.to_string()).and_then(|_| {
                                decode_block(&bytes[start..end], f.table_id, entry.offset, BlockKind::Data)
                                    .map_err(|e| e.to_string())
                            })
                        } else {
                            Err("points outside the file".into())
                        };
                        match decoded {
                            Ok(block) => {
                                blocks += 1;
                                let mut walk = BlockEntries::new(&block);
                                while let Some(e) = walk.next() {
                                    match e {
                                        Ok(e) => {
                                            entries += 1;
                                            let link =
                                                e.value.map(|v| strata_format::cold::BlockLink::decode(v, e.key));
                                            block_links += u64::from(matches!(link, Some(Ok(_))));
                                            first_key.get_or_insert_with(|| e.key.to_vec());
                                            last_key = Some(e.key.to_vec());
                                            // Timeline pages skip tables by these bounds: a key
                                            // outside them would be missed.
                                            let ts = (e.key.len() >= 8).then(|| ts_of_key(e.key));
                                            if ts.is_some_and(|ts| ts < f.ts_min || ts > f.ts_max) {
                                                ts_outside += 1;
                                            }
                                        }
                                        Err(err) => {
                                            damage.push(format!("data block at offset {}: {err}", entry.offset));
                                            break;
                                        }
                                    }
                                }
                            }
                            Err(e) => damage.push(format!("data block at offset {}: {e}", entry.offset)),
                        }
                    }
                }
            }
        }
    }
    if ts_outside > 0 {
        damage.push(format!("{ts_outside} entries have a ts outside the footer's ts bounds"));
    }
    let show = |k: &Option<Vec<u8>>| {
        k.as_deref()
            .and_then(|k| strata_format::key::decode_key(k).ok())
            .map_or("-".to_string(), |k| format!("{}@{}", String::from_utf8_lossy(k.pkey), k.ts))
    };
    if json {
        let footer = footer
            .as_ref()
            .ok()
            .map(|f| serde_json::json!({ "table_id": f.table_id, "window": f.window, "entry_count": f.entry_count, "ts_min": f.ts_min, "ts_max": f.ts_max }));
        println!(
            "{}",
            serde_json::json!({ "file": path, "footer": footer, "data_blocks": blocks, "entries": entries, "block_links": block_links, "first_key": show(&first_key), "last_key": show(&last_key), "damage": damage })
        );
    } else {
        if let Ok(f) = &footer {
            println!(
                "{}: table {} of window {}, {} entries by its footer, ts {}..={}",
                path.display(),
                f.table_id,
                f.window,
                f.entry_count,
                f.ts_min,
                f.ts_max
            );
        }
        println!("{blocks} data blocks check, {entries} entries, keys {} .. {}", show(&first_key), show(&last_key));
        if block_links > 0 {
            println!("{block_links} of the entries are cold block links (a sunk window's link table)");
        }
        for d in &damage {
            println!("DAMAGE {d}");
        }
    }
    i32::from(!damage.is_empty())
}

/// Decodes a manifest: each record's edit, the live state it comes to, and where decoding
/// stops (and whether a valid record follows: damage in the middle).
fn inspect_manifest(path: &Path, json: bool) -> i32 {
    use strata_format::manifest::{IntentChange, decode_record};
    let Some(bytes) = read_reporting(path) else { return 1 };
    let mut state = strata_node::lsm::manifest::ManifestState::default();
    let mut records = Vec::new();
    let (mut offset, mut seq) = (0usize, 1u64);
    let mut stop = String::from("end of file");
    while offset < bytes.len() {
        match decode_record(&bytes[offset..], offset as u64) {
            Ok((record_seq, edit, len)) if record_seq == seq => {
                records.push(serde_json::json!({
                    "offset": offset, "seq": record_seq, "snapshot": edit.snapshot,
                    "added": edit.added.iter().map(|t| serde_json::json!({ "table": t.table_id, "window": t.window, "level": t.level, "entries": t.entry_count })).collect::<Vec<_>>(),
                    "removed": edit.removed, "windows_settled": edit.windows_settled,
                    "cold_windows": edit.cold_windows.iter().map(|c| serde_json::json!({ "window": c.window, "generation": c.generation, "epoch": c.epoch, "disks": c.disks, "parts": c.parts, "blocks": c.blocks })).collect::<Vec<_>>(),
                    "cold_removed": edit.cold_removed,
                    "intent": match edit.intent { IntentChange::Unchanged => serde_json::Value::Null, IntentChange::Set(i) => serde_json::json!({ "window": i.window, "generation": i.generation }), IntentChange::Cleared => serde_json::json!("cleared") },
                    "range_tombstones": edit.range_tombstones.len(),
                }));
                state.apply(&edit);
                offset += len as usize;
                seq += 1;
            }
            Ok((record_seq, _, _)) => {
                stop = format!("record {record_seq} at offset {offset} where {seq} belongs");
                break;
            }
            Err(e) => {
                stop = format!("offset {offset}: {e}");
                break;
            }
        }
    }
    let mut valid_after = None;
    let mut at = offset + BLOCK_SIZE;
    while at < bytes.len() {
        if decode_record(&bytes[at..], at as u64).is_ok() {
            valid_after = Some(at);
            break;
        }
        at += BLOCK_SIZE;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "file": path, "records": records, "end": stop, "valid_record_after_end": valid_after,
            "live_tables": state.tables.len(), "cold_windows": state.cold_windows.len(), "sink_intent": state.sink_intent.map(|i| i.window) })
        );
    } else {
        println!("{}: {} records; decoding stopped at {stop}", path.display(), records.len());
        println!(
            "live: {} tables, {} settled windows, {} sunk windows, sink intent {:?}, wal replay from segment {}",
            state.tables.len(),
            state.windows_settled.len(),
            state.cold_windows.len(),
            state.sink_intent.map(|i| (i.window, i.generation)),
            state.wal_replay_from_seq
        );
        if let Some(at) = valid_after {
            println!("DAMAGE: a valid record follows at offset {at}: the manifest is damaged in the middle");
        }
    }
    i32::from(valid_after.is_some())
}
