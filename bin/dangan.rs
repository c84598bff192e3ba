//! The `dangan` command line: parses arguments, calls the library, prints.

use anyhow::Result;
use clap::{Parser, Subcommand};

use dangan::bench::{self, CodecBenchOptions};
use dangan::manifest::CodingParams;

#[derive(Parser)]
#[command(
    name = "dangan",
    version,
    about = "Dangan: a distributed document store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Each codec stage alone on one core, then whole encode and decode.
    Codec {
        /// Document size in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: usize,
        /// Repetitions per figure (the median is shown).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Data shards per stripe.
        #[arg(long, default_value_t = 4)]
        k: u16,
        /// Parity shards per stripe.
        #[arg(long, default_value_t = 2)]
        m: u16,
        /// Target shard size in KiB.
        #[arg(long, default_value_t = 1024)]
        shard_kib: u64,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Codec {
            size_mib,
            reps,
            k,
            m,
            shard_kib,
        }) => {
            let defaults = CodingParams::default();
            let params = CodingParams::with_shard_len(k, m, defaults.segment_size, shard_kib << 10);
            let report = bench::codec(CodecBenchOptions {
                size: size_mib << 20,
                repetitions: reps,
                params,
            })?;
            println!("{report}");
        }
    }
    Ok(())
}
