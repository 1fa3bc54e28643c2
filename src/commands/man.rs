//! `git loop man`: the manual page, generated from the same definitions as `--help`.
//!
//! `git loop --help` is turned by git into `git help loop`, which shows the `git-loop(1)` man
//! page. `man` looks for pages beside each `PATH` entry (`<dir>/../share/man`), so
//! `git loop man --install` puts the page next to the installed binary.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, Ctx};

/// Print git-loop's manual page (roff), or install it where `man` finds it.
///
/// With --install the page is written to `<directory of git-loop>/../share/man/man1/git-loop.1`,
/// which man(1) searches for every directory on PATH, so that `git loop --help` shows it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the page beside the installed binary instead of printing it
    #[arg(long)]
    install: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let page = render();
    if !args.install {
        ctx.out.write_all(page.as_bytes())?;
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the git-loop binary")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let bin_dir = exe
        .parent()
        .context("the git-loop binary has no directory")?;
    let path: PathBuf = bin_dir.join("../share/man/man1/git-loop.1");
    let dir = path.parent().context("man directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    let shown = path.canonicalize().unwrap_or(path);
    writeln!(ctx.out, "{}", shown.display())?;
    Ok(())
}

/// The whole manual page.
pub fn render() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = String::new();
    out.push_str(&format!(
        ".TH GIT-LOOP 1 \"\" \"git-loop {}\" \"Git Manual\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(".SH NAME\n");
    out.push_str(&format!(
        "git-loop \\- {}\n",
        escape(&cmd.get_about().map(|a| a.to_string()).unwrap_or_default())
    ));
    out.push_str(".SH SYNOPSIS\n.B git loop\n[\\-v] [\\-C DIR] COMMAND [ARGS]\n");
    out.push_str(".SH DESCRIPTION\n");
    if let Some(long) = cmd.get_long_about() {
        paragraphs(&mut out, &long.to_string());
    }
    out.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands_mut() {
        command(&mut out, sub);
    }
    out.push_str(".SH GLOBAL OPTIONS\n");
    options(&mut out, &cmd, true);
    if let Some(after) = cmd.get_after_long_help() {
        for section in after.to_string().split("\n\n") {
            let mut lines = section.lines();
            let title = lines.next().unwrap_or_default().trim_end_matches(':');
            out.push_str(&format!(".SH {}\n.nf\n", escape(&title.to_uppercase())));
            for line in lines {
                out.push_str(&escape(line));
                out.push('\n');
            }
            out.push_str(".fi\n");
        }
    }
    out.push_str(".SH SEE ALSO\nThe contract of commands, states, refs and policy keys: docs/SPEC.md in the git-loop repository.\n");
    out
}

fn command(out: &mut String, cmd: &mut clap::Command) {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let usage = cmd.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage:").trim();
    out.push_str(&format!(".SS {}\n", escape(usage)));
    let text = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    paragraphs(out, &text);
    options(out, cmd, false);
    for sub in cmd.get_subcommands_mut() {
        command(out, sub);
    }
}

fn options(out: &mut String, cmd: &clap::Command, global: bool) {
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() || arg.is_global_set() != global {
            continue;
        }
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let value = if arg.get_action().takes_values() {
            arg.get_value_names()
                .and_then(|v| v.first())
                .map(|v| format!(" {v}"))
                .unwrap_or_else(|| format!(" {}", id.to_uppercase()))
        } else {
            String::new()
        };
        let name = match (arg.get_short(), arg.get_long()) {
            (Some(s), Some(l)) => format!("\\-{s}, \\-\\-{l}{value}"),
            (Some(s), None) => format!("\\-{s}{value}"),
            (None, Some(l)) => format!("\\-\\-{l}{value}"),
            (None, None) => escape(value.trim()),
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        out.push_str(&format!(".TP\n.B {name}\n{}\n", escape(&help)));
    }
}

fn paragraphs(out: &mut String, text: &str) {
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str(".PP\n");
        }
        // An indented block (a table in a command's help) keeps its lines.
        if para.lines().all(|l| l.starts_with("  ")) {
            out.push_str(".nf\n");
            for line in para.lines() {
                out.push_str(&escape(line));
                out.push('\n');
            }
            out.push_str(".fi\n");
            continue;
        }
        out.push_str(&escape(&para.replace('\n', " ")));
        out.push('\n');
    }
}

/// Text made safe for roff: backslashes escaped, no line starting with a control character.
fn escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
