// End-to-end: the real node, the real CLI, the demo page in headless Chromium (Debian's),
// driven by playwright-core. Needs `bash wasm/build.sh` and `cargo build` first (tests/run.sh
// does both).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const bin = process.env.HIVESYNC_BIN ?? path.join(root, 'target/debug/hivesync');
const chromePath = process.env.CHROMIUM ?? '/usr/bin/chromium';

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

async function waitHealthy(port, ms = 15000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    try { const r = await fetch(`http://127.0.0.1:${port}/healthz`); if (r.ok) return; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('node did not become healthy');
}

function startNode(db, port) {
  const child = spawn(bin, ['--db', db, 'serve', '--listen', `127.0.0.1:${port}`, '--web', path.join(root, 'wasm/web')],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', () => {});
  return child;
}

async function stopNode(child) {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

const cli = (db, ...args) => execFileSync(bin, ['--db', db, ...args], { encoding: 'utf8' });

test('the page syncs live, searches, works offline and resumes from its stored seq', { timeout: 120000 }, async () => {
  assert.ok(fs.existsSync(path.join(root, 'wasm/web/pkg/hivesync_wasm_bg.wasm')), 'run bash wasm/build.sh first');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-e2e-'));
  const db = path.join(dir, 'e2e.db');
  const port = await freePort();
  cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
  let node = startNode(db, port);
  const browser = await chromium.launch({
    executablePath: chromePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    await waitHealthy(port);
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.waitForSelector('#status.live', { timeout: 20000 });
    assert.equal(await page.textContent('#storage'), 'opfs', 'the replica persists in OPFS inside its Worker');
    await page.waitForSelector('#recent li[data-id="ada"]');

    // A write through the CLI appears live.
    cli(db, 'put', 'entity', '{"id":"grace","kind":"person","name":"Grace Hopper","description":"wrote the first compiler"}');
    await page.waitForSelector('#recent li[data-id="grace"]', { timeout: 5000 });

    // Search is answered from the replica.
    await page.fill('#q', 'compiler');
    await page.waitForSelector('#results li[data-id="grace"]', { timeout: 5000 });
    const seqOnline = Number(await page.textContent('#seq'));
    assert.ok(seqOnline >= 2);

    // Node down: the page says offline and still answers.
    await stopNode(node);
    await page.waitForSelector('#status.offline', { timeout: 10000 });
    await page.fill('#q', '');
    await page.fill('#q', 'lovelace');
    await page.waitForSelector('#results li[data-id="ada"]', { timeout: 5000 });

    // Node back (with a write made while it was down), page reloaded: the replica comes back
    // from OPFS and resumes after its stored seq instead of starting over. (The sync client is
    // stopped first, or it would reconnect on its own before the reload.)
    await page.evaluate(() => window.hivesync.disconnect());
    const stored = (await page.evaluate(() => window.hivesync.status())).seq;
    assert.equal(stored, seqOnline);
    cli(db, 'put', 'entity', '{"id":"barbara","kind":"person","name":"Barbara Liskov"}');
    node = startNode(db, port);
    await waitHealthy(port);
    await page.reload();
    // A write made as soon as the replica opens (as in the README's example) waits for the
    // connection instead of failing, and is committed by the node once.
    await page.waitForFunction(() => window.hivesync);
    const wseq = await page.evaluate(() => window.hivesync.write([{ op: 'upsert', kind: 'entity', data: { id: 'early', name: 'Written from the page' } }]));
    assert.ok(wseq > seqOnline, `write acknowledged at seq ${wseq}`);
    assert.match(cli(db, 'get', 'entity', 'early'), /Written from the page/);
    await page.waitForSelector('#recent li[data-id="barbara"]', { timeout: 20000 });
    await page.waitForSelector('#recent li[data-id="early"]', { timeout: 5000 });
    await page.fill('#q', 'hopper');
    await page.waitForSelector('#results li[data-id="grace"]', { timeout: 5000 });
    const st = await page.evaluate(() => window.hivesync.status());
    assert.equal(st.resumedFrom, seqOnline, `resumed from ${st.resumedFrom}, expected the stored seq ${seqOnline}`);
    assert.ok(st.live);
    // The page's copy and the node's file hold the same logical state.
    const mine = await page.evaluate(() => window.hivesync.digest());
    const theirs = JSON.parse(cli(db, '--json', 'digest'));
    assert.equal(mine.sha256, theirs.sha256, 'replica digest equals the node digest');
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
