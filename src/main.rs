//! The `voucherd` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc malloc: the claim path's small allocations (request
/// bodies, JSON strings, response buffers) cost about a tenth of the daemon's CPU
/// under glibc at the release burst (BENCHMARKS.md, "Durable HTTP claims").
#[global_allocator]
static GLOBAL_ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "voucherd",
    version,
    about = "Consumer-voucher dispenser daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Path to the TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect a write-ahead log, read-only (see docs/operations.md).
    Wal {
        #[command(subcommand)]
        command: voucherd::tools::wal::WalCommand,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve { config } => voucherd::daemon::serve(&config),
        Command::Wal { command } => voucherd::tools::wal::run(command),
    };
    std::process::exit(code);
}
