// The browser tests' harness: the node binary, free ports, starting and stopping a node, the
// CLI, and Chromium.
import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
export const bin = process.env.HIVESYNC_BIN ?? path.join(root, 'target/debug/hivesync');
const chromePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Without HIVESYNC_WEB the node serves the replica built into it (what a new user's first
// `hivesync serve` shows); tests/run.sh rebuilds the package and then the binary first.
export const web = process.env.HIVESYNC_WEB;
export const webDir = web ?? path.join(root, 'wasm/web');

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

export async function waitHealthy(port, ms = 15000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    try { const r = await fetch(`http://127.0.0.1:${port}/healthz`); if (r.ok) return; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('node did not become healthy');
}

export function startNode(db, port, ...args) {
  const webArgs = web ? ['--web', web] : [];
  const child = spawn(bin, ['--db', db, 'serve', '--listen', `127.0.0.1:${port}`,
    // The tests' app pages live at http://localhost:9 (app-origin.mjs): another origin.
    '--allow-origin', 'http://localhost:9', ...webArgs, ...args],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', () => {});
  return child;
}

export async function stopNode(child) {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

export const cli = (db, ...args) => execFileSync(bin, ['--db', db, ...args], { encoding: 'utf8' });

const chromeArgs = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

export const launch = (...args) => chromium.launch({ executablePath: chromePath, args: [...chromeArgs, ...args] });

/** Chromium with its profile (OPFS included) on disk in `dir`, as a user's is. */
export const launchPersistent = (dir, ...args) => chromium.launchPersistentContext(dir, {
  executablePath: chromePath, args: [...chromeArgs, ...args],
});


/**
 * A node config in `dir` (its path returned): node `name`, no anonymous clients, one token
 * `secret` that reads every namespace and writes `write`; `extra` TOML appended.
 */
export function tokenConfig(dir, name, secret, { write = ['*'], extra = '' } = {}) {
  const sha256 = crypto.createHash('sha256').update(secret).digest('hex');
  const file = path.join(dir, 'node.toml');
  fs.writeFileSync(file, `name = "${name}"\nanonymous = "never"\n[[token]]\nname = "page"\nsha256 = "${sha256}"\nread = ["*"]\nwrite = ${JSON.stringify(write)}\n${extra}`);
  return file;
}
