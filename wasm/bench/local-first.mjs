// Local-first writes in headless Chromium against the real node, each against its baseline in
// the same run. Prints one JSON line per part.
//
//   node wasm/bench/local-first.mjs target/release/hivesync [drain=10000] [entities=10000]
//
// 1. write -> visible (env N1 writes, default 1,000, back to back): in the replica's Worker
//    (OPFS), `writeLocal` of one entity then `get` of it, against the baseline: the same row
//    applied by the replica's apply path (`applyChanges`, no outbox) then `get`. Also through
//    the page API (db.write, then db.get: two messages to the Worker and back). Goal: p50 <= 5
//    ms, p99 <= 20 ms.
// 2. drain: N one-op writes made while the node is down, then the node started: writes/s
//    committed at the node (its change log's timestamps) and until the outbox is empty, against
//    the baseline: the same N one-op writes pipelined by a plain WebSocket client (Node's),
//    256 in flight, no origin. Goal: >= 5,000 writes/s committed at the node.
// 3. second tab: with a first tab open (leading, 10,000 entities synced), a second tab's
//    navigation start to its first search answer, against the baseline: the first tab's own
//    reopen (reload) to its first answer. Goal: <= 500 ms.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [bin, drainN = '10000', entities = '10000'] = process.argv.slice(2);
if (!bin) throw new Error('usage: node wasm/bench/local-first.mjs BIN [drain] [entities]');
const here = path.dirname(new URL(import.meta.url).pathname);
const webDir = path.join(here, '../web');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-lf-bench-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
const r2 = (x) => Math.round(x * 100) / 100;
const freePort = () => new Promise((r) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });

async function startNode(db, port) {
  // The package with the session-less exports (`bash wasm/build.sh --raw`) over the built-in one.
  const child = spawn(bin, ['--db', db, 'serve', '--listen', `127.0.0.1:${port}`, '--allow-origin', 'http://localhost:9',
    '--web', new URL('./raw', import.meta.url).pathname], { stdio: 'ignore' });
  for (let t = 0; t < 200; t++) { try { if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return child; } catch { /* not yet */ } await sleep(50); }
  throw new Error('node did not start');
}
async function stopNode(child) {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-features=LocalNetworkAccessChecks'],
});
const types = { '.js': 'text/javascript', '.wasm': 'application/wasm' };
// Part 1's Worker: the wasm Replica driven directly, in OPFS.
const rawWorker = `import init, { Replica } from '/pkg/hivesync_wasm.js';
onmessage = async (e) => {
  await init();
  const r = await Replica.openPersistent('bench-raw-' + e.data.run);
  const n = e.data.n, base = [], local = [];
  let prev = r.appliedSeq();
  for (let i = 0; i < n; i++) {
    const id = 'b' + i, seq = prev + 1;
    const change = [{ seq, tx: seq, ts: 1, ns: 'default', kind: 'entity', op: 'upsert', id,
      data: { id, kind: 'thing', name: 'baseline ' + i, description: '', properties: {}, tags: [], created_at: 1, updated_at: 1 } }];
    const t0 = performance.now();
    prev = r.applyChanges(prev, JSON.stringify(change));
    if (JSON.parse(r.get('entity', 'default', id)) === null) throw new Error('not applied');
    base.push(performance.now() - t0);
  }
  for (let i = 0; i < n; i++) {
    const id = 'l' + i;
    const t0 = performance.now();
    r.writeLocal(JSON.stringify([{ op: 'upsert', kind: 'entity', data: { id, kind: 'thing', name: 'local ' + i } }]));
    if (JSON.parse(r.get('entity', 'default', id)) === null) throw new Error('not written');
    local.push(performance.now() - t0);
  }
  const mem = Replica.openMemory(), memory = [], reads = [];
  for (let i = 0; i < n; i++) {
    const id = 'm' + i;
    const t0 = performance.now();
    mem.writeLocal(JSON.stringify([{ op: 'upsert', kind: 'entity', data: { id, kind: 'thing', name: 'local ' + i } }]));
    if (JSON.parse(mem.get('entity', 'default', id)) === null) throw new Error('not written');
    memory.push(performance.now() - t0);
    const t1 = performance.now();
    r.get('entity', 'default', 'l' + i);
    reads.push(performance.now() - t1);
  }
  const empty = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    r.applyChanges(r.appliedSeq(), '[]');
    empty.push(performance.now() - t0);
  }
  postMessage({ base, local, memory, reads, empty });
};`;

