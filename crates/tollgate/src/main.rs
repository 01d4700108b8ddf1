//! The `tollgate` binary: a thin command line (`run`, `dev`, `check`) over the library crates, the
//! wiring of store, cache, proxy and APIs, signals (SIGHUP reloads, SIGTERM drains), logging and
//! graceful shutdown.

mod dev;
mod reload;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_config::{ConfigError, ConfigErrors};

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
    /// Validate a config: exit 0, or print every problem with its TOML path and exit 1. The
    /// `[proxy.tls]` files are loaded as `run` loads them; an unset `upstream_auth` variable is
    /// only a warning (the secret may exist only where the gateway runs).
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
            match load_for_run(&config) {
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
                // The same report and exit status as `check` and `dev` give for that file.
                Err(errors) => bad_config(&config, &errors),
            }
        }
        Cmd::Dev { config } => {
            run::init_logging(tollgate_config::LogFormat::Text);
            run::exit(dev::dev(config))
        }
    }
}

/// The config as `run` needs it: valid, and its `[proxy.tls]` files usable.
fn load_for_run(path: &std::path::Path) -> Result<tollgate_config::Config, ConfigErrors> {
    let cfg = tollgate_config::load(path)?;
    let tls = tls_problems(&cfg);
    if tls.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(tls))
    }
}

/// Why `run` would refuse the `[proxy.tls]` files, each under its TOML path. The proxy's own
/// loading code reads them (`tollgate_proxy::tls::problems`), so `check` and `run` agree.
fn tls_problems(cfg: &tollgate_config::Config) -> Vec<ConfigError> {
    let Some(tls) = &cfg.proxy.tls else {
        return Vec::new();
    };
    tollgate_proxy::tls::problems(&tls.cert, &tls.key)
        .into_iter()
        .map(|e| ConfigError::new(e.toml_path(), e.to_string(), e.fix()))
        .collect()
}

fn check(path: &std::path::Path) -> ExitCode {
    match load_for_run(path) {
        Ok(cfg) => {
            for w in tollgate_config::warnings(&cfg) {
                stderr(format_args!("warning: {w}"));
            }
            stdout(format_args!(
                "{}: OK ({} routes)",
                path.display(),
                cfg.routes.len()
            ));
            ExitCode::SUCCESS
        }
        Err(errors) => bad_config(path, &errors),
    }
}

/// Every problem of a config that failed to load, and exit status 1 (`check`, `run` and `dev`).
fn bad_config(path: &std::path::Path, errors: &ConfigErrors) -> ExitCode {
    stderr(format_args!(
        "{}: {} problem(s):\n{errors}",
        path.display(),
        errors.0.len()
    ));
    ExitCode::FAILURE
}

/// One line on stdout. A reader that went away (`tollgate check | head -1`, a closed terminal)
/// is not an error of ours: `println!` would panic on the EPIPE (exit 134 with `panic =
/// "abort"`), so write errors are ignored and the exit status stays the command's own.
pub(crate) fn stdout(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// One line on stderr, as [`stdout`] (`eprintln!` panics on a closed stderr too).
pub(crate) fn stderr(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
