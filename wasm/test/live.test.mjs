// Live queries in Chromium against the real node (issue 29): live search, knn, neighbors and
// list answers follow a CLI write at the node, a local write made offline, and a refused write
// taken back; writes to another namespace or kind run none of them again; a second tab's live
// query follows too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appContext, until } from './app-origin.mjs';
import { webDir, freePort, waitHealthy, startNode, stopNode, cli, launch, tokenConfig } from './harness.mjs';

const TOKEN = 'live-test-secret-0123456789';

test('live search, knn, neighbors and list follow the node, local writes and refusals; other writes run none of them', { timeout: 240000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-live-'));
  const db = path.join(dir, 'live.db');
  // The page may write `default` only: a write to `ro` is refused by the node.
  const config = tokenConfig(dir, 'live', TOKEN, { write: ['default'] });
  cli(db, 'put', 'entity', JSON.stringify({ id: 'a', kind: 'doc', name: 'sailing knots' }));
  cli(db, 'put', 'entity', JSON.stringify({ id: 'b', kind: 'doc', name: 'harbour' }));
  cli(db, 'put', 'vector', JSON.stringify({ subject: 'a', model: 'm', embedding: [1, 0, 0] }));
  cli(db, 'put', 'note', JSON.stringify({ id: 'n1', content: 'first note' }));
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  const node = startNode(db, port, '--config', config);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    await page.evaluate(async ({ url, token }) => {
      const { openReplica } = await import('/hivesync.js');
      window.db = await openReplica({ url, token, name: 'live' });
      window.got = {};
      window.h = {};
      const keep = (name, read, args) => {
        window.got[name] = [];
        window.h[name] = window.db.live(read, args, (r) => window.got[name].push(r), (e) => window.got[name].push({ error: e.message }));
      };
      keep('search', 'search', [{ text: 'sailing', ns: 'default' }]);
      keep('knn', 'knn', [{ model: 'm', embedding: [1, 0, 0], k: 5, ns: 'default' }]);
      keep('neighbors', 'neighbors', ['default', 'a', { direction: 'both' }]);
      keep('notes', 'list', ['note', 'default']);
      keep('ro', 'list', ['entity', 'ro']);
    }, { url, token: TOKEN });
    await until(page, async () => (await window.db.status()).live && window.got.knn.length > 0 && window.got.search.at(-1)?.result.length === 1);
    const last = (name) => page.evaluate((n) => window.got[n].at(-1), name);
    const runs = () => page.evaluate(() => Object.fromEntries(Object.entries(window.h).map(([k, h]) => [k, h.runs])));

    // A write at the node: the search follows, with what came.
    cli(db, 'put', 'entity', JSON.stringify({ id: 'c', kind: 'doc', name: 'sailing far' }));
    await until(page, () => window.got.search.at(-1).result.length === 2);
    assert.deepEqual((await last('search')).diff.added, ['entity/default/c']);
    // An edge at the node: the neighbours follow; a vector: the knn.
    cli(db, 'put', 'edge', JSON.stringify({ id: 'ab', source: 'a', target: 'b', relation: 'near' }));
    await until(page, () => window.got.neighbors.at(-1).result.length === 1);
    cli(db, 'put', 'vector', JSON.stringify({ subject: 'c', model: 'm', embedding: [0.9, 0.1, 0] }));
    await until(page, () => window.got.knn.at(-1).result.length === 2);
    assert.deepEqual((await last('knn')).diff.added, ['default/c']);

    // Writes elsewhere (another namespace, another kind): nothing runs again.
    const before = await runs();
    cli(db, 'put', 'entity', JSON.stringify({ id: 'x', kind: 'doc', name: 'sailing elsewhere' }), '--ns', 'other');
    cli(db, 'put', 'event', JSON.stringify({ verb: 'looked', target: 'a' }));
    await until(page, async (h) => (await window.db.status()).seq >= h, jsonHead(db));
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await runs(), before, 'no live query ran for writes it cannot see');

    // A local write, offline: the list follows at once.
    await page.evaluate(() => window.db.disconnect());
    await page.evaluate(() => window.db.write([{ op: 'upsert', kind: 'note', ns: 'default', data: { id: 'n2', content: 'written offline' } }]));
    await until(page, () => window.got.notes.at(-1).result.length === 2);
    assert.deepEqual((await last('notes')).diff.added, ['n2']);
    // A write the node refuses (the token may not write `ro`): shown, then taken back.
    await page.evaluate(() => window.db.write([{ op: 'upsert', kind: 'entity', ns: 'ro', data: { id: 'r1', kind: 'doc', name: 'not allowed' } }]));
    await until(page, () => window.got.ro.at(-1).result.length === 1);
    await page.evaluate(() => window.db.reconnect());
    await until(page, () => window.got.ro.at(-1).result.length === 0 && window.got.ro.at(-1).diff.removed[0] === 'r1');
    await until(page, async () => (await window.db.status()).pending === 0);

    // A second tab (a follower of this one): its live query follows too.
    const tab2 = await ctx.newPage();
    await tab2.goto('http://localhost:9/');
    await tab2.evaluate(async ({ url, token }) => {
      const { openReplica } = await import('/hivesync.js');
      window.db = await openReplica({ url, token, name: 'live' });
      window.seen = [];
      window.db.live('search', [{ text: 'sailing', ns: 'default' }], (r) => window.seen.push(r));
    }, { url, token: TOKEN });
    assert.equal(await tab2.evaluate(() => window.db.opened.tab), 'follower');
    await until(tab2, () => window.seen.length === 1);
    cli(db, 'put', 'entity', JSON.stringify({ id: 'd', kind: 'doc', name: 'sailing on' }));
    await until(tab2, () => window.seen.at(-1).result.length === 3);

    // Closed: no more answers.
    await page.evaluate(() => window.h.search.close());
    const n = await page.evaluate(() => window.got.search.length);
    cli(db, 'put', 'entity', JSON.stringify({ id: 'e', kind: 'doc', name: 'sailing again' }));
    await until(tab2, () => window.seen.at(-1).result.length === 4);
    assert.equal(await page.evaluate(() => window.got.search.length), n);

    // The leader tab goes: the second tab leads now, its live query opened again in its own
    // Worker (one extra answer at most), and it goes on following.
    const before2 = await tab2.evaluate(() => window.seen.length);
    await page.close();
    await until(tab2, () => window.db.opened.tab === 'leader', undefined, 60000);
    await until(tab2, async () => (await window.db.status()).live, undefined, 60000);
    cli(db, 'put', 'entity', JSON.stringify({ id: 'f', kind: 'doc', name: 'sailing after the hand-over' }));
    await until(tab2, () => window.seen.at(-1).result.length === 5, undefined, 60000);
    assert.ok((await tab2.evaluate(() => window.seen.length)) - before2 <= 3, 'one extra answer at most, then the new row');
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function jsonHead(db) {
  const lines = cli(db, '--json', 'changes', '--from', '0', '--limit', '100000').trim().split('\n').filter(Boolean);
  return JSON.parse(lines.at(-1)).seq;
}
