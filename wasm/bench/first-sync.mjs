// A fresh browser replica's first sync, from the node's database image against the feed's row
// snapshot, in the same run (issue 28): the node (the real binary) serves DB; headless Chromium
// opens a fresh OPFS replica and the clock runs from openReplica until it is live at the
// node's head. First the image is asked for once, so it is built and cached (its build time is
// reported apart: the node builds it once for many replicas). The browser keeps its profile on
// disk (as a user's does: OPFS in a file system, not in memory). Prints one JSON line.
// The row snapshot is given at most CAP seconds (FIRST_SYNC_CAP_S, default 300): at a million
// rows it runs for many minutes, and a replica not live by then reports the cap, a lower bound.
// Usage: node first-sync.mjs BIN DB
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { launchPersistent } from '../test/harness.mjs';
import { serveApp } from '../test/app-origin.mjs';

const [bin, db] = process.argv.slice(2);
const here = path.dirname(new URL(import.meta.url).pathname);
const webDir = path.join(here, '../web');
const port = await new Promise((r) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
const node = spawn(bin, ['--db', db, 'serve', '--listen', `127.0.0.1:${port}`, '--allow-origin', 'http://localhost:9'], { stdio: 'ignore' });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-first-sync-profile-'));
const ctx = await launchPersistent(profile, '--disable-features=LocalNetworkAccessChecks');
await serveApp(ctx, webDir);
try {
  for (let t = 0; t < 200; t++) { try { await fetch(`http://127.0.0.1:${port}/healthz`); break; } catch { await new Promise((r) => setTimeout(r, 100)); } }
  // The image, built once and cached at the node (what the replicas below are served).
  let t = performance.now();
  const warm = await fetch(`http://127.0.0.1:${port}/v1/image`, { headers: { 'accept-encoding': 'gzip' } });
  const head = Number(warm.headers.get('hivesync-at'));
  const imageBytes = Number(warm.headers.get('hivesync-image-bytes'));
  const rows = Number(warm.headers.get('hivesync-image-rows'));
  const wireBytes = Number(warm.headers.get('content-length'));
  await warm.body.cancel();
  const buildMs = Math.round(performance.now() - t);

  /** Open a fresh replica `name`; ms from openReplica to live at `head`, and its events. */
  const cap = Number(process.env.FIRST_SYNC_CAP_S ?? 300) * 1000;
  const firstSync = async (name, image) => {
    const page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    const out = await page.evaluate(async ({ url, name, image, head, cap }) => {
      const { openReplica } = await import('/hivesync.js');
      const events = [];
      const t0 = performance.now();
      const db = await openReplica({ url, name, image, shareTabs: false });
      db.on('bootstrap', (e) => { if (e.phase !== 'download') events.push(e); });
      const live = await new Promise((resolve) => {
        const check = (s) => { if (s.live && s.seq >= head) resolve(true); };
        db.on('status', check);
        db.status().then(check);
        setTimeout(() => resolve(false), cap);
      });
      const ms = Math.round(performance.now() - t0);
      const s = await db.status();
      return { ms, live, seq: s.seq, storage: s.storage, resumedFrom: s.resumedFrom, events };
    }, { url: `ws://127.0.0.1:${port}/v1/sync`, name, image, head, cap });
    await page.close();
    return out;
  };
  const fromImage = await firstSync('from-image', true);
  const fromRows = await firstSync('from-rows', false);
  console.log(JSON.stringify({ where: 'chromium', rows, head, imageBytes, wireBytes, buildMs, fromImage, fromRows }));
} finally {
  await ctx.close();
  node.kill('SIGTERM');
  fs.rmSync(profile, { recursive: true, force: true });
}
