//! Rows by key: `put`, `get`, `delete`, `list`.

use std::io::Write;

use anyhow::{bail, Result};
use hivesync::model::{Kind, Op, WriteOp};
use hivesync::query::ListQuery;
use serde_json::{json, Value};

use super::*;
use crate::Cli;

pub(crate) fn put(cli: &Cli, args: &PutArgs) -> Result<()> {
    let PutArgs {
        kind_or_op,
        data,
        ns,
        patch,
    } = args;
    let json_out = cli.json;
    let op = match (data, patch) {
        (Some(d), Some(id)) => WriteOp::patch(
            kind_or_op.parse::<Kind>()?,
            ns.clone(),
            id.clone(),
            parse_json("the fields", d)?,
        ),
        (None, Some(_)) => {
            bail!("give the fields to change as JSON: hivesync put {kind_or_op} --patch ID '{{\"name\":\"...\"}}'")
        }
        (Some(d), None) => WriteOp::upsert(
            kind_or_op.parse::<Kind>()?,
            ns.clone(),
            parse_json("the row", d)?,
        ),
        (None, None) => {
            if !kind_or_op.trim_start().starts_with('{') {
                bail!("give the row as JSON after the kind: hivesync put {kind_or_op} '{{\"name\":\"...\"}}'");
            }
            WriteOp::from_json(kind_or_op)?
        }
    };
    let store = open(cli)?;
    let r = store.write(std::slice::from_ref(&op))?;
    if json_out {
        print_json(&mut out(), &json!({"seq": r.seq, "id": r.ids[0]}))
    } else {
        let verb = match op.op {
            Op::Upsert => "upserted",
            Op::Patch => "patched",
            Op::Delete => "deleted",
        };
        println!(
            "{verb} {} {} in {} (seq {})",
            op.kind, r.ids[0], op.ns, r.seq
        );
        Ok(())
    }
}

pub(crate) fn get(cli: &Cli, args: &KeyArgs) -> Result<()> {
    let KeyArgs {
        kind,
        id,
        ns,
        model,
    } = args;
    let json_out = cli.json;
    let store = open(cli)?;
    if *kind == Kind::Vector && model.is_none() {
        bail!("a vector is keyed by subject and model: add --model");
    }
    let v = store.get_json(*kind, ns, id, model.as_deref())?;
    match v {
        Some(v) if json_out => print_json(&mut out(), &v),
        Some(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        None => bail!("no {kind} {id:?} in namespace {ns:?}"),
    }
}

pub(crate) fn delete(cli: &Cli, args: &KeyArgs) -> Result<()> {
    let KeyArgs {
        kind,
        id,
        ns,
        model,
    } = args;
    let json_out = cli.json;
    let store = open(cli)?;
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

pub(crate) fn list(cli: &Cli, args: &ListArgs) -> Result<()> {
    let ListArgs {
        kind,
        ns,
        kind_filter,
        after,
        limit,
    } = args;
    let json_out = cli.json;
    let store = open(cli)?;
    let q = ListQuery {
        ns: ns.clone(),
        kind: kind_filter.clone(),
        after: after.clone(),
        limit: *limit,
    };
    if *kind == Kind::Vector {
        bail!("vectors are listed through `knn` or `get vector SUBJECT --model M`");
    }
    let list = |q: &ListQuery| store.list_json(*kind, q);
    let rows = list(&q)?;
    let last = rows
        .last()
        .and_then(|r| r["id"].as_str())
        .map(str::to_string);
    let more = match &last {
        Some(id) if rows.len() >= (*limit).min(hivesync::query::MAX_LIMIT) => !list(&ListQuery {
            after: Some(id.clone()),
            limit: 1,
            ..q.clone()
        })?
        .is_empty(),
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
