//! The `hivesync` commands, one function each; `main.rs` parses the command line and
//! dispatches here. Shared: opening the database, writing results.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hivesync::model::Kind;
use hivesync::query::Direction;
use hivesync::store::{Store, StoreOptions};
use serde_json::Value;

use crate::{Cli, Cmd};

pub(crate) mod admin;
pub(crate) mod jwt;
pub(crate) mod read;
pub(crate) mod rows;
pub(crate) mod serve;
pub(crate) mod watch;

/// `hivesync put`.
#[derive(clap::Args)]
pub(crate) struct PutArgs {
    /// The kind (entity, edge, note, event, vector), or a whole write op as JSON.
    pub(crate) kind_or_op: String,
    /// The row as JSON, when the first argument is a kind.
    pub(crate) data: Option<String>,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub(crate) ns: String,
    /// Change only the fields given, of the row with this id (a patch: `properties` merge by
    /// key, a `null` removes one; `tags` may be {"add": [...], "remove": [...]}).
    #[arg(long, value_name = "ID")]
    pub(crate) patch: Option<String>,
}

/// `hivesync watch`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct WatchArgs {
    /// The node's feed, e.g. ws://127.0.0.1:7070/v1/sync.
    pub(crate) url: String,
    /// Last seq already seen (0: everything in the log); absent: a snapshot of current state first.
    #[arg(long)]
    pub(crate) from: Option<i64>,
    /// Only this namespace (repeatable).
    #[arg(long)]
    pub(crate) ns: Vec<String>,
    /// Token.
    #[arg(long, env = "HIVESYNC_TOKEN")]
    pub(crate) token: Option<String>,
    /// Print JSON lines (the default prints a short line per change).
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit once caught up (after `live`) instead of following.
    #[arg(long)]
    pub(crate) until_live: bool,
}

/// `hivesync watch`: follow a node's feed ([`watch::watch_blocking`]).
pub(crate) fn watch(args: &WatchArgs) -> Result<()> {
    let a = args.clone();
    watch::watch_blocking(watch::WatchOptions {
        url: a.url,
        from: a.from,
        ns: a.ns,
        token: a.token,
        json: a.json,
        until_live: a.until_live,
    })
}

/// A row's key: `hivesync get` and `hivesync delete`.
#[derive(clap::Args)]
pub(crate) struct KeyArgs {
    /// The kind.
    pub(crate) kind: Kind,
    /// Its id (vectors: the subject).
    pub(crate) id: String,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub(crate) ns: String,
    /// The model, for vectors.
    #[arg(long)]
    pub(crate) model: Option<String>,
}

/// `hivesync list`.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// entity, edge, note or event.
    pub(crate) kind: Kind,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub(crate) ns: String,
    /// Only this kind column (relation for edges, verb for events).
    #[arg(long)]
    pub(crate) kind_filter: Option<String>,
    /// Rows after this id.
    #[arg(long)]
    pub(crate) after: Option<String>,
    /// Most rows.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: usize,
}

/// `hivesync search`.
#[derive(clap::Args)]
pub(crate) struct SearchArgs {
    /// Words, "quoted phrases", prefix*.
    #[arg(required = true)]
    pub(crate) text: Vec<String>,
    /// Only this namespace.
    #[arg(long)]
    pub(crate) ns: Option<String>,
    /// Only rows of this kind column (e.g. person).
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// Most hits.
    #[arg(long, default_value_t = 10)]
    pub(crate) limit: usize,
}

/// `hivesync knn`.
#[derive(clap::Args)]
pub(crate) struct KnnArgs {
    /// The model to search: with --ns, that namespace's model; without, the model in every
    /// namespace where it has the query's dimension count.
    #[arg(long)]
    pub(crate) model: String,
    /// The query embedding as a JSON array.
    #[arg(long, conflicts_with = "like")]
    pub(crate) vector: Option<String>,
    /// Use this subject's stored embedding as the query.
    #[arg(long)]
    pub(crate) like: Option<String>,
    /// Number of neighbours.
    #[arg(short, long, default_value_t = 10)]
    pub(crate) k: usize,
    /// Only this namespace.
    #[arg(long)]
    pub(crate) ns: Option<String>,
    /// Only subjects of this kind.
    #[arg(long)]
    pub(crate) kind: Option<String>,
}

/// `hivesync neighbors`.
#[derive(clap::Args)]
pub(crate) struct NeighborsArgs {
    /// The entity id.
    pub(crate) id: String,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub(crate) ns: String,
    /// out, in or both (edges from the entity, to it, or either way).
    #[arg(long, default_value = "both")]
    pub(crate) direction: Direction,
    /// Only edges of this relation.
    #[arg(long)]
    pub(crate) relation: Option<String>,
    /// Hops to follow (1: direct neighbours with their edges).
    #[arg(long, default_value_t = 1)]
    pub(crate) depth: u32,
    /// Most results.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: usize,
}

/// `hivesync import`.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The file.
    pub(crate) file: PathBuf,
    /// Ops per transaction.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
}

/// `hivesync export`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// Only these namespaces (repeatable).
    #[arg(long)]
    pub(crate) ns: Vec<String>,
    /// Write here instead of standard output.
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
}

/// `hivesync changes`.
#[derive(clap::Args)]
pub(crate) struct ChangesArgs {
    /// Print changes after this seq.
    #[arg(long, default_value_t = 0)]
    pub(crate) from: i64,
    /// Only this namespace (repeatable).
    #[arg(long)]
    pub(crate) ns: Vec<String>,
    /// Most changes.
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
}

/// `hivesync digest`.
#[derive(clap::Args)]
pub(crate) struct DigestArgs {
    /// Only these namespaces (repeatable); all when absent.
    #[arg(long)]
    pub(crate) ns: Vec<String>,
}

/// `hivesync init`.
#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// FTS5 tokenizer: unicode61 (words) or trigram (CJK text, substrings).
    #[arg(long, default_value = "unicode61")]
    pub(crate) tokenizer: String,
}

/// `hivesync token`.
#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    /// Its name, for logs and errors.
    pub(crate) name: String,
    /// Namespaces it may use, comma-separated: exact names, `prefix-*`, or `*` (all).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub(crate) ns: Vec<String>,
    /// Read only: the token may subscribe but not write.
    #[arg(long)]
    pub(crate) read_only: bool,
}

pub(crate) fn open(cli: &Cli) -> Result<Store> {
    // `put` and `import` create the file (as `init` and `serve` do); every other command reads
    // an existing one, and a mistyped path must not leave an empty database behind.
    let creates = matches!(cli.cmd, Cmd::Put { .. } | Cmd::Import { .. });
    if !creates && !cli.db.exists() {
        bail!(
            "no database at {}: `hivesync init`, `put`, `import` or `serve` create one; \
             --db PATH (or HIVESYNC_DB) picks another file",
            cli.db.display()
        );
    }
    Store::open(&cli.db, StoreOptions::default())
        .with_context(|| format!("opening {}", cli.db.display()))
}

pub(crate) fn out() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::new(std::io::stdout().lock())
}

pub(crate) fn print_json(w: &mut impl Write, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    writeln!(w)?;
    Ok(())
}

pub(crate) fn parse_json(what: &str, s: &str) -> Result<Value> {
    serde_json::from_str(s).with_context(|| format!("{what} is not valid JSON"))
}
