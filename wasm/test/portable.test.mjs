// Database files move both ways between the native node and the wasm replica: a file written
// by the CLI opens in the replica (importBytes), and the replica's export opens in the CLI.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initSync, Replica } from '../web/pkg/hivesync_wasm.js';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const bin = process.env.HIVESYNC_BIN ?? path.join(root, 'target/debug/hivesync');
initSync({ module: fs.readFileSync(path.join(root, 'wasm/web/pkg/hivesync_wasm_bg.wasm')) });
const cli = (db, ...args) => execFileSync(bin, ['--db', db, ...args], { encoding: 'utf8' });

test('native file -> wasm replica -> native file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hivesync-portable-'));
  try {
    const db = path.join(dir, 'native.db');
    cli(db, 'put', 'entity', '{"id":"ada","kind":"person","name":"Ada Lovelace"}');
    cli(db, 'put', 'entity', '{"id":"cb","kind":"person","name":"Charles Babbage"}');
    cli(db, 'put', 'edge', '{"source":"ada","target":"cb","relation":"knew"}');
    cli(db, 'put', 'vector', '{"subject":"ada","model":"m","embedding":[1,0]}');
    // The CLI checkpoints the WAL when it exits, so the main file holds everything.
    const r = Replica.openMemory();
    r.importBytes(fs.readFileSync(db));
    assert.equal(JSON.parse(r.search(JSON.stringify({ text: 'lovelace' })))[0].id, 'ada');
    assert.equal(JSON.parse(r.neighbors('default', 'ada', 'out', undefined, 10))[0].node, 'cb');
    assert.equal(JSON.parse(r.knn(JSON.stringify({ model: 'm', embedding: [1, 0.1], k: 1 })))[0].subject, 'ada');

    // A write made in the replica, then the file goes back to the native side.
    r.writeLocal(JSON.stringify([{ op: 'upsert', kind: 'entity', data: { id: 'grace', kind: 'person', name: 'Grace Hopper' } }]));
    const back = path.join(dir, 'from-wasm.db');
    fs.writeFileSync(back, r.exportBytes());
    const hits = cli(back, '--json', 'search', 'hopper').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(hits[0].id, 'grace');
    assert.match(cli(back, 'check'), /ok/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
