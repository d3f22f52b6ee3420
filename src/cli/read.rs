//! Reads: `search`, `knn`, `neighbors`, `changes`, `digest`, `check`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use hivesync::query::{ChangeFilter, Direction, KnnQuery, SearchQuery};

use super::*;
use crate::Cli;

pub(crate) fn search(cli: &Cli, args: &SearchArgs) -> Result<()> {
    let SearchArgs {
        text,
        ns,
        kind,
        limit,
    } = args;
    let json_out = cli.json;
    let store = open(cli)?;
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

pub(crate) fn knn(cli: &Cli, args: &KnnArgs) -> Result<()> {
    let KnnArgs {
        model,
        vector,
        like,
        k,
        ns,
        kind,
    } = args;
    let json_out = cli.json;
    let store = open(cli)?;
    let embedding: Vec<f32> = match (vector, like) {
        (Some(v), _) => {
            serde_json::from_str(v).context("--vector must be a JSON array of numbers")?
        }
        (None, Some(s)) => {
            let ns_ = ns.as_deref().unwrap_or("default");
            store
                .get_vector(ns_, s, model)?
                .with_context(|| format!("{s:?} has no {model:?} vector in namespace {ns_:?}"))?
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

pub(crate) fn neighbors(cli: &Cli, args: &NeighborsArgs) -> Result<()> {
    let NeighborsArgs {
        id,
        ns,
        direction,
        relation,
        depth,
        limit,
    } = args;
    let json_out = cli.json;
    let store = open(cli)?;
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

pub(crate) fn changes(cli: &Cli, args: &ChangesArgs) -> Result<()> {
    let ChangesArgs { from, ns, limit } = args;
    let store = open(cli)?;
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

pub(crate) fn digest(cli: &Cli, args: &DigestArgs) -> Result<()> {
    let DigestArgs { ns } = args;
    let json_out = cli.json;
    let store = open(cli)?;
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

pub(crate) fn check(cli: &Cli) -> Result<()> {
    let json_out = cli.json;
    let store = open(cli)?;
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
