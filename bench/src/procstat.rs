//! CPU time and resident memory of a process, from /proc (`self` or a pid).

/// CPU time (user + system) of `/proc/<entry>`, µs.
#[must_use]
pub fn cpu_us(entry: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{entry}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (the 12th and 13th after the name), in
    // clock ticks of 1/100 s.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) * 1_000_000 / 100
}

/// Resident set size of `/proc/<entry>`, bytes.
#[must_use]
pub fn rss_bytes(entry: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{entry}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
