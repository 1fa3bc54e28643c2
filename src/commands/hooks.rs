//! `git loop hooks install|uninstall|status`

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::error::{Class, LoopError};
use crate::git::cli::Git;
use crate::hooks::{self, HookState};
use crate::output::json;

/// Manage git-loop's post-commit and pre-push hooks.
///
/// The shims go into the effective hooks directory (`git rev-parse --git-path hooks`, so
/// core.hooksPath and worktrees are respected; core.hooksPath is never rewritten). A hook that is
/// already there is kept and runs first; uninstall puts it back byte for byte. GIT_LOOP=0 makes
/// the shims do nothing but run the hooks they chain.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Install or update the shims, chaining any existing hook
    Install(InstallArgs),
    /// Remove the shims and restore the hooks that were there before
    Uninstall,
    /// Say for each hook: installed, outdated (with a diff), missing, or clobbered
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Install even when the hooks directory is outside the repository (a global core.hooksPath)
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct StatusJson {
    hook: &'static str,
    path: String,
    state: &'static str,
    chained: Option<String>,
    diff: Option<String>,
}

pub fn run(ctx: &mut Ctx<'_>, cmd: Command) -> Result<()> {
    let repo = ctx.repo()?;
    let git = Git::new(repo.require_workdir()?, false);
    let (dir, inside) = hooks::hooks_dir(&repo, &git)?;
    let bin = hooks::current_bin()?;
    match cmd {
        Command::Install(args) => {
            if !inside && !args.force {
                return Err(LoopError::new(
                    Class::Config,
                    format!(
                        "the hooks directory {} is outside this repository (core.hooksPath): \
                         installing there affects every repository that shares it",
                        dir.display()
                    ),
                )
                .with_hint("use --force if that is what you want")
                .into());
            }
            for line in hooks::install(&dir, &bin)? {
                writeln!(ctx.out, "{line}")?;
            }
        }
        Command::Uninstall => {
            for line in hooks::uninstall(&dir, &bin)? {
                writeln!(ctx.out, "{line}")?;
            }
        }
        Command::Status(args) => {
            let all = hooks::status(&dir, &bin);
            if args.json {
                let rows: Vec<StatusJson> = all
                    .iter()
                    .map(|s| StatusJson {
                        hook: s.name,
                        path: s.path.display().to_string(),
                        state: state_name(&s.state),
                        chained: s.chained.as_ref().map(|c| c.display().to_string()),
                        diff: match &s.state {
                            HookState::Outdated { diff } => Some(diff.clone()),
                            _ => None,
                        },
                    })
                    .collect();
                return json(ctx.out, &rows);
            }
            for s in &all {
                let chained = s
                    .chained
                    .as_ref()
                    .map(|c| format!(" (chains {})", c.display()))
                    .unwrap_or_default();
                match &s.state {
                    HookState::Installed => writeln!(ctx.out, "{}: installed{chained}", s.name)?,
                    HookState::Outdated { diff } => {
                        writeln!(
                            ctx.out,
                            "{}: outdated; `git loop hooks install` updates it{chained}",
                            s.name
                        )?;
                        write!(ctx.out, "{diff}")?;
                    }
                    HookState::Missing { foreign: true } => writeln!(
                        ctx.out,
                        "{}: missing; another hook is there, which install keeps and runs first",
                        s.name
                    )?,
                    HookState::Missing { foreign: false } => {
                        writeln!(ctx.out, "{}: missing", s.name)?
                    }
                    HookState::Clobbered => writeln!(
                        ctx.out,
                        "{}: clobbered by another tool; the hook git-loop had chained is still at {}",
                        s.name,
                        s.chained
                            .as_ref()
                            .map(|c| c.display().to_string())
                            .unwrap_or_default()
                    )?,
                }
            }
        }
    }
    Ok(())
}

pub fn state_name(state: &HookState) -> &'static str {
    match state {
        HookState::Installed => "installed",
        HookState::Outdated { .. } => "outdated",
        HookState::Missing { .. } => "missing",
        HookState::Clobbered => "clobbered",
    }
}
