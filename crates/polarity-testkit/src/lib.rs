//! What polarity's hostile-input tests share (a dev-dependency, never a runtime one).
//!
//! A hostile-input test takes a real asset from `../shared`, breaks it in many ways and asserts that
//! the loader answers each broken copy with a typed error (or loads it correctly, where the change is
//! harmless): never a panic, a hang or an allocation sized by a corrupted count. The pieces:
//!
//! - [`CappedAllocator`]: a global allocator that refuses to hold more than a set number of bytes, so a
//!   loader that trusts a count from a file aborts the test binary instead of swapping the machine;
//! - [`Mutator`]: seeded, reproducible mutations (truncations, bit flips, overwritten integers);
//! - [`no_panic`] and [`within`]: run one attempt, turning a panic or a hang into a test failure that
//!   names the input;
//! - [`fuzz_for`]: a mutation loop bounded in time and in iterations, so the suite stays fast;
//! - [`make_fifo`]: a named pipe where a regular file is expected.
//!
//! ```
//! use polarity_testkit::Mutator;
//!
//! let mut mutator = Mutator::new(7);
//! let original = b"GGUF\x03\x00\x00\x00".to_vec();
//! let flipped = mutator.flip_bits(&original, 1);
//! assert_eq!(flipped.len(), original.len());
//! assert_ne!(flipped, original);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A global allocator over the system one that refuses any allocation taking the live total above a
/// cap: the allocation fails, Rust reports `memory allocation of N bytes failed` and aborts, and the
/// test binary fails. Install it in a hostile-input test binary:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: polarity_testkit::CappedAllocator = polarity_testkit::CappedAllocator::new(4 << 30);
/// ```
pub struct CappedAllocator {
    cap: usize,
    live: AtomicUsize,
}

impl CappedAllocator {
    /// An allocator that holds at most `cap` bytes at once.
    pub const fn new(cap: usize) -> Self {
        Self { cap, live: AtomicUsize::new(0) }
    }

    /// Bytes currently allocated through it.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn reserve(&self, size: usize) -> bool {
        let mut live = self.live.load(Ordering::Relaxed);
        loop {
            let Some(next) = live.checked_add(size).filter(|next| *next <= self.cap) else {
                return false;
            };
            match self.live.compare_exchange_weak(live, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => live = current,
            }
        }
    }

    fn release(&self, size: usize) {
        self.live.fetch_sub(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's layout; the counter only decides whether
// to forward, and is kept equal to the bytes `System` holds for us.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            self.release(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            self.release(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        self.release(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !self.reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() {
            if new_size > old {
                self.release(new_size - old);
            }
        } else if new_size < old {
            self.release(old - new_size);
        }
        new
    }
}

/// Seeded mutations of a file's bytes: the same seed gives the same broken copies on every machine, so a
/// failure names a seed and an iteration that reproduce it.
#[derive(Clone, Debug)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator seeded with `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self { state: seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    /// The next pseudo-random number (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }

    /// `bytes` with `count` single bits flipped at random positions inside `range` of the file (the whole
    /// file when `range` is empty or past its end).
    pub fn flip_bits_in(&mut self, bytes: &[u8], count: usize, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if out.is_empty() {
            return out;
        }
        let range = if range.start < range.end && range.end <= out.len() { range } else { 0..out.len() };
        for _ in 0..count {
            let at = range.start + self.below(range.end - range.start);
            out[at] ^= 1 << self.below(8);
        }
        out
    }

    /// `bytes` with `count` single bits flipped anywhere.
    pub fn flip_bits(&mut self, bytes: &[u8], count: usize) -> Vec<u8> {
        self.flip_bits_in(bytes, count, 0..bytes.len())
    }

    /// `bytes` cut at a random length (shorter than the original).
    pub fn truncate(&mut self, bytes: &[u8]) -> Vec<u8> {
        bytes[..self.below(bytes.len())].to_vec()
    }

    /// An integer that breaks counts and sizes: 0, 1, small, the largest of each width, or random.
    pub fn hostile_integer(&mut self) -> u64 {
        const VALUES: [u64; 10] = [0, 1, 2, 255, 65_535, 1 << 31, u32::MAX as u64, 1 << 40, i64::MAX as u64, u64::MAX];
        if self.below(4) == 0 { self.next_u64() } else { VALUES[self.below(VALUES.len())] }
    }

    /// `bytes` with the little-endian `u64` at `offset` replaced by `value` (unchanged if it does not fit).
    pub fn overwrite_u64(bytes: &[u8], offset: usize, value: u64) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if let Some(slot) = out.get_mut(offset..offset + 8) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// `bytes` with the little-endian `u32` at `offset` replaced by `value` (unchanged if it does not fit).
    pub fn overwrite_u32(bytes: &[u8], offset: usize, value: u32) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if let Some(slot) = out.get_mut(offset..offset + 4) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out
    }
}

