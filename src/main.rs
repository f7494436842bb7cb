//! The tessera binary: parses arguments and calls into the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tessera::cli::run(tessera::cli::Cli::parse())
}
