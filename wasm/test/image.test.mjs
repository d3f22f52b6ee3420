// First sync from a database image (issue 28), in Chromium against the real node: a fresh OPFS
// replica over 100,000 rows starts from GET /v1/image (not the row snapshot), holds exactly the
// node's rows (same digest) with its full-text, vector and graph reads answering as the node's
// do, goes live and keeps syncing. Then, with writes pending while it is offline, the node's
// log is trimmed past its cursor: it starts again from a fresh image, and the pending writes are
// carried over and land at the node exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appContext, until } from './app-origin.mjs';
import { webDir, freePort, waitHealthy, startNode, stopNode, cli, launch, tokenConfig } from './harness.mjs';

const TOKEN = 'image-test-secret-0123456789';
const words = ['sailing', 'knots', 'harbour', 'tide', 'compass', 'anchor', 'rigging', 'chart', 'keel', 'mast', 'ébène', 'galley'];
const vec = (i) => Array.from({ length: 8 }, (_, k) => Math.sin(i * 0.7 + k * 1.3));

/** 70,000 entities, 20,000 notes, 5,000 edges and 5,000 vectors: 100,000 rows. */
function rows(file) {
  const w = (i, k) => words[(i * k + k) % words.length];
  const lines = [];
  for (let i = 0; i < 70000; i++) {
    lines.push({ op: 'upsert', kind: 'entity', ns: 'default', data: { id: `e${i}`, kind: 'doc', name: `${w(i, 3)} ${w(i, 5)} ${i}`, description: `about ${w(i, 7)} and ${w(i, 11)}, number ${i}`, tags: [w(i, 2)] } });
  }
  for (let i = 0; i < 20000; i++) lines.push({ op: 'upsert', kind: 'note', ns: 'default', data: { id: `n${i}`, name: `log ${i}`, content: `the ${w(i, 13)} by the ${w(i, 17)}` } });
  for (let i = 0; i < 5000; i++) lines.push({ op: 'upsert', kind: 'edge', ns: 'default', data: { id: `x${i}`, source: `e${i}`, target: `e${i + 1}`, relation: 'next' } });
  for (let i = 0; i < 5000; i++) lines.push({ op: 'upsert', kind: 'vector', ns: 'default', data: { subject: `e${i}`, model: 'm8', kind: 'doc', embedding: vec(i) } });
  fs.writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n'));
}

const digestAt = (db) => JSON.parse(cli(db, '--json', 'digest')).sha256;
const jsonLines = (s) => s.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));

