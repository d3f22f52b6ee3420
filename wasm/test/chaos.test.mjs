// Randomized, seeded, replayable: two tabs sharing a replica, the CLI writing into the node's
// file, the node stopped, killed with SIGKILL and restarted, tabs reloaded, writes made online
// and offline. In the end the node and both tabs hold the same state (digests), every write a
// tab saw committed locally is at the node, and none landed twice.
//
//   HIVESYNC_CHAOS_ROUNDS=200 HIVESYNC_CHAOS_SEED=7 node --test test/chaos.test.mjs   (long form)
//
// CI runs a few rounds with a seed printed in the output; rerun a failure with that seed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { appContext, until } from './app-origin.mjs';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const bin = process.env.HIVESYNC_BIN ?? path.join(root, 'target/debug/hivesync');
const chromePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const webDir = process.env.HIVESYNC_WEB ?? path.join(root, 'wasm/web');
const rounds = Number(process.env.HIVESYNC_CHAOS_ROUNDS ?? 30);
const seed = Number(process.env.HIVESYNC_CHAOS_SEED ?? (Date.now() % 100000));

// mulberry32: small, seeded, good enough to pick actions.
function rng(a) {
  return () => {
    a |= 0; a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const cli = (db, ...args) => execFileSync(bin, ['--db', db, ...args], { encoding: 'utf8' });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitHealthy(port, ms = 15000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    try { if ((await fetch(`http://127.0.0.1:${port}/healthz`)).ok) return; } catch { /* not yet */ }
    await sleep(50);
  }
  throw new Error('node did not become healthy');
}

class NodeProc {
  constructor(db, port) { this.db = db; this.port = port; this.child = null; }
  async start() {
    for (let i = 0; i < 50 && !this.child; i++) {
      const c = spawn(bin, ['--db', this.db, 'serve', '--listen', `127.0.0.1:${this.port}`, '--allow-origin', 'http://localhost:9'], { stdio: ['ignore', 'ignore', 'ignore'] });
      try { await waitHealthy(this.port, 5000); this.child = c; } catch { c.kill('SIGKILL'); await sleep(100); }
    }
    if (!this.child) throw new Error('node would not start');
  }
  async stop(signal) {
    const c = this.child;
    if (!c) return;
    this.child = null;
    if (c.exitCode === null) { const done = new Promise((r) => c.once('exit', r)); c.kill(signal); await done; }
  }
}

async function openIn(page, url) {
  await page.goto('http://localhost:9/');
  await page.evaluate(async (url) => {
    const { openReplica } = await import('/hivesync.js');
    window.db = await openReplica({ url, name: 'chaos' });
  }, url);
}

test(`two tabs, the CLI and a crashing node converge (seed ${seed}, ${rounds} rounds)`, { timeout: 600000 }, async () => {
  console.log(`chaos seed ${seed}, ${rounds} rounds (HIVESYNC_CHAOS_SEED=${seed} to replay)`);
  const rand = rng(seed);
  const pick = (n) => Math.floor(rand() * n);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-chaos-'));
  const db = path.join(dir, 'chaos.db');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  cli(db, 'put', 'entity', '{"id":"shared-0","name":"seed"}');
  const node = new NodeProc(db, port);
  await node.start();
  const browser = await chromium.launch({ executablePath: chromePath, args: ['--no-sandbox', '--disable-gpu', '--disable-features=LocalNetworkAccessChecks'] });
  const committed = new Set(); // unique ids of writes a tab saw committed locally
  const log = [];
  try {
    const ctx = await appContext(browser, webDir);
    const tabs = [await ctx.newPage(), await ctx.newPage()];
    for (const t of tabs) await openIn(t, url);
    let counter = 0;
    for (let round = 0; round < rounds; round++) {
      const r = pick(10);
      if (r < 4) {
        // A tab writes: a row of its own (unique id), and sometimes a row others write too.
        const t = pick(2);
        const id = `t${t}-${counter++}`;
        const ops = [{ op: 'upsert', kind: 'entity', data: { id, name: `written by tab ${t} in round ${round}` } }];
        if (pick(2)) ops.push({ op: 'upsert', kind: 'entity', data: { id: `shared-${pick(3)}`, name: `tab ${t} round ${round}` } });
        log.push(`${round}: tab ${t} writes ${id}${ops.length > 1 ? ' + ' + ops[1].data.id : ''}`);
        await tabs[t].evaluate((ops) => window.db.write(ops), ops);
        committed.add(id);
      } else if (r < 5) {
        const id = `shared-${pick(3)}`;
        log.push(`${round}: the CLI writes ${id}`);
        cli(db, 'put', 'entity', JSON.stringify({ id, name: `cli round ${round}` }));
      } else if (r < 6 && node.child) {
        log.push(`${round}: node killed (SIGKILL)`);
        await node.stop('SIGKILL');
      } else if (r < 7 && node.child) {
        log.push(`${round}: node stopped`);
        await node.stop('SIGTERM');
      } else if (r < 8 && !node.child) {
        log.push(`${round}: node started`);
        await node.start();
      } else if (r < 9) {
        const t = pick(2);
        log.push(`${round}: tab ${t} reloaded`);
        await openIn(tabs[t], url);
      } else {
        log.push(`${round}: pause`);
        await sleep(pick(300));
      }
    }
    if (!node.child) await node.start();
    for (const t of tabs) {
      await until(t, async () => { const s = await window.db.status(); return s.live && s.pending === 0 && s.lag === 0; });
    }
    const head = Number(JSON.parse(cli(db, '--json', 'changes', '--limit', '1000000').trim().split('\n').pop()).seq);
    for (const t of tabs) await until(t, async (h) => (await window.db.status()).seq >= h, head);
    const theirs = JSON.parse(cli(db, '--json', 'digest')).sha256;
    for (const [i, t] of tabs.entries()) {
      assert.equal((await t.evaluate(() => window.db.digest())).sha256, theirs, `tab ${i} equals the node\n${log.join('\n')}`);
    }
    const changes = cli(db, '--json', 'changes', '--limit', '1000000').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const count = new Map();
    for (const c of changes) if (/^t\d-/.test(c.id)) count.set(c.id, (count.get(c.id) ?? 0) + 1);
    for (const id of committed) assert.equal(count.get(id), 1, `${id}: committed in a tab, at the node exactly once (${count.get(id) ?? 0})\n${log.join('\n')}`);
    for (const [id, n] of count) assert.equal(n, 1, `${id} applied ${n} times\n${log.join('\n')}`);
    console.log(`chaos: ${committed.size} tab writes, ${changes.length} changes, digests equal`);
  } finally {
    await browser.close();
    await node.stop('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
