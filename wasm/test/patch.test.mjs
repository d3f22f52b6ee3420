// Patch writes in the browser: two replicas edit different fields and property keys of one
// entity and one note while the node is down; once back, both edits survive at the node and in
// both replicas, and a field both edited keeps the edit the node committed last.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appContext, until } from './app-origin.mjs';
import { webDir, freePort, waitHealthy, startNode, stopNode, cli, launch } from './harness.mjs';

/** @param {import('playwright-core').Page} page */
async function open(page, url, name) {
  await page.goto('http://localhost:9/');
  await page.evaluate(async ({ url, name }) => {
    const { openReplica } = await import('/hivesync.js');
    window.db = await openReplica({ url, name, shareTabs: false });
  }, { url, name });
  await until(page, async () => (await window.db.status()).live);
}

test('offline patches of different fields from two replicas both survive; the same field keeps the last commit', { timeout: 180000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-patch-'));
  const db = path.join(dir, 'patch.db');
  cli(db, 'put', 'entity', JSON.stringify({ id: 't1', kind: 'task', name: 'Task', description: 'as created', properties: { shared: 0, keep: true }, tags: ['todo'] }));
  cli(db, 'put', 'note', JSON.stringify({ id: 'n1', name: 'Minutes', content: 'first draft' }));
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  let node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const [a, b] = [await ctx.newPage(), await ctx.newPage()];
    await open(a, url, 'alpha');
    await open(b, url, 'beta');
    await until(a, async () => (await window.db.get('note', 'default', 'n1')) !== null);
    await until(b, async () => (await window.db.get('note', 'default', 'n1')) !== null);

    // The node goes away; each replica edits its own fields, and both edit `shared`.
    await stopNode(node);
    await until(a, async () => !(await window.db.status()).online);
    await until(b, async () => !(await window.db.status()).online);
    await a.evaluate(async () => {
      await window.db.patch('entity', 't1', { name: 'Task, renamed on the train', properties: { shared: 'A', fromA: 1 } });
      await window.db.patch('entity', 't1', { tags: { add: ['urgent'] } });
      await window.db.patch('note', 'n1', { content: 'rewritten by A' });
    });
    await b.evaluate(async () => {
      await window.db.patch('entity', 't1', { description: 'described in the meeting', properties: { shared: 'B', fromB: 2, keep: null } });
      await window.db.patch('note', 'n1', { name: 'Minutes, titled by B' });
    });
    // Each shows its own edits at once.
    const localA = await a.evaluate(() => window.db.get('entity', 'default', 't1'));
    assert.equal(localA.name, 'Task, renamed on the train');
    assert.equal(localA.description, 'as created');

    // Back: A uploads first, then B (so B's `shared` is committed last).
    await b.evaluate(() => window.db.disconnect());
    node = startNode(db, port);
    await waitHealthy(port);
    await until(a, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    await b.evaluate(() => window.db.reconnect());
    await until(b, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    await until(a, async () => (await window.db.get('entity', 'default', 't1'))?.description === 'described in the meeting');

    const atNode = JSON.parse(cli(db, '--json', 'get', 'entity', 't1'));
    const want = {
      name: 'Task, renamed on the train',
      description: 'described in the meeting',
      properties: { shared: 'B', fromA: 1, fromB: 2 },
      tags: ['todo', 'urgent'],
    };
    for (const [k, v] of Object.entries(want)) assert.deepEqual(atNode[k], v, `the node's ${k}`);
    const note = JSON.parse(cli(db, '--json', 'get', 'note', 'n1'));
    assert.equal(note.name, 'Minutes, titled by B');
    assert.equal(note.content, 'rewritten by A');
    for (const p of [a, b]) {
      const here = await p.evaluate(async () => ({ e: await window.db.get('entity', 'default', 't1'), n: await window.db.get('note', 'default', 'n1'), d: await window.db.digest() }));
      for (const [k, v] of Object.entries(want)) assert.deepEqual(here.e[k], v, `a replica's ${k}`);
      assert.equal(here.n.name, note.name);
      assert.equal(here.n.content, note.content);
      assert.equal(here.d.sha256, JSON.parse(cli(db, '--json', 'digest')).sha256, 'the replica equals the node');
    }

    // The demo renames with a patch: the name changes, the description B wrote stays.
    const demo = await ctx.newPage();
    await demo.goto(`http://127.0.0.1:${port}/`);
    await demo.waitForSelector('#recent li[data-id="t1"] b.name', { timeout: 20000 });
    await demo.click('#recent li[data-id="t1"] b.name');
    await demo.keyboard.press('Control+A');
    await demo.keyboard.type('Renamed in the demo');
    await demo.keyboard.press('Enter');
    await until(demo, async () => { const s = await window.db?.status?.(); return s ? s.pending === 0 : false; }).catch(() => {});
    const t0 = Date.now();
    let renamed;
    while (Date.now() - t0 < 15000) {
      renamed = JSON.parse(cli(db, '--json', 'get', 'entity', 't1'));
      if (renamed.name === 'Renamed in the demo') break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(renamed.name, 'Renamed in the demo');
    assert.equal(renamed.description, 'described in the meeting', 'a rename leaves the other fields');
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