// A profile on disk, as a user's browser has: an incognito context (Playwright's default)
// keeps OPFS in memory, with a cost per write that grows with the file.
let profiles = 0;
async function context() {
  const ctx = await chromium.launchPersistentContext(path.join(dir, `profile-${profiles++}`), {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-features=LocalNetworkAccessChecks'],
  });
  await ctx.route('http://localhost:9/**', (r) => {
    const p = new URL(r.request().url()).pathname;
    if (p === '/') return r.fulfill({ status: 200, contentType: 'text/html', body: '<!doctype html><title>bench</title>' });
    if (p === '/raw-worker.js') return r.fulfill({ status: 200, contentType: 'text/javascript', body: rawWorker });
    const file = path.join(webDir, path.normalize(p));
    if (!file.startsWith(webDir) || !fs.existsSync(file)) return r.fulfill({ status: 404, body: 'no' });
    r.fulfill({ status: 200, body: fs.readFileSync(file), contentType: types[path.extname(file)] ?? 'application/octet-stream' });
  });
  return ctx;
}
const openIn = (page, url, name) => page.evaluate(async ({ url, name }) => {
  const { openReplica } = await import('/hivesync.js');
  window.db = await openReplica({ url, name });
  const t0 = Date.now();
  while (!(await window.db.status()).live) { if (Date.now() - t0 > 120000) throw new Error('not live'); await new Promise((r) => setTimeout(r, 50)); }
}, { url, name });

