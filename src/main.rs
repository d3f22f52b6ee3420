//! The `hivesync` command line: run a node, write and read the store, import and export.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hivesync::model::{Kind, Op, WriteOp};
use hivesync::query::{ChangeFilter, Direction, KnnQuery, ListQuery, SearchQuery};
use hivesync::schema::{SchemaOptions, Tokenizer};
use hivesync::store::{Store, StoreOptions};
use serde_json::{json, Value};

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
    Serve(hivesync::node::ServeArgs),
    /// Upsert a row: `put entity '{"name":"Ada"}'` or `put '{"op":"upsert","kind":"entity",...}'`.
    Put {
        /// The kind (entity, edge, note, event, vector), or a whole write op as JSON.
        kind_or_op: String,
        /// The row as JSON, when the first argument is a kind.
        data: Option<String>,
        /// Namespace.
        #[arg(long, default_value = "default")]
        ns: String,
    },
    /// Print one row.
    Get {
        /// The kind.
        kind: Kind,
        /// Its id (vectors: the subject).
        id: String,
        /// Namespace.
        #[arg(long, default_value = "default")]
        ns: String,
        /// The model, for vectors.
        #[arg(long)]
        model: Option<String>,
    },
    /// Delete one row.
    Delete {
        /// The kind.
        kind: Kind,
        /// Its id (vectors: the subject).
        id: String,
        /// Namespace.
        #[arg(long, default_value = "default")]
        ns: String,
        /// The model, for vectors.
        #[arg(long)]
        model: Option<String>,
    },
    /// List rows of one kind, in id order.
    List {
        /// entity, edge, note or event.
        kind: Kind,
        /// Namespace.
        #[arg(long, default_value = "default")]
        ns: String,
        /// Only this kind column (relation for edges, verb for events).
        #[arg(long)]
        kind_filter: Option<String>,
        /// Rows after this id.
        #[arg(long)]
        after: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Full-text search over entities and notes.
    Search {
        /// Words, "quoted phrases", prefix*.
        #[arg(required = true)]
        text: Vec<String>,
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
        /// Only rows of this kind column (e.g. person).
        #[arg(long)]
        kind: Option<String>,
        /// Most hits.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Nearest vectors to a query vector (or to a stored subject's vector).
    Knn {
        /// The model to search: with --ns, that namespace's model; without, the model in every
        /// namespace where it has the query's dimension count.
        #[arg(long)]
        model: String,
        /// The query embedding as a JSON array.
        #[arg(long, conflicts_with = "like")]
        vector: Option<String>,
        /// Use this subject's stored embedding as the query.
        #[arg(long)]
        like: Option<String>,
        /// Number of neighbours.
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
        /// Only subjects of this kind.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Edges around an entity, or a multi-hop traversal with --depth.
    Neighbors {
        /// The entity id.
        id: String,
        /// Namespace.
        #[arg(long, default_value = "default")]
        ns: String,
        /// out, in or both (edges from the entity, to it, or either way).
        #[arg(long, default_value = "both")]
        direction: Direction,
        /// Only edges of this relation.
        #[arg(long)]
        relation: Option<String>,
        /// Hops to follow (1: direct neighbours with their edges).
        #[arg(long, default_value_t = 1)]
        depth: u32,
        /// Most results.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Import write ops from a JSON Lines file (`-` for standard input).
    ///
    /// Every line is parsed and checked before anything is written: a malformed line stops the
    /// import with its line number and nothing written. Ops then commit in batches, one
    /// transaction each; if an op fails in the database (an edge whose endpoint is missing, a
    /// vector of the wrong size), the import stops with its line number, that batch is rolled
    /// back whole and the batches before it stay committed (re-running is safe for rows with
    /// ids: upserts are idempotent).
    Import {
        /// The file.
        file: PathBuf,
        /// Ops per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Export current state as JSON Lines write ops (import-ready).
    Export {
        /// Only these namespaces (repeatable).
        #[arg(long)]
        ns: Vec<String>,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print the change log after a seq.
    Changes {
        /// Print changes after this seq.
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Only this namespace (repeatable).
        #[arg(long)]
        ns: Vec<String>,
        /// Most changes.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Check the database: SQLite integrity, FTS5 and vec0 against the base tables, the log.
    Check,
    /// Print a digest (SHA-256) of the logical state, to compare a node with its replicas.
    Digest {
        /// Only these namespaces (repeatable); all when absent.
        #[arg(long)]
        ns: Vec<String>,
    },
    /// Create the database file (with a chosen tokenizer) without starting a node.
    Init {
        /// FTS5 tokenizer: unicode61 (words) or trigram (CJK text, substrings).
        #[arg(long, default_value = "unicode61")]
        tokenizer: String,
    },
    /// Follow a node's change feed, printing each change as a JSON line; resumes after a
    /// disconnect from the last seq printed.
    Watch(hivesync::node::WatchArgs),
    /// Make a client token: prints a random secret once, and the lines for the node's config
    /// file (which holds only the secret's hash).
    Token {
        /// Its name, for logs and errors.
        name: String,
        /// Namespaces it may use, comma-separated: exact names, `prefix-*`, or `*` (all).
        #[arg(long, value_delimiter = ',', default_value = "*")]
        ns: Vec<String>,
        /// Read only: the token may subscribe but not write.
        #[arg(long)]
        read_only: bool,
    },
}

/// Serve buffers of 1 MiB and more (frames, rows of big text) from their own mappings, which
/// go back to the OS when freed. glibc's default threshold rises to 32 MiB after each large
/// free, after which such buffers are carved from the heap and stay there: under the hostile
/// suite's write flood (tests/hostile.rs, 3 clients pipelining 7 MiB writes) the node's
/// anonymous memory peaked at 840 MiB with the default and 312 MiB with this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fix_mmap_threshold() {
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
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
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: a cause whose text its wrapper already includes
/// (an error that shows its source in its own message) is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
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

fn token(json: bool, name: &str, ns: &[String], read_only: bool) -> Result<()> {
    use hivesync::node::config::NewToken;
    use hivesync::protocol::Scope;
    let read = Scope(ns.to_vec());
    let write = if read_only {
        Scope(vec![])
    } else {
        read.clone()
    };
    let t = NewToken::generate(name, read, write)?;
    let mut o = out();
    if json {
        let line = json!({"name": name, "secret": t.secret, "sha256": t.config.sha256, "config": t.toml()});
        writeln!(o, "{line}")?;
    } else {
        // The secret on the terminal, the config lines on stdout: `hivesync token NAME >>
        // node.toml` appends the lines and never writes the secret into the file.
        eprintln!(
            "The secret of token {name:?}, shown only now (clients send it as their hello's token:\n\
             openReplica({{ url, token }}), hivesync watch --token, serve --upstream-token-file):\n\n    \
             {}\n\n\
             Its lines for the node's config file (serve --config FILE reloads by itself):",
            t.secret
        );
        write!(o, "{}", t.toml())?;
    }
    o.flush()?;
    Ok(())
}

fn open(cli: &Cli) -> Result<Store> {
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

fn out() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::new(std::io::stdout().lock())
}

fn print_json(w: &mut impl Write, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    writeln!(w)?;
    Ok(())
}

fn values<T: serde::Serialize>(rows: Vec<T>) -> Result<Vec<Value>> {
    Ok(rows
        .into_iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?)
}

fn parse_json(what: &str, s: &str) -> Result<Value> {
    serde_json::from_str(s).with_context(|| format!("{what} is not valid JSON"))
}

fn run(cli: Cli) -> Result<()> {
    let json_out = cli.json;
    match &cli.cmd {
        Cmd::Serve(args) => hivesync::node::serve_blocking(&cli.db, args.clone()),
        Cmd::Watch(args) => hivesync::node::watch_blocking(args.clone()),
        Cmd::Token {
            name,
            ns,
            read_only,
        } => token(cli.json, name, ns, *read_only),
        Cmd::Init { tokenizer } => {
            let tok = Tokenizer::parse(tokenizer)?;
            let existed = cli.db.exists();
            let store = Store::open(
                &cli.db,
                StoreOptions {
                    schema: SchemaOptions { tokenizer: tok },
                    ..Default::default()
                },
            )?;
            let actual = store.read(hivesync::schema::tokenizer)?;
            if existed && actual != tok {
                bail!("{} already exists with the {actual:?} tokenizer; the tokenizer is chosen when a database is created", cli.db.display());
            }
            println!("{} ready (tokenizer {actual:?})", cli.db.display());
            Ok(())
        }
        Cmd::Put {
            kind_or_op,
            data,
            ns,
        } => {
            let op = match data {
                Some(d) => WriteOp::upsert(
                    kind_or_op.parse::<Kind>()?,
                    ns.clone(),
                    parse_json("the row", d)?,
                ),
                None => {
                    if !kind_or_op.trim_start().starts_with('{') {
                        bail!("give the row as JSON after the kind: hivesync put {kind_or_op} '{{\"name\":\"...\"}}'");
                    }
                    WriteOp::from_json(kind_or_op)?
                }
            };
            let store = open(&cli)?;
            let r = store.write(std::slice::from_ref(&op))?;
            if json_out {
                print_json(&mut out(), &json!({"seq": r.seq, "id": r.ids[0]}))
            } else {
                let verb = if op.op == Op::Upsert {
                    "upserted"
                } else {
                    "deleted"
                };
                println!(
                    "{verb} {} {} in {} (seq {})",
                    op.kind, r.ids[0], op.ns, r.seq
                );
                Ok(())
            }
        }
        Cmd::Get {
            kind,
            id,
            ns,
            model,
        } => {
            let store = open(&cli)?;
            let v: Option<Value> = match kind {
                Kind::Entity => store
                    .get_entity(ns, id)?
                    .map(serde_json::to_value)
                    .transpose()?,
                Kind::Edge => store
                    .get_edge(ns, id)?
                    .map(serde_json::to_value)
                    .transpose()?,
                Kind::Note => store
                    .get_note(ns, id)?
                    .map(serde_json::to_value)
                    .transpose()?,
                Kind::Event => store
                    .get_event(ns, id)?
                    .map(serde_json::to_value)
                    .transpose()?,
                Kind::Vector => {
                    let model = model
                        .as_deref()
                        .context("a vector is keyed by subject and model: add --model")?;
                    store
                        .get_vector(ns, id, model)?
                        .map(serde_json::to_value)
                        .transpose()?
                }
            };
            match v {
                Some(v) if json_out => print_json(&mut out(), &v),
                Some(v) => {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(())
                }
                None => bail!("no {kind} {id:?} in namespace {ns:?}"),
            }
        }
        Cmd::Delete {
            kind,
            id,
            ns,
            model,
        } => {
            let store = open(&cli)?;
            let mut op = WriteOp::delete(*kind, ns.clone(), id.clone());
            op.model = model.clone();
            let r = store.write(&[op])?;
            if json_out {
                print_json(&mut out(), &json!({"seq": r.seq, "id": id}))
            } else {
                println!("deleted {kind} {id} in {ns} (seq {})", r.seq);
                Ok(())
            }
        }
        Cmd::List {
            kind,
            ns,
            kind_filter,
            after,
            limit,
        } => {
            let store = open(&cli)?;
            let q = ListQuery {
                ns: ns.clone(),
                kind: kind_filter.clone(),
                after: after.clone(),
                limit: *limit,
            };
            let list = |q: &ListQuery| -> Result<Vec<Value>> {
                match kind {
                    Kind::Entity => values(store.list_entities(q)?),
                    Kind::Edge => values(store.list_edges(q)?),
                    Kind::Note => values(store.list_notes(q)?),
                    Kind::Event => values(store.list_events(q)?),
                    Kind::Vector => {
                        bail!("vectors are listed through `knn` or `get vector SUBJECT --model M`")
                    }
                }
            };
            let rows = list(&q)?;
            let last = rows
                .last()
                .and_then(|r| r["id"].as_str())
                .map(str::to_string);
            let more = match &last {
                Some(id) if rows.len() >= (*limit).min(hivesync::query::MAX_LIMIT) => {
                    !list(&ListQuery {
                        after: Some(id.clone()),
                        limit: 1,
                        ..q.clone()
                    })?
                    .is_empty()
                }
                _ => false,
            };
            let mut w = out();
            for r in &rows {
                if json_out {
                    print_json(&mut w, &r)?;
                } else {
                    let label = r
                        .get("name")
                        .or_else(|| r.get("relation"))
                        .or_else(|| r.get("verb"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    writeln!(
                        w,
                        "{}\t{}",
                        r["id"].as_str().unwrap_or(""),
                        label.as_str().unwrap_or("")
                    )?;
                }
            }
            w.flush()?;
            if let (true, Some(id)) = (more, last) {
                eprintln!(
                    "stopped at the limit ({}); more follow: the next page is `--after {id}` (or raise --limit)",
                    rows.len()
                );
            }
            Ok(())
        }
        Cmd::Search {
            text,
            ns,
            kind,
            limit,
        } => {
            let store = open(&cli)?;
            let q = SearchQuery {
                text: text.join(" "),
                ns: ns.clone(),
                kind: kind.clone(),
                records: None,
                limit: *limit,
            };
            let hits = store.search(&q)?;
            let mut w = out();
            for h in &hits {
                if json_out {
                    print_json(&mut w, h)?;
                } else {
                    writeln!(
                        w,
                        "{:>8.4}  {} {}/{} [{}] {}\n         {}",
                        h.score, h.record, h.ns, h.id, h.kind, h.name, h.snippet
                    )?;
                }
            }
            if hits.is_empty() && !json_out {
                eprintln!("no matches");
            }
            Ok(())
        }
        Cmd::Knn {
            model,
            vector,
            like,
            k,
            ns,
            kind,
        } => {
            let store = open(&cli)?;
            let embedding: Vec<f32> = match (vector, like) {
                (Some(v), _) => {
                    serde_json::from_str(v).context("--vector must be a JSON array of numbers")?
                }
                (None, Some(s)) => {
                    let ns_ = ns.as_deref().unwrap_or("default");
                    store
                        .get_vector(ns_, s, model)?
                        .with_context(|| {
                            format!("{s:?} has no {model:?} vector in namespace {ns_:?}")
                        })?
                        .embedding
                }
                (None, None) => bail!("give the query as --vector '[...]' or --like SUBJECT"),
            };
            let hits = store.knn(&KnnQuery {
                model: model.clone(),
                embedding,
                k: *k,
                ns: ns.clone(),
                kind: kind.clone(),
            })?;
            let mut w = out();
            for h in &hits {
                if json_out {
                    print_json(&mut w, h)?;
                } else {
                    writeln!(w, "{:.4}  {}/{} [{}]", h.distance, h.ns, h.subject, h.kind)?;
                }
            }
            Ok(())
        }
        Cmd::Neighbors {
            id,
            ns,
            direction,
            relation,
            depth,
            limit,
        } => {
            let store = open(&cli)?;
            let mut w = out();
            if *depth <= 1 {
                for n in store.neighbors(ns, id, *direction, relation.as_deref(), *limit)? {
                    if json_out {
                        print_json(&mut w, &n)?;
                    } else {
                        let (l, r) = if n.direction == Direction::Out {
                            ("-", "->")
                        } else {
                            ("<-", "-")
                        };
                        writeln!(
                            w,
                            "{id} {l}[{}]{r} {}  (weight {}, edge {})",
                            n.edge.relation, n.node, n.edge.weight, n.edge.id
                        )?;
                    }
                }
            } else {
                for h in store.traverse(ns, id, *direction, relation.as_deref(), *depth, *limit)? {
                    if json_out {
                        print_json(&mut w, &h)?;
                    } else {
                        writeln!(
                            w,
                            "{}{}  (depth {}, via {} from {})",
                            "  ".repeat(h.depth as usize - 1),
                            h.node,
                            h.depth,
                            h.relation,
                            h.from
                        )?;
                    }
                }
            }
            Ok(())
        }
        Cmd::Import { file, batch } => import(&cli, file, *batch),
        Cmd::Export { ns, output } => export(&cli, ns, output.as_ref()),
        Cmd::Changes { from, ns, limit } => {
            let store = open(&cli)?;
            let filter = ChangeFilter {
                namespaces: (!ns.is_empty()).then(|| ns.clone()),
                kinds: None,
            };
            let mut w = out();
            let changes = store.changes_since(*from, &filter, *limit)?;
            for c in &changes {
                let mut b = Vec::new();
                hivesync::protocol::encode_change_json(&mut b, c);
                w.write_all(&b)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            if let Some(last) = changes.last() {
                if !store.changes_since(last.seq, &filter, 1)?.is_empty() {
                    eprintln!(
                        "stopped after {} changes (--limit {limit}, whole transactions); more follow: \
                         the next page is `--from {}`",
                        changes.len(),
                        last.seq
                    );
                }
            }
            Ok(())
        }
        Cmd::Digest { ns } => {
            let store = open(&cli)?;
            let d = store.digest((!ns.is_empty()).then_some(ns.as_slice()))?;
            if json_out {
                print_json(&mut out(), &d)
            } else {
                let counts: Vec<String> = d
                    .rows
                    .iter()
                    .map(|(k, n)| format!("{}={n}", k.table()))
                    .collect();
                println!("{}  {}", d.sha256, counts.join(" "));
                Ok(())
            }
        }
        Cmd::Check => {
            let store = open(&cli)?;
            let r = store.check()?;
            if json_out {
                print_json(&mut out(), &r)?;
            } else {
                for (t, n) in &r.rows {
                    println!("{t:>9}: {n}");
                }
                println!("log: seq {}..={}", r.horizon, r.head);
                for p in &r.problems {
                    println!("PROBLEM: {p}");
                }
                println!("{}", if r.ok { "ok" } else { "problems found" });
            }
            if !r.ok {
                bail!("{} problem(s) found", r.problems.len());
            }
            Ok(())
        }
    }
}

fn import(cli: &Cli, file: &PathBuf, batch: usize) -> Result<()> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    // Pass 1: parse every line, so a malformed file writes nothing.
    let mut ops: Vec<(usize, WriteOp)> = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let op = WriteOp::from_json(t).with_context(|| {
            format!(
                "line {}: nothing was imported; fix the line and run again",
                i + 1
            )
        })?;
        ops.push((i + 1, op));
    }
    let store = open(cli)?;
    let bar = indicatif::ProgressBar::new(ops.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {pos}/{len} ops ({rate}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        // A whole number: `{per_sec}` prints rates such as 5321.0874/s.
        .with_key(
            "rate",
            |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_fmt(format_args!("{:.0} ops/s", s.per_sec()));
            },
        ),
    );
    let mut done = 0usize;
    let mut last_seq = 0;
    for chunk in ops.chunks(batch.max(1)) {
        let batch_ops: Vec<WriteOp> = chunk.iter().map(|(_, o)| o.clone()).collect();
        match store.write(&batch_ops) {
            Ok(r) => last_seq = r.seq,
            Err(hivesync::Error::Op { index, source }) => {
                bar.abandon();
                bail!(
                    "line {}: {source}\n{done} ops before this batch were committed; the batch holding line {} (lines {}..={}) was rolled back",
                    chunk[index].0,
                    chunk[index].0,
                    chunk[0].0,
                    chunk[chunk.len() - 1].0
                );
            }
            Err(e) => {
                bar.abandon();
                return Err(e).context(format!("{done} ops were committed before the failure"));
            }
        }
        done += chunk.len();
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    if cli.json {
        print_json(&mut out(), &json!({"imported": done, "seq": last_seq}))
    } else {
        println!("imported {done} ops (log head seq {last_seq})");
        Ok(())
    }
}

fn export(cli: &Cli, ns: &[String], output: Option<&PathBuf>) -> Result<()> {
    let store = open(cli)?;
    let mut w: Box<dyn Write> = match output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(out()),
    };
    let filter = ChangeFilter {
        namespaces: (!ns.is_empty()).then(|| ns.to_vec()),
        kinds: None,
    };
    let mut n = 0usize;
    let at = store.read(|c| {
        hivesync::query::snapshot(c, &filter, 4096, |_, rows| {
            for r in rows {
                let mut data: Value = serde_json::from_str(r.data.as_deref().unwrap_or("{}"))?;
                if let (Some(e), Some(obj)) = (&r.embedding, data.as_object_mut()) {
                    obj.insert("embedding".into(), serde_json::to_value(e)?);
                }
                let op = WriteOp::upsert(r.kind, r.ns, data);
                serde_json::to_writer(&mut w, &op)?;
                w.write_all(b"\n")?;
                n += 1;
            }
            Ok(())
        })
    })?;
    w.flush()?;
    eprintln!("exported {n} rows as of seq {at}");
    Ok(())
}
