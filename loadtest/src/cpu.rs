//! CPU time of this process and of a server's process tree, from `/proc`, so
//! every run can show whether the generator or the server used the cores.

use std::path::Path;

/// Clock ticks per second of `/proc/*/stat` (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
/// Bound on the process tree walked (the server, its threads' children).
const MAX_TREE_PROCESSES: usize = 64;

/// User + system CPU seconds of one process (all its threads), if readable.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

pub fn self_cpu_seconds() -> f64 {
    stat_cpu(Path::new("/proc/self/stat")).unwrap_or(0.0)
}

/// CPU seconds of a process and its descendants (e.g. a peer and its redis-server,
/// or its PostgreSQL postmaster and backends).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut total = 0.0;
    let mut pending = vec![pid];
    let mut seen = 0;
    while let Some(p) = pending.pop() {
        seen += 1;
        if seen > MAX_TREE_PROCESSES {
            break;
        }
        total += process_cpu_seconds(p).unwrap_or(0.0);
        pending.extend(children(p));
    }
    total
}

fn children(pid: u32) -> Vec<u32> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn stat_cpu(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; fields start after its ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 overall; utime 14 and stime 15 (1-based).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu() {
        let before = self_cpu_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(self_cpu_seconds() >= before);
        assert!(tree_cpu_seconds(std::process::id()) >= before);
    }
}
