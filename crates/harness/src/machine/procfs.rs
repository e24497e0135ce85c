//! How much memory this process holds, from `/proc`: physical memory
//! ([`meminfo`]), the resident set ([`vm_rss`]) and its high-water mark
//! ([`vm_hwm`], reset with [`reset_hwm`]) for peak RSS.

/// A field of /proc/meminfo in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_kib(&s, field)
}

fn proc_kib(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident-set high-water mark of this process (VmHWM), bytes.
pub fn vm_hwm() -> Option<u64> {
    proc_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// Resident set of this process now (VmRSS), bytes.
pub fn vm_rss() -> Option<u64> {
    proc_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS")
}

/// Resets VmHWM to the current RSS (writes "5" to /proc/self/clear_refs).
/// Returns false where the kernel does not allow it.
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let s = "Name:\tx\nVmHWM:\t  1024 kB\nVmRSS:\t 512 kB\n";
        assert_eq!(proc_kib(s, "VmHWM"), Some(1 << 20));
        assert_eq!(proc_kib(s, "VmRSS"), Some(512 << 10));
        assert_eq!(proc_kib(s, "Vm"), None);
    }
}
