//! The `hivesync` command line: run a node, write and read the store, import and export.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "hivesync",
    version,
    about = "An edge sync node: a SQLite knowledge store streamed as a change feed over WebSockets"
)]
struct Cli {
    /// Database file.
    #[arg(
        long,
        global = true,
        env = "HIVESYNC_DB",
        default_value = "./hivesync.db"
    )]
    db: PathBuf,
    /// Print results as JSON, one object per line.
    #[arg(long, global = true)]
    json: bool,
    /// Logs (on standard error): text, or json (one object per line, for journald and log
    /// shippers).
    #[arg(
        long,
        global = true,
        env = "HIVESYNC_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sync node.
    Serve(cli::serve::ServeArgs),
    /// Upsert a row: `put entity '{"name":"Ada"}'`, patch one: `put entity --patch ID '{"name":"Ada"}'`,
    /// or any write op: `put '{"op":"upsert","kind":"entity",...}'`.
    Put(cli::PutArgs),
    /// Print one row.
    Get(cli::KeyArgs),
    /// Delete one row.
    Delete(cli::KeyArgs),
    /// List rows of one kind, in id order.
    List(cli::ListArgs),
    /// Full-text search over entities and notes.
    Search(cli::SearchArgs),
    /// Nearest vectors to a query vector (or to a stored subject's vector).
    Knn(cli::KnnArgs),
    /// Edges around an entity, or a multi-hop traversal with --depth.
    Neighbors(cli::NeighborsArgs),
    /// Import write ops from a JSON Lines file (`-` for standard input).
    ///
    /// Every line is parsed and checked before anything is written: a malformed line stops the
    /// import with its line number and nothing written. Ops then commit in batches, one
    /// transaction each; if an op fails in the database (an edge whose endpoint is missing, a
    /// vector of the wrong size), the import stops with its line number, that batch is rolled
    /// back whole and the batches before it stay committed (re-running is safe for rows with
    /// ids: upserts are idempotent).
    Import(cli::ImportArgs),
    /// Export current state as JSON Lines write ops (import-ready).
    Export(cli::ExportArgs),
    /// Print the change log after a seq.
    Changes(cli::ChangesArgs),
    /// Check the database: SQLite integrity, FTS5 and vec0 against the base tables, the log.
    Check,
    /// Print a digest (SHA-256) of the logical state, to compare a node with its replicas.
    Digest(cli::DigestArgs),
    /// Create the database file (with a chosen tokenizer) without starting a node.
    Init(cli::InitArgs),
    /// Follow a node's change feed, printing each change as a JSON line; resumes after a
    /// disconnect from the last seq printed.
    Watch(cli::WatchArgs),
    /// Make a client token: prints a random secret once, and the lines for the node's config
    /// file (which holds only the secret's hash).
    Token(cli::TokenArgs),
    /// Development keys and tokens for `[jwt]` sign-in: `jwt keygen --dir DIR`, then
    /// `jwt sign --key DIR/private.pem --sub alice --ttl 1h`.
    Jwt(cli::jwt::JwtArgs),
}

/// Serve buffers of 256 KiB and more (frames, rows of big text) from their own mappings, which
/// go back to the OS when freed. glibc's default threshold rises to 32 MiB after each large
/// free, after which such buffers are carved from the heap and stay there: under the hostile
/// suite's write flood (tests/hostile.rs, 3 clients pipelining 7 MiB writes of 1,047,552-byte
/// notes) the node's anonymous memory peaked at 840 MiB with the default, and still reached
/// 843 MiB in CI with a 1 MiB threshold, which those notes' buffers fall just under.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fix_mmap_threshold() {
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

fn main() -> ExitCode {
    fix_mmap_threshold();
    let cli = Cli::parse();
    let default_level = if matches!(cli.cmd, Cmd::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // The file watcher's own trace lines name every event in the database's folder: with
    // RUST_LOG=trace and the log file in that folder, each line wrote an event that wrote a
    // line (161 MB in 5 s, idle). Kept at debug unless RUST_LOG names the crate itself.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("notify")) {
        if let Ok(d) = "notify=debug".parse() {
            filter = filter.add_directive(d);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // One JSON object per line (journald, log shippers).
        LogFormat::Json => logs.json().init(),
        // Colour only for a person at a terminal (and not with NO_COLOR set).
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`hivesync export | head`): stop quietly, as Unix tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().map(|e| e.kind());
        let json = c
            .downcast_ref::<serde_json::Error>()
            .and_then(|e| e.io_error_kind());
        let ours = match c.downcast_ref::<hivesync::Error>() {
            Some(hivesync::Error::Io(e)) => Some(e.kind()),
            Some(hivesync::Error::Json(e)) => e.io_error_kind(),
            _ => None,
        };
        [io, json, ours].contains(&Some(BrokenPipe))
    })
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Serve(args) => cli::serve::serve(&cli.db, args),
        Cmd::Watch(args) => cli::watch(args),
        Cmd::Token(args) => cli::admin::token(&cli, args),
        Cmd::Jwt(args) => cli::jwt::run(args),
        Cmd::Init(args) => cli::admin::init(&cli, args),
        Cmd::Put(args) => cli::rows::put(&cli, args),
        Cmd::Get(args) => cli::rows::get(&cli, args),
        Cmd::Delete(args) => cli::rows::delete(&cli, args),
        Cmd::List(args) => cli::rows::list(&cli, args),
        Cmd::Search(args) => cli::read::search(&cli, args),
        Cmd::Knn(args) => cli::read::knn(&cli, args),
        Cmd::Neighbors(args) => cli::read::neighbors(&cli, args),
        Cmd::Import(args) => cli::admin::import(&cli, args),
        Cmd::Export(args) => cli::admin::export(&cli, args),
        Cmd::Changes(args) => cli::read::changes(&cli, args),
        Cmd::Digest(args) => cli::read::digest(&cli, args),
        Cmd::Check => cli::read::check(&cli),
    }
}
