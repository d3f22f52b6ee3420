// Replica apply rate in Node: binary `changes` frames through Replica.handleFrame (decode +
// apply, one transaction per frame), in memory. Prints one JSON line.
import fs from 'node:fs';
import path from 'node:path';
import { initSync, Replica } from './raw/pkg/hivesync_wasm.js';
import { readFrames } from './frames.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
initSync({ module: fs.readFileSync(path.join(here, 'raw/pkg/hivesync_wasm_bg.wasm')) });
const frames = readFrames(process.argv[2]);
const rounds = Number(process.argv[3] ?? 3);
const ms = [];
let changes = 0;
for (let r = 0; r < rounds; r++) {
  const replica = Replica.openMemory();
  changes = 0;
  const t0 = performance.now();
  for (const f of frames) {
    const ev = JSON.parse(replica.handleFrame(f));
    if (ev.type !== 'applied') throw new Error(`unexpected ${JSON.stringify(ev)}`);
    changes += ev.applied;
  }
  ms.push(performance.now() - t0);
  replica.free();
}
console.log(JSON.stringify({ where: 'node', changes, ms }));
