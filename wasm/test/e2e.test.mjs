// End-to-end: the real node, the real CLI, the demo page in headless Chromium (Debian's),
// driven by playwright-core. Needs `bash wasm/build.sh` and `cargo build` first (tests/run.sh
// does both).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkAgainstDts } from './dts.mjs';
import { appContext, until } from './app-origin.mjs';
import { webDir, freePort, waitHealthy, startNode, stopNode, cli, launch } from './harness.mjs';

// Records in window.__events every event the replica's Worker posts to the page, from the
// first one on (the page's own listeners start later).
function recordWorkerEvents() {
  window.__events = [];
  const PageWorker = window.Worker;
  window.Worker = class extends PageWorker {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => { if (e.data?.event) window.__events.push(e.data.event); });
    }
  };
}

// Cases for checkAgainstDts: each recorded event against its member of ReplicaEvent.
const eventCases = (events) => events.map((value) =>
  ({ what: `the ${value.type} event`, type: `Extract<H.ReplicaEvent, { type: '${value.type}' }>`, value }));

test('the page syncs live, searches, works offline and resumes from its stored seq', { timeout: 120000 }, async () => {
  assert.ok(fs.existsSync(path.join(webDir, 'pkg/hivesync_wasm_bg.wasm')), 'run bash wasm/build.sh first');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-e2e-'));
  const db = path.join(dir, 'e2e.db');
  const port = await freePort();
  cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
  let node = startNode(db, port);
  const browser = await launch();
  try {
    await waitHealthy(port);
    const page = await browser.newPage();
    await page.addInitScript(recordWorkerEvents);
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
    // And takes a write: shown at once, marked pending, counted in the header.
    await page.fill('#add-name', 'Added while the node was down');
    await page.click('#add button');
    await page.waitForSelector('#recent li.pending:has-text("Added while the node was down")', { timeout: 5000 });
    await page.waitForFunction(() => document.getElementById('pending').textContent === '1', null, { timeout: 5000 });

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
    // A write made as soon as the replica opens (as in the README's example) is committed
    // here at once and by the node once; `wait: 'node'` answers with the node's seq.
    await page.waitForFunction(() => window.hivesync);
    const wseq = await page.evaluate(() => window.hivesync.write([{ op: 'upsert', kind: 'entity', data: { id: 'early', name: 'Written from the page' } }], { wait: 'node' }));
    assert.ok(wseq > seqOnline, `write acknowledged at seq ${wseq}`);
    assert.match(cli(db, 'get', 'entity', 'early'), /Written from the page/);
    // The write made in the demo while the node was down reached it, once.
    await page.waitForFunction(() => document.getElementById('pending').textContent === '0', null, { timeout: 20000 });
    assert.equal((cli(db, '--json', 'list', 'entity').match(/Added while the node was down/g) ?? []).length, 1);
    await page.waitForSelector('#recent li[data-id="barbara"]', { timeout: 20000 });
    await page.waitForSelector('#recent li[data-id="early"]', { timeout: 5000 });
    await page.fill('#q', 'hopper');
    await page.waitForSelector('#results li[data-id="grace"]', { timeout: 5000 });
    const st = await page.evaluate(() => window.hivesync.status());
    assert.equal(st.resumedFrom, seqOnline, `resumed from ${st.resumedFrom}, expected the stored seq ${seqOnline}`);
    assert.ok(st.live);
    // What the page really got (status, opened, every event since the reload) is what
    // hivesync.d.ts declares, key for key.
    const { events, opened } = await page.evaluate(() => ({ events: window.__events, opened: window.hivesync.opened }));
    // So does the status of a replica opened without a node (offline only).
    const offline = await page.evaluate(async () => {
      const { openReplica } = await import('./hivesync.js');
      const r = await openReplica({ persist: false });
      try { return await r.status(); } finally { r.close(); }
    });
    assert.ok(events.some((ev) => ev.type === 'welcome' && ev.from === seqOnline), 'the welcome event says where the replica resumed');
    const problems = checkAgainstDts(path.join(webDir, 'hivesync.d.ts'), [
      { what: 'status()', type: 'H.Status', value: st },
      { what: 'opened', type: "H.HivesyncReplica['opened']", value: opened },
      { what: 'status() without a node', type: 'H.Status', value: offline },
      ...eventCases(events),
    ]);
    assert.deepEqual(problems, [], problems.join('\n'));
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

test('with tokens configured, the demo and the status page take a token and wait for one when refused', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-e2e-auth-'));
  const db = path.join(dir, 'auth.db');
  const config = path.join(dir, 'node.toml');
  const secret = 'e2e-page-secret';
  const sha256 = crypto.createHash('sha256').update(secret).digest('hex');
  fs.writeFileSync(config, `name = "e2e-auth"\nanonymous = "never"\n[[token]]\nname = "page"\nsha256 = "${sha256}"\nread = ["*"]\nwrite = ["*"]\n`);
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
  const node = startNode(db, port, '--config', config);
  // A page the test serves itself has no address space Chromium knows, so it would block the
  // page's socket to 127.0.0.1 (local network access checks) were they on.
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  // A page in a fresh context (its own OPFS and sessionStorage), counting its WebSockets.
  const open = async (url) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.addInitScript(recordWorkerEvents);
    page.sockets = 0;
    page.on('websocket', () => { page.sockets += 1; });
    await page.goto(url);
    return page;
  };
  const statusText = (page) => page.textContent('#status');
  try {
    await waitHealthy(port);

    // The status page without a token says it was refused, and waits for one.
    let page = await open(`${origin}/status`);
    await page.waitForSelector('#status.denied', { timeout: 10000 });
    assert.match(await statusText(page), /^unauthorized: .*Enter a token/);
    await page.waitForTimeout(2500); // it would have retried twice by now
    assert.equal(page.sockets, 1, 'a refused status page does not reconnect on its own');
    // A token from the field: live, with the feed.
    await page.fill('#token', secret);
    await page.click('#auth button');
    await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: 10000 });
    await page.waitForSelector('#feed .row:has-text("default/ada")', { timeout: 5000 });
    cli(db, 'put', 'entity', '{"id":"grace","kind":"person","name":"Grace Hopper"}');
    await page.waitForSelector('#feed .row:has-text("default/grace")', { timeout: 5000 });
    // Kept for the tab: a reload connects with it.
    await page.reload();
    await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: 10000 });
    // A token from ?token=, taken out of the address bar.
    page = await open(`${origin}/status?token=${secret}`);
    await page.waitForFunction(() => document.getElementById('status').textContent === 'live', null, { timeout: 10000 });
    assert.equal(new URL(page.url()).search, '');

    // Served over https (the node behind a TLS terminator, here played by the test), the
    // status page opens wss:// on the same host, with the token in its hello.
    {
      const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
      // The node's own responses, under an https origin.
      await ctx.route('https://hivesync.test/**', async (r) => {
        const res = await fetch(origin + new URL(r.request().url()).pathname);
        r.fulfill({ status: res.status, body: Buffer.from(await res.arrayBuffer()), contentType: res.headers.get('content-type') ?? undefined });
      });
      const sockets = [];
      await ctx.routeWebSocket(/.*/, (ws) => {
        const seen = { url: ws.url(), sent: [] };
        sockets.push(seen);
        ws.onMessage((m) => { seen.sent.push(JSON.parse(m)); });
      });
      const tls = await ctx.newPage();
      await tls.goto(`https://hivesync.test/status?token=${secret}`);
      const t0 = Date.now();
      while (!(sockets[0] && sockets[0].sent.length) && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 50));
      assert.equal(sockets[0]?.url, 'wss://hivesync.test/v1/sync');
      assert.equal(sockets[0].sent[0].type, 'hello');
      assert.equal(sockets[0].sent[0].token, secret);
      await ctx.close();
    }

    // The demo page without a token: stopped with the node's reason, answering from its copy.
    page = await open(`${origin}/`);
    await page.waitForSelector('#error.denied', { timeout: 20000 });
    assert.match(await page.textContent('#error'), /^unauthorized: .*Enter a token/);
    assert.match(await statusText(page), /^stopped: unauthorized/);
    await page.waitForTimeout(2000);
    assert.equal(page.sockets, 1, 'a refused replica does not reconnect on its own');
    const refused = await page.evaluate(() => window.__events);
    assert.ok(refused.some((ev) => ev.type === 'error' && ev.code === 'unauthorized'));
    const problems = checkAgainstDts(path.join(webDir, 'hivesync.d.ts'), eventCases(refused));
    assert.deepEqual(problems, [], problems.join('\n'));
    // A token from the field: the page reopens the replica with it and syncs.
    await page.fill('#token', secret);
    await Promise.all([page.waitForNavigation(), page.click('#auth button')]);
    await page.waitForSelector('#status.live', { timeout: 20000 });
    await page.waitForSelector('#recent li[data-id="grace"]', { timeout: 5000 });
    // A token from ?token=: taken out of the address bar, other parameters kept.
    page = await open(`${origin}/?token=${secret}&q=lovelace`);
    await page.waitForSelector('#status.live', { timeout: 20000 });
    await page.waitForSelector('#results li[data-id="ada"]', { timeout: 5000 });
    assert.equal(new URL(page.url()).search, '?q=lovelace');
    // A wrong one is refused like none.
    page = await open(`${origin}/?token=wrong`);
    await page.waitForSelector('#error.denied', { timeout: 20000 });
    assert.match(await page.textContent('#error'), /Enter another token/);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Opens a replica named `name` in the page, following the node at `url`; events go to