try {
  // ---- 1. write -> visible
  {
    const db = path.join(dir, 'p1.db');
    execFileSync(bin, ['--db', db, 'init']);
    const port = await freePort();
    const node = await startNode(db, port);
    const ctx = await context();
    const page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    const n = Number(process.env.N1 ?? 1000);
    const raw = await page.evaluate((n) => new Promise((resolve, reject) => {
      const w = new Worker('/raw-worker.js', { type: 'module' });
      // The Worker lets go of the OPFS pool before the page's replica opens it.
      w.onmessage = (e) => { w.terminate(); resolve(e.data); };
      w.onerror = (e) => reject(new Error(e.message));
      w.postMessage({ n, run: Date.now() });
    }), n);
    await openIn(page, `ws://127.0.0.1:${port}/v1/sync`, 'bench-api');
    const storage = (await page.evaluate(() => window.db.status())).storage;
    if (storage !== 'opfs') throw new Error(`the page's replica is in ${storage}, not OPFS`);
    const api = await page.evaluate(async (n) => {
      const ms = [];
      for (let i = 0; i < n; i++) {
        const id = 'api' + i;
        const t0 = performance.now();
        await window.db.write([{ op: 'upsert', kind: 'entity', data: { id, kind: 'thing', name: 'api ' + i } }]);
        if (!(await window.db.get('entity', 'default', id))) throw new Error('not visible');
        ms.push(performance.now() - t0);
      }
      return ms;
    }, n);
    console.log(JSON.stringify({
      part: 'write -> visible (ms)', n,
      baseline_apply: { p50: r2(pct(raw.base, 0.5)), p99: r2(pct(raw.base, 0.99)) },
      write_local: { p50: r2(pct(raw.local, 0.5)), p99: r2(pct(raw.local, 0.99)) },
      write_local_in_memory: { p50: r2(pct(raw.memory, 0.5)), p99: r2(pct(raw.memory, 0.99)) },
      empty_commit: { p50: r2(pct(raw.empty, 0.5)), p99: r2(pct(raw.empty, 0.99)) },
      get_opfs: { p50: r2(pct(raw.reads, 0.5)), p99: r2(pct(raw.reads, 0.99)) },
      page_api: { p50: r2(pct(api, 0.5)), p99: r2(pct(api, 0.99)), p999: r2(pct(api, 0.999)), max: r2(Math.max(...api)) },
      ratio_p50: r2(pct(raw.local, 0.5) / pct(raw.base, 0.5)),
      goal: 'page_api p50 <= 5, p99 <= 20',
    }));
    await ctx.close();
    await stopNode(node);
  }

  // ---- 2. drain
  {
    const n = Number(drainN);
    const db = path.join(dir, 'p2.db');
    execFileSync(bin, ['--db', db, 'init']);
    const port = await freePort();
    let node = await startNode(db, port);
    const ctx = await context();
    const page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    // Baseline: a plain WebSocket client in the same page, n one-op writes, 256 in flight.
    const base = await page.evaluate(({ url, n }) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url, 'hivesync.v1.json');
      let sent = 0, done = 0, t0 = 0;
      const send = () => {
        while (sent < n && sent - done < 256) {
          ws.send(JSON.stringify({ type: 'write', req: 'w' + sent, ops: [{ op: 'upsert', kind: 'entity', data: { id: 'base' + sent, kind: 'thing', name: 'baseline ' + sent } }] }));
          sent++;
        }
      };
      ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', client: 'bench' }));
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.type === 'welcome') { t0 = performance.now(); send(); return; }
        if (m.type === 'error') { reject(new Error(m.message)); return; }
        if (m.type === 'written' && ++done === n) { const s = (performance.now() - t0) / 1000; ws.close(); resolve(s); return; }
        send();
      };
      ws.onerror = () => reject(new Error('socket error'));
    }), { url: `ws://127.0.0.1:${port}/v1/sync`, n });
    await openIn(page, `ws://127.0.0.1:${port}/v1/sync`, 'bench-drain');
    await stopNode(node);
    const tLocal = await page.evaluate(async (n) => {
      while ((await window.db.status()).online) await new Promise((r) => setTimeout(r, 20));
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await window.db.write([{ op: 'upsert', kind: 'entity', data: { id: 'off' + i, kind: 'thing', name: 'offline ' + i } }]);
      return (performance.now() - t0) / 1000;
    }, n);
    const t0 = performance.now();
    node = await startNode(db, port);
    await page.evaluate(async () => { while ((await window.db.status()).pending > 0) await new Promise((r) => setTimeout(r, 20)); });
    const untilEmpty = (performance.now() - t0) / 1000;
    const ts = execFileSync(bin, ['--db', db, '--json', 'changes', '--limit', String(3 * n)], { encoding: 'utf8', maxBuffer: 1 << 28 })
      .split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((c) => c.id.startsWith('off')).map((c) => c.ts);
    const atNode = (Math.max(...ts) - Math.min(...ts)) / 1e6;
    console.log(JSON.stringify({
      part: 'drain', n, landed: ts.length,
      offline_writes_per_s: Math.round(n / tLocal),
      committed_at_node_per_s: Math.round(n / atNode),
      node_start_to_empty_outbox_s: r2(untilEmpty),
      baseline_plain_client_per_s: Math.round(n / base),
      ratio: r2(base / atNode),
      goal: 'committed_at_node_per_s >= 5000',
    }));
    await ctx.close();
    await stopNode(node);
  }

  // ---- 3. second tab
  {
    const n = Number(entities);
    const db = path.join(dir, 'p3.db');
    const lines = [];
    for (let i = 0; i < n; i++) lines.push(JSON.stringify({ op: 'upsert', kind: 'entity', data: { id: `e${i}`, kind: 'thing', name: `entity ${i} ${i % 10 === 0 ? 'wombat' : 'item'}` } }));
    fs.writeFileSync(path.join(dir, 'rows.jsonl'), lines.join('\n'));
    execFileSync(bin, ['--db', db, 'import', path.join(dir, 'rows.jsonl')]);
    const port = await freePort();
    const node = await startNode(db, port);
    const url = `ws://127.0.0.1:${port}/v1/sync`;
    const ctx = await context();
    const first = await ctx.newPage();
    await first.goto('http://localhost:9/');
    await openIn(first, url, 'bench-tabs');
    const firstAnswer = (page) => page.evaluate(async (url) => {
      const { openReplica } = await import('/hivesync.js');
      const db = await openReplica({ url, name: 'bench-tabs' });
      const hits = await db.search({ text: 'wombat', limit: 10 });
      if (!hits.length) throw new Error('no answer');
      window.db = db;
      return { ms: performance.now(), tab: db.opened.tab };
    }, url);
    const second = [];
    const alone = [];
    for (let v = 0; v < 5; v++) {
      const p = await ctx.newPage();
      await p.goto('http://localhost:9/');
      second.push(await firstAnswer(p));
      await p.close();
    }
    // Baseline: the leading tab itself reloads (its Worker reopens the OPFS file).
    for (let v = 0; v < 5; v++) {
      await first.goto('http://localhost:9/');
      alone.push(await firstAnswer(first));
    }
    console.log(JSON.stringify({
      part: 'open to first answer (ms)', entities: n,
      second_tab: second.map((x) => Math.round(x.ms)), second_tab_roles: [...new Set(second.map((x) => x.tab))],
      baseline_leader_reopen: alone.map((x) => Math.round(x.ms)),
      second_tab_median: Math.round(pct(second.map((x) => x.ms), 0.5)),
      baseline_median: Math.round(pct(alone.map((x) => x.ms), 0.5)),
      goal: 'second_tab <= 500',
    }));
    await ctx.close();
    await stopNode(node);
  }
} finally {
  await browser.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
