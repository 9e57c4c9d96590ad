//! Where the worker threads run: the fastest cores of a heterogeneous CPU (big.LITTLE, P + E
//! cores), found from `/sys/devices/system/cpu/cpu*/cpu_capacity` (Arm's relative capacity) or
//! else `cpufreq/cpuinfo_max_freq`; on a CPU whose cores are all alike the OS places threads.
//! An explicit list ([`crate::EngineConfig::cpus`], the CLI's `--cpu-mask`) overrides both.
//!
//! Pinning uses `sched_setaffinity` on Linux and Android; elsewhere (iOS, macOS: no affinity
//! API) it is a no-op that reports `false`.

use std::path::Path;

/// One core as the OS describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Core {
    /// The CPU number (`cpuN`).
    pub id: usize,
    /// Relative speed: `cpu_capacity` (0–1024) or the maximum frequency in kHz; 0 when unknown.
    pub capacity: u64,
}

/// The online cores of this machine with their capacity (empty where `/sys` does not tell).
pub fn cores() -> Vec<Core> {
    cores_in(Path::new("/sys/devices/system/cpu"))
}

/// [`cores`] read from a `/sys/devices/system/cpu`-shaped directory (tests use a fake one).
pub fn cores_in(root: &Path) -> Vec<Core> {
    let Ok(dir) = std::fs::read_dir(root) else { return Vec::new() };
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let mut out: Vec<Core> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id: usize = name.strip_prefix("cpu")?.parse().ok()?;
            if read(e.path().join("online")) == Some(0) {
                return None;
            }
            let capacity = read(e.path().join("cpu_capacity"))
                .or_else(|| read(e.path().join("cpufreq/cpuinfo_max_freq")))
                .unwrap_or(0);
            Some(Core { id, capacity })
        })
        .collect();
    out.sort_by_key(|c| c.id);
    out
}

/// The cores `threads` workers should be pinned to: the `threads` fastest when the cores
/// differ in capacity; `None` when they are all alike (or unknown), leaving placement to the OS.
pub fn fastest(cores: &[Core], threads: usize) -> Option<Vec<usize>> {
    let max = cores.iter().map(|c| c.capacity).max()?;
    let min = cores.iter().map(|c| c.capacity).min()?;
    if max == 0 || max == min {
        return None;
    }
    let mut by_speed = cores.to_vec();
    by_speed.sort_by(|a, b| b.capacity.cmp(&a.capacity).then(a.id.cmp(&b.id)));
    let mut ids: Vec<usize> = by_speed.iter().take(threads.max(1)).map(|c| c.id).collect();
    ids.sort_unstable();
    Some(ids)
}

/// Parses a CPU list: `0-3,6` (Linux's cpulist syntax) or a hex mask `0x3` / `3`-style
/// llama.cpp `--cpu-mask` when it starts with `0x`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let mut out = Vec::new();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let mask = u128::from_str_radix(hex, 16).map_err(|e| format!("bad CPU mask {s:?}: {e}"))?;
        out.extend((0..128).filter(|i| mask >> i & 1 == 1));
    } else {
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: usize = a.trim().parse().map_err(|_| format!("bad CPU list {s:?}"))?;
            let b: usize = b.trim().parse().map_err(|_| format!("bad CPU list {s:?}"))?;
            if a > b || b >= 1024 {
                return Err(format!("bad CPU range {part:?}"));
            }
            out.extend(a..=b);
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(format!("CPU list {s:?} names no CPU"));
    }
    Ok(out)
}

/// Pins the calling thread to `cpu`; `false` when the OS refused or has no affinity API.
pub fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        // SAFETY: `set` is a plain bit set initialised by CPU_ZERO; sched_setaffinity reads
        // `size_of::<cpu_set_t>()` bytes of it; pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = cpu;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_masks_parse() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("0x5").unwrap(), vec![0, 2]);
        assert_eq!(parse_cpu_list("2").unwrap(), vec![2]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("0x0").is_err());
    }

    #[test]
    fn fastest_cores_of_a_big_little_cpu() {
        let dir = std::env::temp_dir().join(format!("tailor-affinity-{}", std::process::id()));
        for (i, cap) in [(0, 446), (1, 446), (2, 446), (3, 446), (4, 1024), (5, 1024)] {
            let d = dir.join(format!("cpu{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpu_capacity"), format!("{cap}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.join("cpufreq")).unwrap(); // not a core
        let cores = cores_in(&dir);
        assert_eq!(cores.len(), 6);
        assert_eq!(fastest(&cores, 2), Some(vec![4, 5]));
        assert_eq!(fastest(&cores, 3), Some(vec![0, 4, 5]));
        let same = vec![Core { id: 0, capacity: 1024 }, Core { id: 1, capacity: 1024 }];
        assert_eq!(fastest(&same, 2), None, "symmetric cores are left to the OS");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pinning_this_thread_to_an_allowed_cpu_works_on_linux() {
        let t = std::thread::spawn(|| pin_current_thread(0));
        let ok = t.join().unwrap();
        assert_eq!(ok, cfg!(any(target_os = "linux", target_os = "android")));
    }
}