// window.__seen.
async function openIn(page, url, name) {
  await page.goto('http://localhost:9/');
  await page.evaluate(async ({ url, name }) => {
    const { openReplica } = await import('/hivesync.js');
    window.__seen = [];
    window.db = await openReplica({ url, name });
    window.db.on('*', (ev) => window.__seen.push(ev));
  }, { url, name });
}

const changesOf = (db, id) => cli(db, '--json', 'changes', '--limit', '1000').split('\n').filter(Boolean)
  .map((l) => JSON.parse(l)).filter((c) => c.id === id);

test('offline writes show at once, survive a reload, land exactly once, and a refused one is taken back', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-lf-'));
  const db = path.join(dir, 'lf.db');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
  let node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    let page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await openIn(page, url, 'lf');
    await until(page, async () => (await window.db.status()).live);
    assert.equal((await page.evaluate(() => window.db.status())).storage, 'opfs');

    // Node down: writes are committed here at once and found by search.
    await stopNode(node);
    await until(page, async () => !(await window.db.status()).online);
    // Meanwhile ada is deleted at the node (by the CLI, straight into its file).
    cli(db, 'delete', 'entity', 'ada');
    const w = await page.evaluate(async () => [
      await window.db.write([{ op: 'upsert', kind: 'entity', data: { id: 'q1', kind: 'animal', name: 'Offline quokka' } }]),
      await window.db.write([{ op: 'upsert', kind: 'edge', data: { id: 'likes', source: 'q1', target: 'ada', relation: 'likes' } }]),
      await window.db.write([{ op: 'upsert', kind: 'note', data: { id: 'n1', content: 'a wombat, written offline' } }]),
    ]);
    assert.deepEqual(w.map((x) => [x.n, x.pending]), [[1, true], [2, true], [3, true]]);
    const local = await page.evaluate(async () => ({
      q: (await window.db.search({ text: 'quokka' })).map((h) => h.id),
      w: (await window.db.search({ text: 'wombat' })).map((h) => h.id),
      edges: (await window.db.neighbors('default', 'q1')).map((n) => n.edge.id),
      st: await window.db.status(),
    }));
    assert.deepEqual(local.q, ['q1']);
    assert.deepEqual(local.w, ['n1']);
    assert.deepEqual(local.edges, ['likes']);
    assert.equal(local.st.pending, 3);
    assert.ok(local.st.pendingAgeMs >= 0);

    // A reload while the node is down: the writes are still here, still pending.
    await page.close();
    page = await ctx.newPage();
    page.on('pageerror', (e) => errors.push(String(e)));
    await openIn(page, url, 'lf');
    const again = await page.evaluate(async () => ({
      q: (await window.db.search({ text: 'quokka' })).map((h) => h.id),
      st: await window.db.status(),
      pending: (await window.db.pending()).map((p) => p.n),
    }));
    assert.deepEqual(again.q, ['q1']);
    assert.equal(again.st.pending, 3);
    assert.deepEqual(again.pending, [1, 2, 3]);

    // The node is back: the outbox drains. The edge to the entity deleted meanwhile is
    // refused there, taken back here and reported; its neighbours land, each exactly once.
    node = startNode(db, port);
    await waitHealthy(port);
    await until(page, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    const seen = await page.evaluate(() => window.__seen);
    const rejected = seen.filter((e) => e.type === 'rejected');
    assert.equal(rejected.length, 1, JSON.stringify(rejected));
    assert.equal(rejected[0].n, 2);
    assert.equal(rejected[0].ops[0].data.id, 'likes');
    assert.equal(rejected[0].code, 'bad_request');
    assert.deepEqual(seen.filter((e) => e.type === 'written').map((e) => e.n).sort(), [1, 3]);
    assert.deepEqual(await page.evaluate(async () => (await window.db.neighbors('default', 'q1')).length), 0);
    assert.equal(changesOf(db, 'q1').length, 1, 'exactly one copy of each write at the node');
    assert.equal(changesOf(db, 'n1').length, 1);
    assert.equal(changesOf(db, 'likes').length, 0);
    await until(page, async () => !(await window.db.get('entity', 'default', 'ada')));
    const mine = await page.evaluate(() => window.db.digest());
    assert.equal(mine.sha256, JSON.parse(cli(db, '--json', 'digest')).sha256, 'replica digest equals the node digest');

    // `wait: 'node'` resolves with the node's seq; the status and events match the types.
    const seq = await page.evaluate(() => window.db.write([{ op: 'upsert', kind: 'entity', data: { id: 'q2', name: 'Online quokka' } }], { wait: 'node' }));
    assert.ok(seq > 0);
    assert.equal(changesOf(db, 'q2').length, 1);
    const st = await page.evaluate(() => window.db.status());
    const events = await page.evaluate(() => window.__seen);
    const problems = checkAgainstDts(path.join(webDir, 'hivesync.d.ts'), [
      { what: 'status()', type: 'H.Status', value: st },
      { what: 'pending()', type: 'H.PendingWrite[]', value: await page.evaluate(() => window.db.pending()) },
      ...eventCases(events),
    ]);
    assert.deepEqual(problems, [], problems.join('\n'));
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('tabs share one replica: both query and write, and closing the leader hands over with nothing lost', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-tabs-'));
  const db = path.join(dir, 'tabs.db');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
  let node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const a = await ctx.newPage();
    const b = await ctx.newPage();
    const errors = [];
    for (const p of [a, b]) p.on('pageerror', (e) => errors.push(String(e)));
    await openIn(a, url, 'tabs');
    await openIn(b, url, 'tabs');
    assert.equal(await a.evaluate(() => window.db.opened.tab), 'leader');
    assert.equal(await b.evaluate(() => window.db.opened.tab), 'follower');
    await until(b, async () => (await window.db.status()).live);
    assert.equal((await b.evaluate(() => window.db.status())).storage, 'opfs');

    // Both write; both see both writes; one connection (the leader's) carries them, once each.
    await b.evaluate(() => window.db.write([{ op: 'upsert', kind: 'entity', data: { id: 'from-b', name: 'Bilby from tab b' } }], { wait: 'node' }));
    await a.evaluate(() => window.db.write([{ op: 'upsert', kind: 'entity', data: { id: 'from-a', name: 'Aardvark from tab a' } }], { wait: 'node' }));
    for (const p of [a, b]) {
      assert.deepEqual(await p.evaluate(async () => (await window.db.search({ text: 'bilby' })).map((h) => h.id)), ['from-b']);
      assert.deepEqual(await p.evaluate(async () => (await window.db.search({ text: 'aardvark' })).map((h) => h.id)), ['from-a']);
    }
    // Live events reach the follower too.
    cli(db, 'put', 'entity', '{"id":"cli","kind":"person","name":"Written by the CLI"}');
    await until(b, () => window.__seen.some((e) => e.type === 'applied' && e.count > 0));
    await until(b, async () => !!(await window.db.get('entity', 'default', 'cli')));
    assert.equal(changesOf(db, 'from-a').length, 1);
    assert.equal(changesOf(db, 'from-b').length, 1);

    // Node down; tab b writes (through a); then the leader's tab closes.
    await stopNode(node);
    await until(b, async () => !(await window.db.status()).online);
    const w = await b.evaluate(() => window.db.write([{ op: 'upsert', kind: 'note', data: { id: 'handover', content: 'a numbat, written before the leader closed' } }]));
    assert.equal(w.pending, true);
    await a.close();
    // b takes over: a call made now is answered by b's own Worker, from the same OPFS file.
    const found = await b.evaluate(async () => (await window.db.search({ text: 'numbat' })).map((h) => h.id));
    assert.deepEqual(found, ['handover']);
    await until(b, () => window.db.opened.tab === 'leader');
    const st = await b.evaluate(() => window.db.status());
    assert.equal(st.storage, 'opfs');
    assert.equal(st.pending, 1, 'the pending write survived the handover');

    // The node comes back: the new leader uploads it, once.
    node = startNode(db, port);
    await waitHealthy(port);
    await until(b, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    assert.equal(changesOf(db, 'handover').length, 1);
    const mine = await b.evaluate(() => window.db.digest());
    assert.equal(mine.sha256, JSON.parse(cli(db, '--json', 'digest')).sha256);

    // Without sharing (persist: false), a tab has its own replica, in memory.
    const alone = await b.evaluate(async () => {
      const { openReplica } = await import('/hivesync.js');
      const r = await openReplica({ persist: false });
      try { return { opened: r.opened, st: await r.status() }; } finally { r.close(); }
    });
    assert.equal(alone.opened.tab, 'alone');
    assert.equal(alone.st.storage, 'memory');
    const problems = checkAgainstDts(path.join(webDir, 'hivesync.d.ts'), [
      { what: 'opened (follower, then leader)', type: "H.HivesyncReplica['opened']", value: await b.evaluate(() => window.db.opened) },
      { what: 'opened (alone)', type: "H.HivesyncReplica['opened']", value: alone.opened },
    ]);
    assert.deepEqual(problems, [], problems.join('\n'));
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('replicas of different names persist side by side, and a replica kept in memory says why', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-names-'));
  const db = path.join(dir, 'names.db');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  let node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    let page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    const open = () => page.evaluate(async (url) => {
      const { openReplica } = await import('/hivesync.js');
      const t0 = performance.now();
      window.alice = await openReplica({ url, name: 'user:alice' });
      const t1 = performance.now();
      window.bob = await openReplica({ url, name: 'user:bob' });
      const t2 = performance.now();
      return { alice: window.alice.opened, bob: window.bob.opened, ms: [t1 - t0, t2 - t1] };
    }, url);
    const first = await open();
    assert.equal(first.alice.storage, 'opfs');
    assert.equal(first.bob.storage, 'opfs', 'a second name on the same page persists too');
    assert.equal(first.bob.storageError, null);
    assert.ok(first.ms[1] < 1500, `the second replica opened in ${first.ms[1]} ms (it waited 1.5 s for the first one's files before)`);
    await until(page, async () => (await window.alice.status()).live && (await window.bob.status()).live);

    // Offline, each writes its own rows; a reload finds both, still pending, each in its own replica.
    await stopNode(node);
    await until(page, async () => !(await window.alice.status()).online && !(await window.bob.status()).online);
    await page.evaluate(async () => {
      await window.alice.write([{ op: 'upsert', kind: 'note', data: { id: 'a1', content: 'alice offline' } }]);
      await window.bob.write([{ op: 'upsert', kind: 'note', data: { id: 'b1', content: 'bob offline' } }]);
    });
    await page.close();
    page = await ctx.newPage();
    await page.goto('http://localhost:9/');
    const again = await open();
    assert.deepEqual([again.alice.storage, again.bob.storage], ['opfs', 'opfs']);
    const kept = await page.evaluate(async () => ({
      alice: (await window.alice.pending()).map((p) => p.ops[0].data.id),
      bob: (await window.bob.pending()).map((p) => p.ops[0].data.id),
      aliceSeesBob: await window.alice.get('note', 'default', 'b1'),
    }));
    assert.deepEqual(kept, { alice: ['a1'], bob: ['b1'], aliceSeesBob: null });
    node = startNode(db, port);
    await waitHealthy(port);
    await until(page, async () => (await window.alice.status()).pending === 0 && (await window.bob.status()).pending === 0);
    assert.equal(changesOf(db, 'a1').length, 1);
    assert.equal(changesOf(db, 'b1').length, 1);

    // The same name opened twice without tab sharing: the second cannot have the files. It
    // runs in memory and says why, in status() and in an error event that waits for a listener.
    const twice = await page.evaluate(async () => {
      const { openReplica } = await import('/hivesync.js');
      const one = await openReplica({ name: 'solo', shareTabs: false });
      const two = await openReplica({ name: 'solo', shareTabs: false });
      const heard = await new Promise((resolve) => { two.on('error', resolve); setTimeout(() => resolve(null), 2000); });
      const st = await two.status();
      const r = { one: one.opened.storage, two: two.opened, status: { storage: st.storage, storageError: st.storageError }, heard };
      one.close();
      two.close();
      return r;
    });
    assert.equal(twice.one, 'opfs');
    assert.equal(twice.two.storage, 'memory');
    assert.match(twice.two.storageError, /kept in memory.*lost when this page closes.*'solo' is open in another Worker/s);
    assert.deepEqual(twice.status, { storage: 'memory', storageError: twice.two.storageError });
    assert.equal(twice.heard?.message, twice.two.storageError, 'the error event reached a listener added after opening');
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('no argument reaches a wasm trap: wrong calls are TypeErrors, and a trap reopens the replica', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-args-'));
  const db = path.join(dir, 'args.db');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
  const node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const page = await ctx.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await openIn(page, url, 'args');
    await until(page, async () => (await window.db.status()).live);
    const out = await page.evaluate(async () => {
      const db = window.db;
      const worker = db.worker;
      const long = 'x'.repeat(5_000_000);
      const cyclic = {}; cyclic.self = cyclic;
      const odd = [undefined, null, 0, -1, 1e12, NaN, Infinity, 2 ** 53, 10n, 'str', '', long, true, {}, [], [1, 2],
        { length: 1e10 }, new Uint8Array(3), Symbol('s'), () => 1, cyclic, new Date(0), '\u0000', '\ud800'];
      const valid = {
        status: [], search: [{ text: 'ada' }], knn: [{ model: 'm', embedding: [1, 0], k: 1 }],
        hybrid: [{ text: 'ada' }, { model: 'm', embedding: [1, 0], k: 1 }, 5], get: ['entity', 'default', 'ada'],
        list: ['entity', 'default', { limit: 5 }], neighbors: ['default', 'ada', { direction: 'both' }],
        traverse: ['default', 'ada', { depth: 2 }], sql: ['SELECT count(*) FROM entities', []], models: [],
        digest: [['default']], exportBytes: [], importBytes: [new Uint8Array(0)],
        write: [[{ op: 'upsert', kind: 'note', data: { id: 'ok', content: 'fine' } }]], pending: [],
      };
      const results = { typeErrors: 0, otherErrors: [], resolved: 0, calls: 0, samples: {} };
      const tryCall = async (method, args) => {
        results.calls++;
        try {
          await db[method](...args);
          results.resolved++;
        } catch (e) {
          if (e instanceof TypeError) {
            results.typeErrors++;
            results.samples[method] ??= e.message;
          } else {
            results.otherErrors.push(`${method}: ${e.message}`.slice(0, 200));
          }
        }
      };
      for (const [method, good] of Object.entries(valid)) {
        // Each argument replaced by each odd value; one missing; one extra.
        for (let i = 0; i < Math.max(1, good.length); i++) {
          for (const v of odd) {
            const args = [...good];
            args[i] = v;
            await tryCall(method, args);
          }
        }
        if (good.length) await tryCall(method, good.slice(0, -1));
        await tryCall(method, [...good, 'extra']);
        // Odd values inside the option objects and queries.
        for (let i = 0; i < good.length; i++) {
          if (good[i] && typeof good[i] === 'object' && !Array.isArray(good[i]) && !(good[i] instanceof Uint8Array)) {
            for (const k of [...Object.keys(good[i]), 'unknown']) {
              for (const v of [-1, 1e12, NaN, 'str', {}, [], '\u0000']) {
                const args = [...good];
                args[i] = { ...good[i], [k]: v };
                await tryCall(method, args);
              }
            }
          }
        }
      }
      // The call from the issue.
      let issue = null;
      try { await db.list('note', { limit: 50 }); } catch (e) { issue = { type: e.constructor.name, message: e.message }; }
      // Still reads and writes, on the same Worker (nothing trapped).
      await db.write([{ op: 'upsert', kind: 'entity', data: { id: 'after', name: 'still writing' } }]);
      const after = await db.get('entity', 'default', 'after');
      const ada = await db.search({ text: 'lovelace' });
      return { results, issue, after: after?.name, ada: ada.map((h) => h.id), sameWorker: db.worker === worker };
    });
    const r = out.results;
    assert.deepEqual(out.issue?.type, 'TypeError');
    assert.match(out.issue.message, /^list\(kind: 'entity' \| 'edge' \| 'note' \| 'event' \| 'vector', ns: string, opts\?: \{ kind\?: string, after\?: string, limit\?: number \}\): `ns` must be a string, got an object$/);
    assert.ok(r.typeErrors > 600, JSON.stringify({ ...r, samples: undefined }));
    // What passes the signature and still fails is the replica's own error (a NUL in an id, an
    // unknown model, a file that is not a database): never a trap.
    for (const e of r.otherErrors) assert.doesNotMatch(e, /unreachable|out of bounds|RuntimeError|WebAssembly/, e);
    assert.equal(out.after, 'still writing');
    assert.deepEqual(out.ada, ['ada']);
    assert.ok(out.sameWorker, 'the Worker was never replaced: nothing trapped');
    assert.deepEqual(errors, []);

    // A trap (as a bug in the wasm would cause): the call fails, an error event says so, a new
    // Worker opens the same stored replica, and it reads and writes again.
    const trap = await page.evaluate(async () => {
      const db = window.db;
      const heard = new Promise((resolve) => db.on('error', (e) => { if (/WebAssembly/.test(e.message)) resolve(e.message); }));
      let failed = null;
      try { await db.call('__trap'); } catch (e) { failed = e.message; }
      const message = await heard;
      const after = await db.get('entity', 'default', 'after');
      await db.write([{ op: 'upsert', kind: 'entity', data: { id: 'reopened', name: 'after the trap' } }]);
      return { failed, message, after: after?.name, storage: db.opened.storage, reopened: (await db.get('entity', 'default', 'reopened'))?.name };
    });
    assert.match(trap.failed, /failed in WebAssembly \(unreachable\) and was reopened/);
    assert.match(trap.message, /it was reopened/);
    assert.equal(trap.after, 'still writing', 'the stored replica was reopened whole');
    assert.equal(trap.reopened, 'after the trap');
    assert.equal(trap.storage, 'opfs');
    await until(page, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    assert.equal(changesOf(db, 'reopened').length, 1);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a write made offline keeps the time it was made, however late it is uploaded', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-time-'));
  const db = path.join(dir, 'time.db');
  const port = await freePort();
  const url = `ws://127.0.0.1:${port}/v1/sync`;
  let node = startNode(db, port);
  const browser = await launch('--disable-features=LocalNetworkAccessChecks');
  try {
    await waitHealthy(port);
    const ctx = await appContext(browser, webDir);
    const page = await ctx.newPage();
    await openIn(page, url, 'time');
    await until(page, async () => (await window.db.status()).live);
    await stopNode(node);
    await until(page, async () => !(await window.db.status()).online);
    const madeUs = await page.evaluate(async () => {
      const t = Date.now() * 1000;
      await window.db.write([{ op: 'upsert', kind: 'note', data: { id: 'late', content: 'written on the train' } }]);
      return t;
    });
    await new Promise((r) => setTimeout(r, 2500));
    const uploadUs = Date.now() * 1000;
    node = startNode(db, port);
    await waitHealthy(port);
    await until(page, async () => { const s = await window.db.status(); return s.live && s.pending === 0; });
    const atNode = JSON.parse(cli(db, '--json', 'get', 'note', 'late'));
    assert.ok(atNode.created_at >= madeUs - 5_000_000 && atNode.created_at < madeUs + 1_000_000,
      `created_at ${atNode.created_at} is when the write was made (${madeUs}), not the upload (${uploadUs})`);
    assert.equal(atNode.updated_at, atNode.created_at);
    const here = await page.evaluate(() => window.db.get('note', 'default', 'late'));
    assert.equal(here.created_at, atNode.created_at, 'the replica shows the same time');
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the demo on an empty database says where rows come from, writes to the namespace chosen, and shows a refusal at the top', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-demo-'));
  const db = path.join(dir, 'demo.db');
  const config = path.join(dir, 'node.toml');
  const secret = 'demo-page-secret';
  const sha256 = crypto.createHash('sha256').update(secret).digest('hex');
  fs.writeFileSync(config, `name = "demo"\nanonymous = "never"\n[[token]]\nname = "page"\nsha256 = "${sha256}"\nread = ["*"]\nwrite = ["default", "team"]\n`);
  const port = await freePort();
  const node = startNode(db, port, '--config', config);
  const browser = await launch();
  try {
    await waitHealthy(port);
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${port}/?token=${secret}`);
    await page.waitForSelector('#status.live', { timeout: 20000 });
    // Empty: a hint instead of two blank lists.
    const hint = await page.waitForSelector('#recent li.hint', { timeout: 5000 });
    assert.match(await hint.textContent(), /No entities yet.*hivesync put entity/s);
    await page.fill('#q', 'nothing');
    assert.match(await (await page.waitForSelector('#results li.hint', { timeout: 5000 })).textContent(), /No entity or note matches “nothing”/);

    // A write to the namespace typed in the form.
    await page.fill('#add-name', 'A team thing');
    await page.fill('#add-ns', 'team');
    await page.click('#add button');
    await page.waitForSelector('#recent li:has-text("A team thing"):not(.pending)', { timeout: 10000 });
    assert.match(cli(db, '--json', 'list', 'entity', '--ns', 'team'), /A team thing/);
    assert.equal(await page.$('#recent li.hint'), null);

    // A namespace the token may not write: refused, taken back, and said where it is seen.
    await page.fill('#add-name', 'A secret thing');
    await page.fill('#add-ns', 'secret');
    await page.click('#add button');
    await page.waitForSelector('#error.refused', { timeout: 10000 });
    assert.match(await page.textContent('#error'), /refused a write made here \(forbidden: .*\); it was taken back/);
    const box = await page.locator('#error').boundingBox();
    const main = await page.locator('main').boundingBox();
    const viewport = page.viewportSize();
    assert.ok(box.y < main.y, 'the refusal is above the lists');
    assert.ok(box.y + box.height <= viewport.height, `the refusal is in view (${box.y} of ${viewport.height})`);
    await page.waitForFunction(() => !document.querySelector('#recent').textContent.includes('A secret thing'), null, { timeout: 5000 });
    assert.doesNotMatch(cli(db, '--json', 'list', 'entity', '--ns', 'secret'), /secret thing/);
  } finally {
    await browser.close();
    await stopNode(node);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
