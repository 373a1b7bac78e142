//! The `paygate` command line: parses arguments, calls into the library, maps errors to exit
//! codes. Nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: per-thread free lists for the many short-lived allocations of a request, without
/// glibc's arena consolidation on the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "paygate", version, about = "Payment routing gateway")]
struct Cli {
    /// The routes file.
    #[arg(
        long,
        global = true,
        env = "PAYGATE_CONFIG",
        default_value = "routes.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate a routes file: exit 0 with a summary, or print every problem and exit 1.
    Check {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
    /// Run the PSP simulator (protocol paygate-v1).
    MockPsp(Box<paygate::sim::MockPspArgs>),
    /// Run the real router against simulated channels on a virtual clock, beside baselines.
    Simulate(paygate::simulate::SimulateArgs),
    /// Write the daily operations report from the journal.
    Report(paygate::report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of main: dropping it writes out the lines still queued.
    let _log_writer = paygate::logging::init();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check { path } => check(&path.unwrap_or(cli.config)),
        Command::Serve => run(async move { paygate::server::serve(&cli.config).await }),
        Command::MockPsp(args) => run(paygate::sim::run(*args)),
        Command::Report(args) => match paygate::report::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("paygate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Simulate(args) => match paygate::simulate::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("paygate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match paygate::config::Config::load(path) {
        Ok(config) => {
            println!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: {} problem(s)", path.display(), e.problems.len());
            ExitCode::FAILURE
        }
    }
}

fn run<E: std::fmt::Display>(task: impl Future<Output = Result<(), E>>) -> ExitCode {
    // One worker per core the process may run on (cgroup and affinity limits included), not
    // a guess; TOKIO_WORKER_THREADS still overrides it.
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("paygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paygate: {e}");
            ExitCode::FAILURE
        }
    }
}
