// hivesync for web pages: a replica of a node, synced in a Worker, persisted in OPFS,
// queried locally (and offline).
//
//   import { openReplica } from './hivesync.js';
//   const db = await openReplica({ url: 'ws://127.0.0.1:7070/v1/sync' });
//   db.on('applied', () => render());
//   const hits = await db.search({ text: 'ada', limit: 10 });

export class HivesyncReplica {
  constructor(worker) {
    this.worker = worker;
    this.calls = new Map();
    this.next = 1;
    this.listeners = new Map();
    worker.onmessage = (e) => {
      const m = e.data;
      if (m.event) {
        for (const f of this.listeners.get(m.event.type) ?? []) f(m.event);
        for (const f of this.listeners.get('*') ?? []) f(m.event);
        return;
      }
      const c = this.calls.get(m.id);
      if (!c) return;
      this.calls.delete(m.id);
      if (m.error !== undefined) c.reject(new Error(m.error)); else c.resolve(m.result);
    };
  }

  call(method, ...args) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args });
    });
  }

  /** Listen to `status`, `applied`, `live`, `offline`, `welcome`, `written`, `rejected`, `error` (or `*`); the payloads are in hivesync.d.ts. */
  on(type, f) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(f);
    return () => this.listeners.set(type, this.listeners.get(type).filter((g) => g !== f));
  }

  status() { return this.call('status'); }
  search(query) { return this.call('search', query); }
  knn(query) { return this.call('knn', query); }
  hybrid(text, knn, limit) { return this.call('hybrid', text, knn, limit); }
  get(kind, ns, id, model) { return this.call('get', kind, ns, id, model); }
  list(kind, ns, opts) { return this.call('list', kind, ns, opts); }
  neighbors(ns, id, opts) { return this.call('neighbors', ns, id, opts); }
  traverse(ns, id, opts) { return this.call('traverse', ns, id, opts); }
  sql(query, params) { return this.call('sql', query, params); }
  models() { return this.call('models'); }
  /** SHA-256 of the logical state (optionally of some namespaces): equal to `hivesync digest` on the node. */
  digest(namespaces) { return this.call('digest', namespaces); }
  exportBytes() { return this.call('exportBytes'); }
  importBytes(bytes) { return this.call('importBytes', bytes); }
  /** Write here at once (uploaded exactly once when online); `{ wait: 'node' }`: resolve with the node's seq. */
  write(ops, opts) { return this.call('write', ops, opts); }
  /** The writes not yet confirmed by the node, oldest first. */
  pending() { return this.call('pending'); }
  disconnect() { return this.call('stop'); }
  reconnect() { return this.call('start'); }
  close() { this.worker.terminate(); }
}

/**
 * Open a replica in a dedicated Worker. Options: url (the node's /v1/sync; omit for an
 * offline-only replica), token, name (the OPFS database name), persist (default true),
 * protocol ('bin', the default, or 'json'), namespaces (default: all the token may read).
 */
export async function openReplica(opts = {}) {
  // Importing this module touches no browser API (it loads in Node and in bundlers); opening does.
  if (typeof Worker === 'undefined') {
    throw new Error('openReplica needs Web Workers (a browser); elsewhere drive the wasm Replica with SyncClient from hivesync/sync.js');
  }
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const r = new HivesyncReplica(worker);
  r.opened = await r.call('open', opts);
  return r;
}
