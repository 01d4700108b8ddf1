//! The `tollgate` binary: a thin command line (`run`, `dev`, `check`) over the library crates, the
//! wiring of store, cache, proxy and APIs, signals (SIGHUP reloads, SIGTERM drains), logging and
//! graceful shutdown.

mod dev;
mod reload;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "API-key gateway for parent-child key trees"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Start beside a running Tollgate on the same listen addresses (a same-host rolling
        /// restart: then SIGTERM the old one) instead of refusing to start when they are in use.
        #[arg(long)]
        takeover: bool,
    },
    /// Run with the embedded store in a temporary directory, an echo upstream for every route, and a
    /// demo parent and child whose keys are printed.
    Dev {
        /// Routes and listeners to use (default: the built-in demo routes).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config: exit 0, or print every problem with its TOML path and exit 1.
    Check {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config, takeover } => {
            match tollgate_config::load(&config) {
                Ok(cfg) => {
                    // After the config is read: it says how to log.
                    run::init_logging(cfg.logging.format);
                    let ports = if takeover {
                        run::Ports::TakeOver
                    } else {
                        run::Ports::Own
                    };
                    run::exit(run::run(cfg, config, ports))
                }
                Err(errors) => {
                    eprintln!(
                        "{}: {} problem(s):\n{errors}",
                        config.display(),
                        errors.0.len()
                    );
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Dev { config } => {
            run::init_logging(tollgate_config::LogFormat::Text);
            run::exit(dev::dev(config))
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match tollgate_config::load(path) {
        Ok(cfg) => {
            for w in tollgate_config::warnings(&cfg) {
                eprintln!("warning: {w}");
            }
            println!("{}: OK ({} routes)", path.display(), cfg.routes.len());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!(
                "{}: {} problem(s):\n{errors}",
                path.display(),
                errors.0.len()
            );
            ExitCode::from(1)
        }
    }
}
