// The JS package as a user gets it: `npm pack` of wasm/web installed into a scratch project,
// imported there by name, its types compiled with `tsc --strict` against code that uses every
// field, and the sync client's real events held against those types.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { checkAgainstDts } from './dts.mjs';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const web = process.env.HIVESYNC_WEB ?? path.join(root, 'wasm/web');
const tsc = path.join(root, 'wasm/node_modules/typescript/bin/tsc');
const npm = (cwd, ...args) => execFileSync('npm', [...args, '--no-audit', '--no-fund'], { cwd, encoding: 'utf8' });

let dir; // scratch space: the tarball, and the project at dir/app
let app;
let installed; // dir/app/node_modules/hivesync

before(() => {
  assert.ok(fs.existsSync(path.join(web, 'pkg/hivesync_wasm_bg.wasm')), 'run bash wasm/build.sh first');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-pkg-'));
  const [packed] = JSON.parse(npm(web, 'pack', '--json', '--pack-destination', dir));
  app = path.join(dir, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  // A local tarball without dependencies installs offline.
  npm(app, 'install', '--offline', path.join(dir, packed.filename));
  installed = path.join(app, 'node_modules/hivesync');
});

after(() => { if (dir) fs.rmSync(dir, { recursive: true, force: true }); });

test('the packed package holds every file its modules load, and imports by name without a browser', () => {
  for (const f of ['package.json', 'hivesync.js', 'hivesync.d.ts', 'worker.js', 'sync.js', 'pkg/hivesync_wasm.js', 'pkg/hivesync_wasm_bg.wasm']) {
    assert.ok(fs.existsSync(path.join(installed, f)), `the installed package lacks ${f}`);
  }
  // Relative imports and `new URL('./x', import.meta.url)` (the Worker) all resolve inside it.
  for (const f of ['hivesync.js', 'worker.js', 'sync.js']) {
    const src = fs.readFileSync(path.join(installed, f), 'utf8');
    for (const [, rel] of src.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|new URL\(\s*)['"](\.\.?\/[^'"]+)['"]/g)) {
      assert.ok(fs.existsSync(path.join(installed, path.dirname(f), rel)), `${f} loads ${rel}, which the package leaves out`);
    }
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
  assert.equal(pkg.exports['.'].types, './hivesync.d.ts');

  fs.writeFileSync(path.join(app, 'use.mjs'), `
import * as hivesync from 'hivesync';
import { SyncClient } from 'hivesync/sync.js';
let openError = null;
try { await hivesync.openReplica({}); } catch (e) { openError = e.message; }
console.log(JSON.stringify({
  exports: Object.fromEntries(Object.entries(hivesync).map(([k, v]) => [k, typeof v])),
  SyncClient: typeof SyncClient, openError,
}));
`);
  const out = JSON.parse(execFileSync(process.execPath, ['use.mjs'], { cwd: app, encoding: 'utf8' }));
  assert.deepEqual(out.exports, { HivesyncReplica: 'function', openReplica: 'function' });
  assert.equal(out.SyncClient, 'function');
  // Importing touched no browser API; opening says what it needs instead of "Worker is not defined".
  assert.match(out.openError, /needs Web Workers/);
});

test('the installed types compile, under --strict, code that uses every field the code emits', () => {
  fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext',
      lib: ['ES2022'], types: [], // no DOM: the types must not need a browser's
    },
    files: ['check.ts'],
  }));
  fs.writeFileSync(path.join(app, 'check.ts'), `
import { openReplica } from 'hivesync';
import type { HivesyncReplica, Status, Opened, ReplicaEvent, Entity, ErrorCode } from 'hivesync';

export async function use(): Promise<number> {
  const db: HivesyncReplica = await openReplica({ url: 'wss://node.example/v1/sync', token: 'secret', protocol: 'bin' });
  const opened: Opened = db.opened;
  const ms: number = opened.timings.wasm + opened.timings.db;
  const s: Status = await db.status();
  const resumed: number | null = s.resumedFrom;
  const stopped: string | null = s.error;
  db.on('status', (st) => { const r: number | null = st.resumedFrom; const lag: number = st.lag; });
  db.on('welcome', (w) => { const from: number | null = w.from; const node: string = w.node; const head: number = w.head; });
  db.on('applied', (a) => { const n: number | undefined = a.count; const snap: boolean | undefined = a.snapshot; });
  db.on('live', (l) => { const seq: number = l.seq; });
  db.on('offline', (o) => { const t: 'offline' = o.type; });
  db.on('error', (e) => { const code: ErrorCode | undefined = e.code; const m: string = e.message; });
  db.on('*', (ev: ReplicaEvent) => { if (ev.type === 'welcome') { const f: number | null = ev.from; } });
  const people: Entity[] = await db.list('entity', 'default', { limit: 10 });
  // @ts-expect-error: an undeclared field is an error (the types are not \`any\`)
  s.notAField;
  // @ts-expect-error: so is an event type that does not exist
  db.on('nonsense', () => {});
  return ms + (resumed ?? 0) + (stopped ? 1 : 0) + people.length;
}
`);
  try {
    execFileSync(process.execPath, [tsc, '-p', app], { cwd: app, encoding: 'utf8' });
  } catch (e) {
    assert.fail(`tsc --strict refuses code that uses the package's fields:\n${e.stdout}${e.stderr}`);
  }
});

