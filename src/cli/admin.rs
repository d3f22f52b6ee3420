//! The database and its access: `init`, `token`, `import`, `export`.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hivesync::model::WriteOp;
use hivesync::query::ChangeFilter;
use hivesync::schema::{SchemaOptions, Tokenizer};
use hivesync::store::{Store, StoreOptions};
use serde_json::{json, Value};

use super::*;
use crate::Cli;

pub(crate) fn token(cli: &Cli, args: &TokenArgs) -> Result<()> {
    let TokenArgs {
        name,
        ns,
        read_only,
    } = args;
    make_token(cli.json, name, ns, *read_only)
}

pub(crate) fn init(cli: &Cli, args: &InitArgs) -> Result<()> {
    let InitArgs { tokenizer } = args;
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

pub(crate) fn import(cli: &Cli, args: &ImportArgs) -> Result<()> {
    let ImportArgs { file, batch } = args;
    import_file(cli, file, *batch)
}

pub(crate) fn export(cli: &Cli, args: &ExportArgs) -> Result<()> {
    let ExportArgs { ns, output } = args;
    export_to(cli, ns, output.as_ref())
}

fn make_token(json: bool, name: &str, ns: &[String], read_only: bool) -> Result<()> {
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

fn import_file(cli: &Cli, file: &PathBuf, batch: usize) -> Result<()> {
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
                let _ = w.write_str(&rate(s.per_sec()));
            },
        ),
    );
    let mut done = 0usize;
    let mut last_seq = 0;
    for chunk in ops.chunks(batch.max(1)) {
        let batch_ops: Vec<WriteOp> = chunk.iter().map(|(_, o)| o.clone()).collect();
        match store.write(&batch_ops) {
            Ok(r) => last_seq = r.seq,
            Err(hivesync::Error::Op { index, cause }) => {
                bar.abandon();
                bail!(
                    "line {}: {cause}\n{done} ops before this batch were committed; the batch holding line {} (lines {}..={}) was rolled back",
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

fn export_to(cli: &Cli, ns: &[String], output: Option<&PathBuf>) -> Result<()> {
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

/// An import rate as the progress bar shows it: a whole number of ops per second.
fn rate(per_sec: f64) -> String {
    format!("{:.0} ops/s", per_sec)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_are_whole_numbers() {
        assert_eq!(super::rate(5321.0874), "5321 ops/s");
        assert_eq!(super::rate(0.4), "0 ops/s");
    }
}
