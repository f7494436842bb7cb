//! `tessera completions SHELL`: a shell completion script, generated from the argument types.

use clap::CommandFactory;

use crate::cli::{Cli, CliError};

/// Arguments of `tessera completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera completions bash > /usr/share/bash-completion/completions/tessera
  tessera completions zsh > /usr/share/zsh/vendor-completions/_tessera
  tessera completions fish > ~/.config/fish/completions/tessera.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs `tessera completions`: the script goes to stdout.
pub fn run(args: CompletionsArgs) -> Result<(), CliError> {
    let mut command = Cli::command();
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(())
}
