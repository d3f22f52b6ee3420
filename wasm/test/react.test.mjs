// hivesync/react in a real browser: a small React page (React 19, bundled for the test with
// esbuild; the package itself only names React as a peer) renders a live search with
// useLiveQuery and the status with useReplicaStatus, and re-renders when the node writes and
// when the page writes locally.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appContext, until } from './app-origin.mjs';
import { webDir, freePort, waitHealthy, startNode, stopNode, cli, launch } from './harness.mjs';

const PAGE = `
import { createElement as h } from 'react';
import { createRoot } from 'react-dom/client';
import { openReplica } from '/hivesync.js';
import { useLiveQuery, useReplicaStatus } from './react.js';

function App({ db }) {
  const status = useReplicaStatus(db);
  const { result, runs, loading } = useLiveQuery(db, { read: 'search', args: [{ text: 'sailing', ns: 'default' }] });
  return h('div', null,
    h('p', { id: 'state' }, status?.live ? 'live' : 'waiting'),
    h('p', { id: 'runs' }, loading ? 'loading' : String(runs)),
    h('ul', { id: 'hits' }, (result ?? []).map((r) => h('li', { key: r.id }, r.name))));
}

const db = await openReplica({ url: window.NODE_URL, name: 'react', shareTabs: false });
window.db = db;
createRoot(document.getElementById('root')).render(h(App, { db }));
`;

test('useLiveQuery and useReplicaStatus re-render a React page as the node and the page write', { timeout: 180000 }, async () => {
  const esbuild = (await import('esbuild')).default;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-react-'));
  const db = path.join(dir, 'react.db');
  cli(db, 'put', 'entity', JSON.stringify({ id: 'a', kind: 'doc', name: 'sailing knots' }));
  const port = await freePort();
  const node = startNode(db, port);
  // The page's script: React and the hooks bundled; hivesync.js stays the served module.
  const built = await esbuild.build({
    stdin: { contents: PAGE, resolveDir: webDir, sourcefile: 'react-page.js', loader: 'js' },
    bundle: true, format: 'esm', write: false, external: ['/hivesync.js'], target: 'es2022',
    define: { 'process.env.NODE_ENV': '"production"' }, logLevel: 'silent',
  });
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    await ctx.route('http://localhost:9/react-page.js', (r) => r.fulfill({ status: 200, contentType: 'text/javascript', body: built.outputFiles[0].text }));
    await ctx.route('http://localhost:9/react', (r) => r.fulfill({
      status: 200, contentType: 'text/html',
      body: `<!doctype html><div id="root"></div><script>window.NODE_URL = 'ws://127.0.0.1:${port}/v1/sync'</script><script type="module" src="/react-page.js"></script>`,
    }));
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto('http://localhost:9/react');
    await page.waitForFunction(() => document.querySelector('#state')?.textContent === 'live', null, { timeout: 60000 });
    await page.waitForFunction(() => document.querySelectorAll('#hits li').length === 1, null, { timeout: 30000 });
    // The node writes: the list re-renders.
    cli(db, 'put', 'entity', JSON.stringify({ id: 'b', kind: 'doc', name: 'sailing far' }));
    await page.waitForFunction(() => document.querySelectorAll('#hits li').length === 2, null, { timeout: 30000 });
    // The page writes (local first): at once.
    await page.evaluate(() => window.db.write([{ op: 'upsert', kind: 'entity', ns: 'default', data: { id: 'c', kind: 'doc', name: 'sailing home' } }]));
    await page.waitForFunction(() => document.querySelectorAll('#hits li').length === 3, null, { timeout: 30000 });
    const names = await page.$$eval('#hits li', (l) => l.map((x) => x.textContent).sort());
    assert.deepEqual(names, ['sailing far', 'sailing home', 'sailing knots']);
    // A write elsewhere does not run the query again.
    await until(page, async () => (await window.db.status()).pending === 0);
    const runs = await page.textContent('#runs');
    cli(db, 'put', 'note', JSON.stringify({ id: 'n', content: 'sailing, but a note elsewhere' }), '--ns', 'other');
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await page.textContent('#runs'), runs);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
