// Frames file: [u32 little-endian length][frame bytes]... (written by benches/replica.rs).
import fs from 'node:fs';

export function readFrames(path) {
  const buf = fs.readFileSync(path);
  const frames = [];
  for (let o = 0; o < buf.length;) {
    const n = buf.readUInt32LE(o);
    frames.push(new Uint8Array(buf.buffer, buf.byteOffset + o + 4, n));
    o += 4 + n;
  }
  return frames;
}