/// Runs `attempt`; a panic becomes a test failure naming `input` and the panic's message.
pub fn no_panic<T>(input: &str, attempt: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(attempt)) {
        Ok(value) => value,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            panic!("{input}: the loader panicked instead of returning an error: {message}")
        }
    }
}

/// Runs `attempt` on another thread and waits at most `limit`; a hang or a panic becomes a test failure
/// naming `input`. (A hung thread is left behind: the test fails either way.)
pub fn within<T: Send + 'static>(input: &str, limit: Duration, attempt: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    let label = input.to_string();
    std::thread::spawn(move || {
        let _ = sender.send(no_panic(&label, attempt));
    });
    match receiver.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{input}: still running after {limit:?} (a hang)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{input}: the attempt panicked"),
    }
}

/// Runs `attempt(iteration)` for at most `budget` of wall time and `max_iterations` iterations, and
/// returns how many ran. Each attempt runs under [`no_panic`], labelled with `name` and the iteration.
pub fn fuzz_for(name: &str, budget: Duration, max_iterations: usize, mut attempt: impl FnMut(usize)) -> usize {
    let started = Instant::now();
    let mut iterations = 0;
    while iterations < max_iterations && started.elapsed() < budget {
        no_panic(&format!("{name}, iteration {iterations}"), || attempt(iterations));
        iterations += 1;
    }
    iterations
}

/// Asserts that `result` is an error and that its message, with its causes, mentions every one of `needles`;
/// returns that message (the error's own line, then each cause it does not already say, after `: `). For "a
/// typed error that names the file, field or value".
pub fn expect_error<T: Debug, E: std::error::Error>(input: &str, result: Result<T, E>, needles: &[&str]) -> String {
    match result {
        Ok(value) => panic!("{input}: accepted, expected an error; got {value:?}"),
        Err(error) => {
            let mut message = error.to_string();
            let mut cause = error.source();
            while let Some(source) = cause {
                let text = source.to_string();
                if !message.contains(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                cause = source.source();
            }
            for needle in needles {
                assert!(message.contains(needle), "{input}: the error does not mention {needle:?}: {message}");
            }
            message
        }
    }
}

/// Creates a named pipe at `path` (a FIFO, where a loader expects a regular file: reading it blocks until
/// a writer opens it).
pub fn make_fifo(path: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("mkfifo").arg(path).status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("mkfifo {} failed", path.display()))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_reproducible() {
        let bytes: Vec<u8> = (0..64).collect();
        let a = Mutator::new(3).flip_bits(&bytes, 4);
        let b = Mutator::new(3).flip_bits(&bytes, 4);
        assert_eq!(a, b);
        assert_ne!(a, bytes);
        assert!(Mutator::new(3).truncate(&bytes).len() < bytes.len());
        assert_eq!(&Mutator::overwrite_u32(&bytes, 0, 0xFFFF_FFFF)[..4], &[0xFF; 4]);
        assert_eq!(Mutator::overwrite_u64(&bytes, 60, 1), bytes, "a value that does not fit leaves the bytes alone");
    }

    #[test]
    fn a_panic_names_the_input() {
        let caught = catch_unwind(|| no_panic("file.gguf flipped", || panic!("index out of bounds")));
        let message = caught.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("file.gguf flipped") && message.contains("index out of bounds"), "{message}");
    }

    #[test]
    fn a_hang_is_a_failure() {
        let caught =
            catch_unwind(|| within("fifo", Duration::from_millis(50), || std::thread::sleep(Duration::from_secs(5))));
        assert!(caught.is_err());
        assert_eq!(within("quick", Duration::from_secs(5), || 4), 4);
    }

    #[test]
    fn the_cap_refuses_and_releases() {
        let allocator = CappedAllocator::new(1024);
        let layout = Layout::from_size_align(800, 8).unwrap();
        // SAFETY: the layout is non-zero and each pointer is freed with it once.
        unsafe {
            let first = allocator.alloc(layout);
            assert!(!first.is_null());
            assert!(allocator.alloc(layout).is_null(), "1600 bytes exceed the cap of 1024");
            allocator.dealloc(first, layout);
            assert_eq!(allocator.live(), 0);
            let again = allocator.alloc(layout);
            assert!(!again.is_null());
            let grown = allocator.realloc(again, layout, 2000);
            assert!(grown.is_null(), "growing past the cap fails and keeps the old block");
            allocator.dealloc(again, layout);
        }
        assert_eq!(allocator.live(), 0);
    }

    #[test]
    fn fuzz_loops_stop_at_their_bounds() {
        assert_eq!(fuzz_for("count", Duration::from_secs(60), 5, |_| {}), 5);
        let ran =
            fuzz_for("time", Duration::from_millis(20), usize::MAX, |_| std::thread::sleep(Duration::from_millis(5)));
        assert!(ran < 20, "{ran}");
    }
}
