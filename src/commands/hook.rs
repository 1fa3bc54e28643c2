//! `git loop hook NAME [ARGS]`: what the installed shims call.

use std::io::Read;

use anyhow::Result;

use crate::cli::Ctx;
use crate::hooks;
use crate::policy::Policy;

/// Run a hook's work (called by the shims that `git loop hooks install` writes).
///
/// post-commit never fails the commit: its errors are one line on stderr. pre-push refuses
/// (exit 1) only for the policy reasons of SPEC §11; trouble inside the hook is a warning.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// post-commit or pre-push
    name: String,
    /// What git passed to the hook
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    match args.name.as_str() {
        "post-commit" => {
            match ctx
                .repo()
                .and_then(|repo| hooks::post_commit(&repo, &ctx.cwd))
            {
                Ok(done) => {
                    for (id, kind) in done.filed {
                        eprintln!("git-loop: filed task {} ({kind})", &id[..7]);
                    }
                }
                Err(e) => eprintln!("git-loop post-commit: {}", one_line(&e)),
            }
            Ok(())
        }
        "pre-push" => {
            let mut refs = String::new();
            let _ = std::io::stdin().read_to_string(&mut refs);
            let checked = ctx.repo().and_then(|repo| {
                let Some(dir) = repo.workdir() else {
                    return Ok(Vec::new());
                };
                match Policy::load(dir) {
                    Ok(Some(policy)) => hooks::pre_push(&repo, &policy, &refs),
                    Ok(None) => Ok(Vec::new()),
                    Err(e) => {
                        eprintln!("git-loop pre-push: warning: {}", one_line(&e));
                        Ok(Vec::new())
                    }
                }
            });
            match checked {
                Ok(refusals) if refusals.is_empty() => Ok(()),
                Ok(refusals) => {
                    let mut message = String::from("git-loop refuses this push:");
                    for why in &refusals {
                        message.push_str("\n  - ");
                        message.push_str(why);
                    }
                    Err(crate::error::generic(message)
                        .with_hint(
                            "file a task and let `git loop promote` bring it in; \
                             `git push --no-verify` bypasses git-loop's checks",
                        )
                        .into())
                }
                Err(e) => {
                    eprintln!("git-loop pre-push: warning: {}", one_line(&e));
                    Ok(())
                }
            }
        }
        other => Err(crate::error::usage(format!(
            "unknown hook {other:?}; git-loop has post-commit and pre-push"
        ))
        .into()),
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}