test("the sync client's events and status carry exactly what hivesync.d.ts declares", async () => {
  // The installed package's own wasm and sync client, over a scripted socket.
  const base = pathToFileURL(installed + '/');
  const { initSync, Replica } = await import(new URL('pkg/hivesync_wasm.js', base));
  initSync({ module: fs.readFileSync(new URL('pkg/hivesync_wasm_bg.wasm', base)) });
  const { SyncClient } = await import(new URL('sync.js', base));
  const sockets = [];
  class Socket {
    constructor(url, protocol) { Object.assign(this, { url, protocol, readyState: 1, sent: [] }); sockets.push(this); }
    send(m) { this.sent.push(m); }
    close() { this.readyState = 3; this.onclose?.({}); }
  }
  const events = [];
  // A node without images: the first copy falls back to the row snapshot (a `bootstrap` event).
  const fetch = async () => new Response('no image here', { status: 404 });
  const client = new SyncClient(Replica.openMemory(), {
    url: 'ws://node.invalid/v1/sync', token: 'secret', protocol: 'json', WebSocket: Socket, fetch, onEvent: (ev) => events.push(ev),
  });
  const statuses = [client.status()];
  client.start();
  for (let i = 0; i < 100 && sockets.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  const ws = sockets[0];
  ws.onopen();
  assert.deepEqual(JSON.parse(ws.sent[0]), { type: 'hello', token: 'secret', client: 'hivesync-web' });
  const frame = (m) => ws.onmessage({ data: JSON.stringify(m) });
  // Frames are applied in a task of their own, after calls already waiting (sync.js).
  const applied = () => new Promise((r) => setTimeout(r, 60));
  const change = { seq: 2, tx: 2, ts: 1, ns: 'default', kind: 'entity', op: 'upsert', id: 'ada',
    data: { id: 'ada', kind: 'person', name: 'Ada Lovelace', description: '', properties: {}, tags: [], created_at: 1, updated_at: 1 } };
  frame({ type: 'welcome', protocol: 1, node: 'n1', head: 2, horizon: 0 });
  frame({ type: 'snapshot', sub: 'replica', at: 1, rows: [], done: true });
  frame({ type: 'changes', sub: 'replica', prev: 1, changes: [change] });
  frame({ type: 'live', sub: 'replica', seq: 2 });
  await applied();
  statuses.push(client.status());
  frame({ type: 'error', code: 'unauthorized', message: 'the token was revoked' });
  await applied();
  statuses.push(client.status());
  assert.equal(sockets.length, 1, 'unauthorized stops the client: no reconnect');
  assert.equal(statuses.at(-1).error, 'unauthorized: the token was revoked');

  const seen = new Set(events.map((ev) => ev.type));
  for (const t of ['status', 'welcome', 'applied', 'live', 'offline', 'error', 'bootstrap']) assert.ok(seen.has(t), `no ${t} event was emitted`);
  const problems = checkAgainstDts(path.join(installed, 'hivesync.d.ts'), [
    ...statuses.map((value) => ({ what: 'status()', type: 'H.Status', value })),
    ...events.map((value) => ({ what: `the ${value.type} event`, type: `Extract<H.ReplicaEvent, { type: '${value.type}' }>`, value })),
  ]);
  assert.deepEqual(problems, [], problems.join('\n'));
});

test("the package's JavaScript type-checks (tsc --strict --checkJs, each file // @ts-check)", () => {
  const files = ['hivesync.js', 'sync.js', 'worker.js', 'token.js', 'app.js', 'react.js'];
  for (const f of files) {
    assert.match(fs.readFileSync(path.join(web, f), 'utf8'), /^\/\/ @ts-check\n/, `${f} opts in to checking`);
  }
  try {
    execFileSync(process.execPath, [tsc, '--noEmit', '--strict', '--allowJs', '--checkJs', '--target', 'es2022',
      '--module', 'es2022', '--moduleResolution', 'bundler', '--lib', 'es2022,dom,webworker', '--skipLibCheck',
      ...files.map((f) => path.join(web, f))], { encoding: 'utf8' });
  } catch (e) {
    assert.fail(`tsc --strict --checkJs finds type errors in the package:\n${e.stdout}${e.stderr}`);
  }
});
