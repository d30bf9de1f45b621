use std::process::ExitCode;

use llmx::cli::{self, Outcome};

fn main() -> ExitCode {
    keep_freed_memory();
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

/// The reader went away (`llmx ... | head`): stop quietly, like other Unix tools.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
