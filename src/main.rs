use std::process::ExitCode;

use llmx::cli::{self, Outcome};

fn main() -> ExitCode {
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

/// The reader went away (`llmx ... | head`): stop quietly, like other Unix tools.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
