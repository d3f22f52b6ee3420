// Sign-in with an identity provider, in the browser: a replica whose tokens come from the
// page's getToken (5-second JWTs signed by `hivesync jwt sign`, verified by the node's [jwt]
// section) renews across several expiries with writes pending, and while signed out stays
// readable with its writes kept, then catches up once a token comes again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appContext, until } from './app-origin.mjs';
import { bin, webDir, freePort, waitHealthy, startNode, stopNode, cli, launch } from './harness.mjs';

test('getToken supplies 5-second tokens, renewed on the open connection; signed out, the replica keeps its writes', { timeout: 180000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-signin-'));
  const db = path.join(dir, 'signin.db');
  const keys = path.join(dir, 'keys');
  const jwtLines = execFileSync(bin, ['jwt', 'keygen', '--dir', keys], { encoding: 'utf8' });
  const config = path.join(dir, 'node.toml');
  fs.writeFileSync(config, `name = "signin"\nanonymous = "never"\n${jwtLines}leeway_secs = 0\nread = ["user:{sub}"]\nwrite = ["user:{sub}"]\n`);
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  const node = startNode(db, port, '--config', config);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  let minted = 0;
  let signedIn = true;
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // The app's sign-in: a fresh 5-second token each time, or a failure while signed out.
    await page.exposeFunction('mintToken', () => {
      if (!signedIn) throw new Error('the identity provider says: signed out');
      minted += 1;
      return execFileSync(bin, ['jwt', 'sign', '--key', path.join(keys, 'private.pem'), '--sub', 'alice', '--ttl', '5s'], { encoding: 'utf8' }).trim();
    });
    await page.goto('http://localhost:9/');
    await page.evaluate(async (url) => {
      const { openReplica } = await import('/hivesync.js');
      window.__seen = [];
      window.db = await openReplica({ url, name: 'signin', getToken: () => window.mintToken() });
      window.db.on('*', (ev) => window.__seen.push(ev));
    }, url);
    await until(page, async () => (await window.db.status()).live);

    // Three expiries and more, a write every 700 ms: the connection lives on through renewals.
    const t0 = Date.now();
    let n = 0;
    while (Date.now() - t0 < 17000) {
      n += 1;
      await page.evaluate((i) => window.db.write([{ op: 'upsert', kind: 'note', ns: 'user:alice', data: { id: `n${i}`, content: `note ${i}` } }]), n);
      await new Promise((r) => setTimeout(r, 700));
    }
    await until(page, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    assert.ok(minted >= 4, `getToken was called ${minted} times over 17 s of 5-second tokens`);
    const seen = await page.evaluate(() => window.__seen);
    assert.equal(seen.filter((e) => e.type === 'token_needed').length, 0, 'every token was renewed before it expired');
    assert.equal(seen.filter((e) => e.type === 'offline').length, 0, 'the connection never dropped');
    for (let i = 1; i <= n; i++) {
      const row = JSON.parse(cli(db, '--json', 'get', 'note', '--ns', 'user:alice', `n${i}`));
      assert.equal(row.content, `note ${i}`);
    }
    const changes = cli(db, '--json', 'changes', '--limit', '10000').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.equal(changes.filter((c) => c.kind === 'note').length, n, 'each write landed once');

    // Signed out: the token runs out and no new one comes. The replica stays readable, takes
    // writes (pending), and says why.
    signedIn = false;
    await until(page, async () => { const s = await window.db.status(); return s.signedOut !== null && !s.online; }, undefined, 20000);
    const out = await page.evaluate(async () => {
      await window.db.write([{ op: 'upsert', kind: 'note', ns: 'user:alice', data: { id: 'offline1', content: 'written signed out' } }]);
      return { status: await window.db.status(), read: await window.db.get('note', 'user:alice', 'n1') };
    });
    assert.equal(out.read.content, 'note 1', 'readable while signed out');
    assert.equal(out.status.pending, 1, 'the write is kept, pending');
    assert.match(out.status.signedOut, /signed out|expired|unauthorized/);
    assert.equal(out.status.error, null, 'not stopped for good');

    // Signed in again: the next try of getToken connects, and the pending write lands once.
    signedIn = true;
    await until(page, async () => { const s = await window.db.status(); return s.live && s.pending === 0 && s.signedOut === null; }, undefined, 45000);
    const row = JSON.parse(cli(db, '--json', 'get', 'note', '--ns', 'user:alice', 'offline1'));
    assert.equal(row.content, 'written signed out');
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