test('a fresh replica over 100,000 rows starts from an image; pending writes survive a forced re-bootstrap and land once', { timeout: 600000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-image-'));
  const db = path.join(dir, 'image.db');
  // The log keeps 500 changes, trimmed every second: a replica offline for more falls behind.
  const config = tokenConfig(dir, 'image-e2e', TOKEN, { extra: '[retention]\nmax_changes = 500\ninterval_secs = 1\n' });
  rows(path.join(dir, 'rows.jsonl'));
  cli(db, 'import', path.join(dir, 'rows.jsonl'));
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  let node = startNode(db, port, '--config', config);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    await page.evaluate(async ({ url, token }) => {
      const { openReplica } = await import('/hivesync.js');
      window.events = [];
      window.db = await openReplica({ url, token, name: 'img', shareTabs: false });
      window.db.on('*', (e) => { if (e.type === 'bootstrap' || e.type === 'welcome') window.events.push(e); });
    }, { url, token: TOKEN });
    await until(page, async () => (await window.db.status()).live, undefined, 300000);

    // It started from the image: downloaded with progress, then subscribed from the image's seq.
    const events = await page.evaluate(() => window.events);
    const done = events.find((e) => e.type === 'bootstrap' && e.phase === 'done');
    assert.ok(done, `a bootstrap from the image: ${JSON.stringify(events.slice(0, 5))}`);
    assert.equal(done.rows, 100000);
    assert.ok(events.some((e) => e.phase === 'download' && e.bytes > 0 && e.totalBytes >= e.bytes), 'download progress');
    assert.ok(!events.some((e) => e.phase === 'fallback'), 'no fallback to the row snapshot');
    const welcome = events.find((e) => e.type === 'welcome');
    assert.equal(welcome.from, done.seq, 'the subscription resumed after the image, no row snapshot');
    const st = await page.evaluate(() => window.db.status());
    assert.equal(st.storage, 'opfs');

    // The same rows as the node, and its reads answer as the node's do.
    assert.equal(await page.evaluate(() => window.db.digest().then((d) => d.sha256)), digestAt(db));
    const ids = (hits, key = 'id') => hits.map((h) => h[key]);
    const search = jsonLines(cli(db, '--json', 'search', 'harbour tide', '--limit', '10'));
    assert.equal(search.length, 10);
    assert.deepEqual(ids(await page.evaluate(() => window.db.search({ text: 'harbour tide', limit: 10 }))), ids(search));
    const q = vec(4321).map((x) => x + 0.01);
    const knn = jsonLines(cli(db, '--json', 'knn', '--model', 'm8', '--vector', JSON.stringify(q), '-k', '5'));
    assert.equal(knn.length, 5);
    assert.deepEqual(ids(await page.evaluate((q) => window.db.knn({ model: 'm8', embedding: q, k: 5 }), q), 'subject'), ids(knn, 'subject'));
    const hops = await page.evaluate(() => window.db.traverse('default', 'e10', { depth: 3 }));
    assert.deepEqual(hops.map((h) => h.node), ['e11', 'e12', 'e13']);

    // It keeps syncing.
    cli(db, 'put', 'entity', JSON.stringify({ id: 'after', kind: 'doc', name: 'written after the image' }));
    await until(page, async () => (await window.db.get('entity', 'default', 'after')) !== null);

    // Offline, it writes; meanwhile the node moves on and trims its log past the replica's seq.
    await page.evaluate(() => window.db.disconnect());
    const before = await page.evaluate(() => window.db.status().then((s) => s.seq));
    await page.evaluate(async () => {
      await window.db.write([{ op: 'upsert', kind: 'entity', ns: 'default', data: { id: 'offline-1', kind: 'doc', name: 'made offline' } }]);
      await window.db.patch('entity', 'e5', { name: 'renamed offline' });
      await window.db.write([{ op: 'upsert', kind: 'edge', ns: 'default', data: { id: 'offline-edge', source: 'offline-1', target: 'e5', relation: 'about' } }]);
    });
    assert.equal((await page.evaluate(() => window.db.status())).pending, 3);
    const more = [];
    for (let i = 0; i < 1200; i++) more.push(JSON.stringify({ op: 'upsert', kind: 'note', ns: 'default', data: { id: `later${i}`, content: `written while the replica was away ${i}` } }));
    fs.writeFileSync(path.join(dir, 'more.jsonl'), more.join('\n'));
    cli(db, 'import', path.join(dir, 'more.jsonl'), '--batch', '1');
    // Trimmed past the replica's cursor: the oldest change left is above it.
    for (let t = 0; ; t++) {
      const first = jsonLines(cli(db, '--json', 'changes', '--from', '0', '--limit', '1'))[0];
      if (first && first.seq > before + 1) break;
      if (t > 100) throw new Error('the node did not trim its log');
      await new Promise((r) => setTimeout(r, 200));
    }
    const headBefore = jsonLines(cli(db, '--json', 'changes', '--from', '0', '--limit', '100000')).at(-1).seq;
    await page.evaluate(() => { window.events = []; return window.db.reconnect(); });
    await until(page, async () => { const s = await window.db.status(); return s.live && s.pending === 0; }, undefined, 120000);
    const again = await page.evaluate(() => window.events);
    const redone = again.find((e) => e.type === 'bootstrap' && e.phase === 'done');
    assert.ok(redone, `fell behind: a fresh image: ${JSON.stringify(again.slice(0, 6))}`);
    assert.equal(redone.pending, 3, 'the pending writes were carried over');

    // Each pending write landed once: one change each in the log since.
    const since = jsonLines(cli(db, '--json', 'changes', '--from', String(headBefore), '--limit', '100000'));
    const count = (kind, id) => since.filter((c) => c.kind === kind && c.id === id).length;
    assert.equal(count('entity', 'offline-1'), 1);
    assert.equal(count('entity', 'e5'), 1);
    assert.equal(count('edge', 'offline-edge'), 1);
    assert.equal(JSON.parse(cli(db, '--json', 'get', 'entity', 'e5')).name, 'renamed offline');
    await until(page, async () => (await window.db.get('note', 'default', 'later1199')) !== null);
    assert.equal(await page.evaluate(() => window.db.digest().then((d) => d.sha256)), digestAt(db));

    // Reopened (a reload), it is the image's copy that opens, with nothing to fetch again.
    await page.evaluate(() => window.db.close());
    await page.reload();
    await page.evaluate(async ({ url, token }) => {
      const { openReplica } = await import('/hivesync.js');
      window.events = [];
      window.db = await openReplica({ url, token, name: 'img', shareTabs: false });
      window.db.on('*', (e) => { if (e.type === 'bootstrap') window.events.push(e); });
    }, { url, token: TOKEN });
    await until(page, async () => (await window.db.status()).live);
    assert.deepEqual(await page.evaluate(() => window.events), []);
    assert.equal(await page.evaluate(() => window.db.digest().then((d) => d.sha256)), digestAt(db));
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a cut download falls back to the row snapshot; a page closed mid-download leaves the replica and its pending writes whole', { timeout: 300000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-image-cut-'));
  const db = path.join(dir, 'cut.db');
  const lines = [];
  for (let i = 0; i < 3000; i++) lines.push(JSON.stringify({ op: 'upsert', kind: 'entity', ns: 'default', data: { id: `e${i}`, kind: 'doc', name: `${words[i % words.length]} ${i}` } }));
  fs.writeFileSync(path.join(dir, 'rows.jsonl'), lines.join('\n'));
  cli(db, 'import', path.join(dir, 'rows.jsonl'));
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  const node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  let stall = null;
  const open = async (page, opts) => {
    await page.goto('http://localhost:9/');
    await page.evaluate(async (opts) => {
      const { openReplica } = await import('/hivesync.js');
      window.events = [];
      window.db = await openReplica({ shareTabs: false, ...opts });
      window.db.on('*', (e) => { if (e.type === 'bootstrap') window.events.push(e); });
    }, opts);
  };
  try {
    await waitHealthy(port);
    // 1. The image arrives cut short (the headers promise more than comes): the replica says
    // so, starts from the row snapshot instead, in OPFS and in memory alike.
    for (const persist of [true, false]) {
      const ctx = await appContext(browser, webDir);
      await ctx.route(`http://127.0.0.1:${port}/v1/image**`, async (r) => {
        const res = await r.fetch();
        const body = await res.body();
        r.fulfill({ status: 200, headers: { ...res.headers(), 'content-encoding': 'identity', 'access-control-allow-origin': '*' }, body: body.subarray(0, body.length >> 1) });
      });
      const page = await ctx.newPage();
      await open(page, { url, name: 'cut', persist });
      await until(page, async () => (await window.db.status()).live, undefined, 120000);
      const events = await page.evaluate(() => window.events);
      const fallback = events.find((e) => e.phase === 'fallback');
      assert.ok(fallback, `persist ${persist}: ${JSON.stringify(events)}`);
      assert.match(fallback.message, /incomplete|bytes/);
      assert.ok(!events.some((e) => e.phase === 'done'));
      assert.equal((await page.evaluate(() => window.db.status())).resumedFrom, null, 'the row snapshot');
      assert.equal(await page.evaluate(() => window.db.digest().then((d) => d.sha256)), digestAt(db));
      await ctx.close();
    }

    // 2. A page closed while the image downloads: its pending write and its old copy stay; the
    // next open starts again and finishes.
    const ctx = await appContext(browser, webDir);
    const page = await ctx.newPage();
    // Written against a node that is not there yet (nothing listens at that port).
    const dead = `ws://127.0.0.1:${await freePort()}/v1/sync`;
    await open(page, { url: dead, name: 'closed' });
    await page.evaluate(() => window.db.write([{ op: 'upsert', kind: 'entity', ns: 'default', data: { id: 'mine', kind: 'doc', name: 'written before any sync' } }]));
    // An image server that sends the headers and the first 64 KiB of the node's image, then
    // nothing more: the page is closed while its replica is writing the image.
    const http = await import('node:http');
    let started;
    const streaming = new Promise((r) => { started = r; });
    stall = http.createServer(async (req, res) => {
      const r = await fetch(`http://127.0.0.1:${port}/v1/image`);
      const body = new Uint8Array(await r.arrayBuffer());
      res.writeHead(200, {
        'access-control-allow-origin': '*', 'access-control-expose-headers': 'Hivesync-At, Hivesync-Image-Bytes, Hivesync-Image-Rows',
        'hivesync-at': r.headers.get('hivesync-at'), 'hivesync-image-bytes': r.headers.get('hivesync-image-bytes'),
        'content-length': String(body.length),
      });
      res.write(body.subarray(0, 65536), () => started());
    }).listen(0, '127.0.0.1');
    await new Promise((r) => stall.once('listening', r));
    const stalled = `ws://127.0.0.1:${stall.address().port}/v1/sync`;
    await page.evaluate(async (url) => {
      const { openReplica } = await import('/hivesync.js');
      await window.db.close();
      window.events = [];
      window.db = await openReplica({ url, name: 'closed', shareTabs: false });
      window.db.on('*', (e) => { if (e.type === 'bootstrap') window.events.push(e); });
    }, stalled);
    await streaming;
    await until(page, () => window.events.some((e) => e.phase === 'download' && e.bytes > 0));
    await page.close();
    stall.closeAllConnections();
    stall.close();
    const again = await ctx.newPage();
    await open(again, { url: dead, name: 'closed' });
    assert.equal((await again.evaluate(() => window.db.pending())).length, 1, 'the pending write is still there');
    assert.equal((await again.evaluate(() => window.db.get('entity', 'default', 'mine'))).name, 'written before any sync');
    await again.evaluate(async (url) => {
      const { openReplica } = await import('/hivesync.js');
      await window.db.close();
      window.events = [];
      window.db = await openReplica({ url, name: 'closed', shareTabs: false });
      window.db.on('*', (e) => { if (e.type === 'bootstrap') window.events.push(e); });
    }, url);
    await until(again, async () => { const s = await window.db.status(); return s.live && s.pending === 0; }, undefined, 120000);
    assert.equal(JSON.parse(cli(db, '--json', 'get', 'entity', 'mine')).name, 'written before any sync');
    assert.equal(await again.evaluate(() => window.db.digest().then((d) => d.sha256)), digestAt(db));
  } finally {
    stall?.closeAllConnections();
    stall?.close();
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
