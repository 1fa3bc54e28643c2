//! The command line: parsing, logging set-up, dispatch, and turning failures into exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::error;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `oracle`: the batch is finished)
  1  not finished, or a failure with no better class
  2  usage error: bad arguments, unknown or ambiguous id, refused input
  3  config-fatal: bad or missing policy, runtime file missing or untracked,
     program not found, not a repository, corrupt state
  4  transient: worth retrying (lost race, network, lock timeout)
  5  policy-terminal: gate failed, merge precondition, conflict, protected-policy change
  6  busy: another runner holds the lock, or another holder owns the lease
  7  breaker open: refused while quarantined

Environment:
  GIT_LOOP_LOG   log level for diagnostics on stderr (error, warn, info, debug, trace)";

/// Run coding agents unattended over a Git repository, and trust what comes out.
///
/// git-loop picks the next ready task from a backlog, runs a fresh agent on it in its own
/// worktree, judges the work with gates the agent cannot edit, and promotes it into the target
/// branch. All state lives in Git: refs under refs/loop/* and notes under refs/notes/loop.
#[derive(Debug, Parser)]
#[command(
    name = "git-loop",
    bin_name = "git loop",
    version,
    after_long_help = EXIT_CODES,
    after_help = "Exit codes and environment: `git loop help` or `git-loop --help`.",
)]
pub struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 900)]
    verbose: u8,

    /// Run as if started in DIR
    #[arg(short = 'C', value_name = "DIR", global = true, display_order = 901)]
    directory: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Init(commands::init::Args),
    #[command(subcommand)]
    Task(commands::task::Command),
    Ready(commands::ready::Args),
    Start(commands::start::Args),
    Oracle(commands::oracle::Args),
    Doctor(commands::doctor::Args),
    Status(commands::status::Args),
    Stop(commands::stop::Args),
    Sync(commands::sync::Args),
    Pause(commands::pause::PauseArgs),
    Resume(commands::pause::ResumeArgs),
    Log(commands::log::Args),
    Promote(commands::promote::Args),
    Reap(commands::reap::Args),
    #[command(subcommand)]
    Hooks(commands::hooks::Command),
    Hook(commands::hook::Args),
    Man(commands::man::Args),
    Demo(commands::demo::Args),
    #[command(hide = true)]
    SimAgent(commands::demo::SimArgs),
}

/// Where a command runs and where it writes its results.
pub struct Ctx<'a> {
    pub cwd: PathBuf,
    pub out: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// The repository containing the working directory.
    pub fn repo(&self) -> anyhow::Result<crate::git::Repo> {
        crate::git::Repo::discover(&self.cwd)
    }
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> ExitCode {
    crate::process::limit_malloc_arenas();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let cwd = match &cli.directory {
        Some(dir) => dir.clone(),
        None => match std::env::current_dir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("error: cannot read the current directory: {e}");
                return ExitCode::from(error::Class::Config.code());
            }
        },
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut ctx = Ctx { cwd, out: &mut out };
    let result = run(cli.command, &mut ctx).and_then(|()| Ok(ctx.out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = ctx.out.flush();
            eprint!("{}", error::render(&e));
            ExitCode::from(error::exit_code(&e))
        }
    }
}

/// Commands that act on the loop beyond its tasks' states (those go through the state
/// machine, which knows who acts): refused from inside an agent's run, which may only file
/// discovered work and read.
fn refused_to_agents(command: &Command) -> Option<&'static str> {
    match command {
        Command::Start(_) => Some("`git loop start`"),
        Command::Stop(_) => Some("`git loop stop`"),
        Command::Reap(_) => Some("`git loop reap`"),
        Command::Sync(_) => Some("`git loop sync`"),
        Command::Hooks(_) => Some("`git loop hooks`"),
        _ => None,
    }
}

fn run(command: Command, ctx: &mut Ctx<'_>) -> anyhow::Result<()> {
    if let Some(what) = refused_to_agents(&command) {
        crate::task::machine::Actor::at_command_line(&ctx.cwd).refuse_agent(what)?;
    }
    match command {
        Command::Init(args) => commands::init::run(ctx, args),
        Command::Task(cmd) => commands::task::run(ctx, cmd),
        Command::Ready(args) => commands::ready::run(ctx, args),
        Command::Start(args) => commands::start::run(ctx, args),
        Command::Oracle(args) => commands::oracle::run(ctx, args),
        Command::Doctor(args) => commands::doctor::run(ctx, args),
        Command::Status(args) => commands::status::run(ctx, args),
        Command::Stop(args) => commands::stop::run(ctx, args),
        Command::Sync(args) => commands::sync::run(ctx, args),
        Command::Pause(args) => commands::pause::pause(ctx, args),
        Command::Resume(args) => commands::pause::resume(ctx, args),
        Command::Log(args) => commands::log::run(ctx, args),
        Command::Promote(args) => commands::promote::run(ctx, args),
        Command::Reap(args) => commands::reap::run(ctx, args),
        Command::Hooks(cmd) => commands::hooks::run(ctx, cmd),
        Command::Hook(args) => commands::hook::run(ctx, args),
        Command::Man(args) => commands::man::run(ctx, args),
        Command::Demo(args) => commands::demo::run(ctx, args),
        Command::SimAgent(args) => commands::demo::sim_agent(ctx, args),
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::LevelFilter;
    let from_env = std::env::var("GIT_LOOP_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok());
    let level = from_env.unwrap_or(match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    });
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Debug logs say when, from the start of the process, so that slowness can be read off them.
    let _ = if level >= LevelFilter::DEBUG {
        builder
            .with_timer(tracing_subscriber::fmt::time::Uptime::default())
            .try_init()
    } else {
        builder.without_time().try_init()
    };
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
