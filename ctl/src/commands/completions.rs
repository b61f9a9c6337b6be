//! `dwbase completions SHELL` (clap_complete) and `dwbase man` (clap_mangen): generated from
//! the same clap definitions the programs parse with, so they cannot drift from the flags.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// `dwbase completions`
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = "\
Install, for example:
  bash  dwbase completions bash > ~/.local/share/bash-completion/completions/dwbase
  zsh   dwbase completions zsh > ~/.zfunc/_dwbase   (with fpath+=~/.zfunc before compinit)
  fish  dwbase completions fish > ~/.config/fish/completions/dwbase.fish")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for (on stdout).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// `dwbase man`
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Write every page (dwbase.1, one per subcommand such as dwbase-deploy-devnet.1, plus
    /// dwbase-node.1 and dwbase-supervisor.1) into this folder; without it, print dwbase.1 on
    /// stdout (`dwbase man | man -l -`).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Writes the completion script.
pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "dwbase", &mut buf);
    crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)))
}

/// Writes the man pages.
pub fn man(args: &ManArgs) -> Result<()> {
    let Some(dir) = &args.out_dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut buf).context("rendering dwbase.1")?;
        return crate::output::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)));
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let programs = [
        Cli::command(),
        dwbase_node::cli::NodeArgs::command(),
        dwbase_supervisor::cli::SupervisorArgs::command(),
    ];
    for cmd in programs {
        let name = cmd.get_name().to_owned();
        clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("writing the man pages of {name} into {}", dir.display()))?;
    }
    let mut pages: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".1"))
        .collect();
    pages.sort();
    crate::outln!("wrote {} man pages into {}", pages.len(), dir.display())?;
    for p in &pages {
        crate::outln!("  {p}")?;
    }
    Ok(())
}
