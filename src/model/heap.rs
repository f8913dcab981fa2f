//! How the process's heap treats the CPU backend's tensors. A training step allocates and frees
//! hundreds of buffers of 0.1–30 MB (activations, gradients, padded copies). glibc's malloc
//! serves those above its threshold by `mmap` and hands the memory back on `free`, and trims
//! the top of its heaps back to the kernel whenever a few MB lie free there, so every step
//! faults the same pages in again and the kernel zeroes each one: about a quarter of a 32³
//! step's time on a 2-core machine. [`keep_freed_tensor_memory`] raises both thresholds once,
//! at start, so that freed buffers below 32 MB are reused.
//!
//! Invariants: only glibc's malloc is tuned (elsewhere this does nothing); buffers of 32 MB
//! and more (whole volumes) are still returned to the system when freed, and at most
//! [`TRIM_THRESHOLD_BYTES`] of free memory stays at the top of a heap.

/// Buffers from this size up are mapped on their own and returned when freed (glibc's largest
/// mmap threshold on 64-bit systems).
pub const MMAP_THRESHOLD_BYTES: i32 = 32 << 20;

/// Free memory at the top of a heap beyond this is returned to the system.
pub const TRIM_THRESHOLD_BYTES: i32 = 512 << 20;

/// Raise glibc's mmap and trim thresholds (see the module header); returns whether the
/// allocator took both.
pub fn keep_freed_tensor_memory() -> bool {
    tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune() -> bool {
    // SAFETY: `mallopt` only changes the allocator's parameters (under its own lock); both
    // values are within the ranges glibc documents and accepts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_both_thresholds() {
        assert!(super::keep_freed_tensor_memory());
    }
}
