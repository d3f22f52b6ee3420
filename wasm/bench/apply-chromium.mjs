// Replica apply rate in headless Chromium (Debian's), same frames as apply-node.mjs, on the
// page's main thread, in memory. Prints one JSON line.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { chromium } from 'playwright-core';

const here = path.dirname(new URL(import.meta.url).pathname);
const pkg = path.join(here, 'raw/pkg'); // bash wasm/build.sh --raw
const framesPath = process.argv[2];
const rounds = Number(process.argv[3] ?? 3);
const types = { '.js': 'text/javascript', '.wasm': 'application/wasm', '.html': 'text/html' };
const page = `<!doctype html><script type="module">
import init, { Replica } from './pkg/hivesync_wasm.js';
await init();
const buf = new Uint8Array(await (await fetch('./frames.bin')).arrayBuffer());
const dv = new DataView(buf.buffer);
const frames = [];
for (let o = 0; o < buf.length;) { const n = dv.getUint32(o, true); frames.push(buf.subarray(o + 4, o + 4 + n)); o += 4 + n; }
const ms = []; let changes = 0;
for (let r = 0; r < ${rounds}; r++) {
  const replica = Replica.openMemory(); changes = 0;
  const t0 = performance.now();
  for (const f of frames) { const ev = JSON.parse(replica.handleFrame(f)); changes += ev.applied; }
  ms.push(performance.now() - t0); replica.free();
}
window.result = { where: 'chromium', changes, ms };
</script>`;
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  let body;
  let type = 'application/octet-stream';
  if (url.pathname === '/') { body = page; type = 'text/html'; }
  else if (url.pathname === '/frames.bin') body = fs.readFileSync(framesPath);
  else if (url.pathname.startsWith('/pkg/') && !url.pathname.includes('..')) {
    const f = path.join(pkg, path.basename(url.pathname));
    if (fs.existsSync(f)) { body = fs.readFileSync(f); type = types[path.extname(f)] ?? type; }
  }
  if (body === undefined) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { 'content-type': type });
  res.end(body);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const p = await browser.newPage();
  await p.goto(`http://127.0.0.1:${server.address().port}/`);
  await p.waitForFunction(() => window.result, null, { timeout: 300000 });
  console.log(JSON.stringify(await p.evaluate(() => window.result)));
} finally {
  await browser.close();
  server.close();
}
