use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;

use llmx::cli::{self, Outcome};

fn main() -> ExitCode {
    keep_freed_memory();
    spin_briefly_between_candle_ops();
    match cli::main() {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("llmx: error: {}", llmx::batch::error_chain(error.as_ref()));
            ExitCode::from(2)
        }
    }
}

/// The system allocator, asking for transparent huge pages on large blocks (weights and
/// activations): one page fault per 2 MiB instead of per 4 KiB when they are first written,
/// which is most of loading a model, and fewer TLB misses in the matrix products.
struct HugePageAllocator;

const HUGE_PAGE: usize = 2 << 20;

// SAFETY: every call is forwarded to `System`; madvise only advises on memory we own.
unsafe impl GlobalAlloc for HugePageAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        advise_huge_pages(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        advise_huge_pages(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ptr = unsafe { System.realloc(ptr, layout, new_size) };
        advise_huge_pages(ptr, new_size);
        ptr
    }
}

#[global_allocator]
static ALLOCATOR: HugePageAllocator = HugePageAllocator;

fn advise_huge_pages(ptr: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if !ptr.is_null() && size >= 2 * HUGE_PAGE {
        // Only whole huge pages inside the block.
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside a block just handed out to us.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

/// Every forward pass allocates and frees activations of many megabytes. glibc returns
/// blocks that large to the kernel at once (mmap/munmap), so each pass faulted in fresh
/// zeroed pages: about a fifth of a batch job's CPU time went to the kernel. Keeping them in
/// the heap lets the next pass reuse them.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// candle runs large element-wise ops on a pool of its own beside rayon's, whose worker
/// spins 25k times after each op before it sleeps, taking a core from the matrix products
/// that run next on rayon's threads. A short spin measured 3-4% faster on 2 cores (T5 4
/// beams 4.45 -> 4.29 s, MiniLM embed 3.25 -> 3.15 s). A value the user sets is kept.
fn spin_briefly_between_candle_ops() {
    const KNOB: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(KNOB).is_none() {
        // Called before any other thread exists.
        std::env::set_var(KNOB, "1000");
    }
}

/// The reader went away (`llmx ... | head`): stop quietly, like other Unix tools.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
