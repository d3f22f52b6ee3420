// Live queries under load (issue 29), in headless Chromium against the real node, one run:
// 1. 100 live queries of mixed kinds (search, list, get, knn, neighbors, traverse over 10
//    namespaces) open while a writer commits 1,000 changes/s for SECS seconds: the time from the
//    write (its row's `updated_at`, stamped when sent: so it counts the trip to the node too) to
//    the callback of a live query whose answer holds it (the lists and gets);
// 2. apply throughput of a catch-up of CATCHUP changes with those 100 queries open, against the
//    same catch-up with none open;
// 3. a local write to the callback of the live `get` of its row, p50.
// Prints one JSON line. Usage: node live.mjs BIN [SECS=10] [CATCHUP=20000]
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { launchPersistent } from '../test/harness.mjs';
import { serveApp } from '../test/app-origin.mjs';

const [bin, secs = '10', catchup = '20000'] = process.argv.slice(2);
const here = path.dirname(new URL(import.meta.url).pathname);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-live-bench-'));
const db = path.join(dir, 'live.db');
const words = ['sailing', 'harbour', 'tide', 'compass', 'anchor', 'rigging', 'chart', 'keel'];
const rows = [];
for (let i = 0; i < 5000; i++) {
  rows.push({ op: 'upsert', kind: 'entity', ns: `n${i % 10}`, data: { id: `e${i}`, kind: 'doc', name: `${words[i % 8]} ${words[(i * 3) % 8]} ${i}` } });
}
for (let i = 0; i < 4990; i++) {
  const ns = `n${i % 10}`;
  if (i % 5 === 0) rows.push({ op: 'upsert', kind: 'edge', ns, data: { id: `x${i}`, source: `e${i}`, target: `e${i + 10}`, relation: 'next' } });
  if (i % 5 === 0) rows.push({ op: 'upsert', kind: 'vector', ns, data: { subject: `e${i}`, model: 'm', embedding: [Math.sin(i), Math.cos(i), 1] } });
}
fs.writeFileSync(path.join(dir, 'rows.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n'));
execFileSync(bin, ['--db', db, 'import', path.join(dir, 'rows.jsonl')]);
const port = await new Promise((r) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
const node = spawn(bin, ['--db', db, 'serve', '--listen', `127.0.0.1:${port}`, '--allow-origin', 'http://localhost:9'], { stdio: 'ignore' });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-live-profile-'));
const ctx = await launchPersistent(profile, '--disable-features=LocalNetworkAccessChecks');
await serveApp(ctx, path.join(here, '../web'));

/**
 * A writer over the JSON protocol, in a page of its own (Node 20 has no WebSocket): `perMsg` ops
 * per message every `ms` (0: as fast as answered), `total` ops, made by `mode` (see below).
 */
let writerPage = null;
async function writer({ perMsg, ms, total, mode, tag = '' }) {
  writerPage ??= await ctx.newPage();
  await writerPage.goto('http://localhost:9/');
  await writerPage.evaluate(async ({ url, perMsg, ms, total, mode, tag }) => {
    const words = ['sailing', 'harbour', 'tide', 'compass', 'anchor', 'rigging', 'chart', 'keel'];
    // live: new rows whose ids sort first in their namespace, and one hot row per namespace
    // written over and over, both stamped with the moment they are sent; catchup: plain rows.
    const make = (i) => (mode === 'live'
      ? { op: 'upsert', kind: 'entity', ns: `n${i % 10}`, data: i % 2
        ? { id: `a${String(1e9 - i)}`, kind: 'hot', name: `${words[i % 8]} written ${i}`, updated_at: Date.now() * 1000, properties: { bench: 1 } }
        : { id: `hot${i % 10}`, kind: 'hot', name: `hot ${i}`, updated_at: Date.now() * 1000, properties: { bench: 1 } } }
      : { op: 'upsert', kind: 'entity', ns: `n${i % 10}`, data: { id: `c${tag}${i}`, kind: 'doc', name: `${words[i % 8]} caught up ${i}` } });
    const ws = new WebSocket(url, 'hivesync.v1.json');
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    ws.send(JSON.stringify({ type: 'hello', client: 'live-bench' }));
    let answered = 0;
    ws.onmessage = (e) => { if (JSON.parse(e.data).type === 'written') answered++; };
    let sent = 0;
    while (sent < total) {
      const t = Date.now();
      const ops = [];
      for (let k = 0; k < perMsg && sent < total; k++, sent++) ops.push(make(sent));
      ws.send(JSON.stringify({ type: 'write', req: String(sent), ops }));
      if (ms) await new Promise((r) => setTimeout(r, Math.max(0, ms - (Date.now() - t))));
      else while (answered < Math.ceil(sent / perMsg) - 4) await new Promise((r) => setTimeout(r, 1));
    }
    while (answered < Math.ceil(total / perMsg)) await new Promise((r) => setTimeout(r, 20));
    ws.close();
  }, { url: `ws://127.0.0.1:${port}/v1/sync`, perMsg, ms, total, mode, tag });
}
const pct = (v, p) => { const s = [...v].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : NaN; };

try {
  for (let t = 0; t < 200; t++) { try { await fetch(`http://127.0.0.1:${port}/healthz`); break; } catch { await new Promise((r) => setTimeout(r, 100)); } }
  const page = await ctx.newPage();
  await page.goto('http://localhost:9/');
  await page.evaluate(async (url) => {
    const { openReplica } = await import('/hivesync.js');
    window.db = await openReplica({ url, name: 'live-bench', shareTabs: false });
    await new Promise((r) => { const f = (s) => { if (s.live) r(); }; window.db.on('status', f); window.db.status().then(f); });
    window.lat = [];
    window.handles = [];
    window.open100 = () => {
      const on = (r) => {
        const now = Date.now();
        const rows = Array.isArray(r.result) ? r.result : r.result ? [r.result] : [];
        const added = new Set([...r.diff.added, ...r.diff.changed]);
        for (const row of rows) {
          if (row?.updated_at && added.has(row.id) && row.properties?.bench) window.lat.push(now - row.updated_at / 1000);
        }
      };
      const q = [];
      for (let k = 0; k < 10; k++) {
        const ns = `n${k}`;
        for (const w of ['sailing', 'tide', 'anchor']) q.push(['search', [{ text: w, ns, limit: 20 }]]);
        q.push(['list', ['entity', ns, { limit: 20 }]], ['list', ['entity', ns, { kind: 'hot', limit: 20 }]]);
        q.push(['get', ['entity', ns, `hot${k}`]], ['get', ['entity', ns, `e${k}`]]);
        q.push(['knn', [{ model: 'm', embedding: [1, 0, 1], k: 5, ns }]]);
        q.push(['neighbors', [ns, `e${k}`, { direction: 'both' }]], ['traverse', [ns, `e${k}`, { depth: 3 }]]);
      }
      window.handles = q.map(([read, args]) => window.db.live(read, args, on));
      return q.length;
    };
    window.closeAll = () => { for (const h of window.handles) h.close(); window.handles = []; };
  }, `ws://127.0.0.1:${port}/v1/sync`);

  // 1. Latency under 1,000 changes/s with 100 live queries.
  const open = await page.evaluate(() => window.open100());
  await new Promise((r) => setTimeout(r, 500));
  const n = Number(secs) * 1000;
  // Ids that sort first (so each new row enters its namespace's first page) and one hot row
  // per namespace updated over and over (its live get).
  await writer({ perMsg: 10, ms: 10, total: n, mode: 'live' });
  await new Promise((r) => setTimeout(r, 1000));
  const lat = await page.evaluate(() => window.lat);
  const runs = await page.evaluate(() => window.handles.map((h) => h.runs));

  // 2. Catch-up apply rate: offline while CATCHUP changes are written, then back; with the 100
  // queries open, and with none.
  const catchUp = async (tag) => {
    await page.evaluate(() => window.db.disconnect());
    await writer({ perMsg: 100, ms: 0, total: Number(catchup), mode: 'catchup', tag });
    const { head } = await (await fetch(`http://127.0.0.1:${port}/healthz`)).json();
    return page.evaluate(async (head) => {
      const t0 = performance.now();
      await window.db.reconnect();
      await new Promise((r) => { const f = (s) => { if (s.live && s.seq >= head) r(); }; window.db.on('status', f); window.db.status().then(f); });
      return performance.now() - t0;
    }, head);
  };
  const withLive = await catchUp('l');
  await page.evaluate(() => window.closeAll());
  const withNone = await catchUp('n');

  // 3. A local write to its live get's callback.
  const local = await page.evaluate(async () => {
    const out = [];
    let t1 = null;
    let next = () => {};
    const h = window.db.live('get', ['entity', 'n0', 'mine'], () => {
      if (t1 !== null) { out.push(performance.now() - t1); t1 = null; next(); }
    });
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 60; i++) {
      const done = new Promise((r) => { next = r; });
      t1 = performance.now();
      window.db.write([{ op: 'upsert', kind: 'entity', ns: 'n0', data: { id: 'mine', kind: 'doc', name: `local ${i}` } }]);
      await done;
    }
    h.close();
    return out;
  });
  console.log(JSON.stringify({
    where: 'chromium', open, secs: Number(secs), changes: n,
    commitToCallback: { n: lat.length, p50: pct(lat, 0.5), p99: pct(lat, 0.99), max: Math.max(...lat) },
    runs: { min: Math.min(...runs), max: Math.max(...runs), total: runs.reduce((a, b) => a + b, 0) },
    catchUp: { changes: Number(catchup), withLiveMs: Math.round(withLive), withNoneMs: Math.round(withNone), ratio: withNone / withLive },
    localWriteToCallback: { n: local.length, p50: pct(local, 0.5), p99: pct(local, 0.99) },
  }));
} finally {
  await ctx.close();
  node.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(profile, { recursive: true, force: true });
}
