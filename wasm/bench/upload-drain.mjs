// Upload drain: N local writes made offline in a browser replica, then the link back: time
// until none is pending, for each package directory given (served with `serve --web DIR` over
// the node's built-in one), alternating, ROUNDS rounds; medians, and each as a ratio of the
// first directory's (the baseline of the run).
//
//   node wasm/bench/upload-drain.mjs BIN N ROUNDS BASELINE_WEB_DIR OTHER_WEB_DIR...
//
// e.g. the package before a change (`git archive REV wasm/web | tar -x -C /tmp/old`) against
// wasm/web. Headless Chromium (Debian's), the real node, loopback.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
const [bin, n, rounds, ...webs] = [process.argv[2], Number(process.argv[3] ?? 3000), Number(process.argv[4] ?? 3), ...process.argv.slice(5)];
const freePort = () => new Promise((r) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
async function run(web) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'drain-'));
  const port = await freePort();
  const node = spawn(bin, ['--db', path.join(dir, 'd.db'), 'serve', '--listen', `127.0.0.1:${port}`, '--web', web], { stdio: 'ignore' });
  for (let t = 0; t < 200; t++) { try { if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) break; } catch {} await new Promise((r) => setTimeout(r, 50)); }
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/healthz`);
  const out = await page.evaluate(async ({ url, n }) => {
    const { openReplica } = await import('/hivesync.js');
    const db = await openReplica({ url, name: 'drain' });
    const until = async (f) => { while (!(await f())) await new Promise((r) => setTimeout(r, 20)); };
    await until(async () => (await db.status()).live);
    await db.disconnect();
    for (let i = 0; i < n; i++) await db.write([{ op: 'upsert', kind: 'note', data: { id: `n${i}`, content: `note ${i}` } }]);
    const t0 = performance.now();
    await db.reconnect();
    await until(async () => (await db.status()).pending === 0);
    return { ms: Math.round(performance.now() - t0) };
  }, { url: `ws://127.0.0.1:${port}/v1/sync`, n });
  await browser.close();
  node.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
  return out.ms;
}

const times = webs.map(() => []);
for (let r = 0; r < rounds; r++) {
  for (const [k, w] of webs.entries()) times[k].push(await run(w));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const base = median(times[0]);
for (const [k, w] of webs.entries()) {
  const m = median(times[k]);
  console.log(`${w}: ${n} writes drained in ${times[k].join(', ')} ms (median ${m} ms, ${Math.round(n / (m / 1000))} writes/s) = ${(base / m).toFixed(2)}x the first`);
}
