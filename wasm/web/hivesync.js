// hivesync for web pages: a replica of a node, synced in a Worker, persisted in OPFS,
// queried locally (and offline), written locally first.
//
//   import { openReplica } from './hivesync.js';
//   const db = await openReplica({ url: 'ws://127.0.0.1:7070/v1/sync' });
//   db.on('applied', () => render());
//   const hits = await db.search({ text: 'ada', limit: 10 });
//
// Tabs of one origin share one replica and one connection: the tab holding the Web Lock
// `hivesync:<name>` (the leader) runs the Worker that holds the database and the sync client;
// the others send their calls to it over a BroadcastChannel of the same name and receive its
// events. When the leader's tab closes, the lock passes to another tab, which opens the same
// OPFS database in a Worker of its own and carries on; calls that were waiting are sent again.

const ROLE_ALONE = 'alone';

export class HivesyncReplica {
  constructor() {
    this.calls = new Map(); // id -> { resolve, reject, method, args }
    this.next = 1;
    this.listeners = new Map();
    this.send = () => {};
    this.role = ROLE_ALONE;
    this.tab = globalThis.crypto?.randomUUID?.() ?? String(Math.random());
    this.channel = null;
    this.worker = null;
    this.release = null; // lets go of the leader lock
  }

  emitLocal(event) {
    for (const f of this.listeners.get(event.type) ?? []) f(event);
    for (const f of this.listeners.get('*') ?? []) f(event);
  }

  settle(m) {
    const c = this.calls.get(m.id);
    if (!c) return;
    this.calls.delete(m.id);
    if (m.error !== undefined) c.reject(new Error(m.error)); else c.resolve(m.result);
  }

  call(method, ...args) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject, method, args });
      this.send({ id, method, args });
    });
  }

  /** Send every call still waiting for an answer again (to a new leader). */
  resend() {
    for (const [id, c] of this.calls) this.send({ id, method: c.method, args: c.args });
  }

  /** Run the replica in a Worker of this tab; with a channel, serve the other tabs too. */
  async lead(opts, takeover = false) {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.worker = worker;
    const served = new Map(); // `${tab}:${id}` -> answer, for calls another tab sends twice
    worker.onmessage = (e) => {
      const m = e.data;
      if (m.event) {
        this.emitLocal(m.event);
        this.channel?.postMessage({ kind: 'event', event: m.event });
      } else if (typeof m.id === 'string' && m.id.includes(':')) {
        const [to, id] = [m.id.slice(0, m.id.lastIndexOf(':')), Number(m.id.slice(m.id.lastIndexOf(':') + 1))];
        const answer = { kind: 'answer', to, id, result: m.result, error: m.error };
        served.delete(`pending ${m.id}`);
        served.set(m.id, answer);
        if (served.size > 1000) served.delete(served.keys().next().value);
        this.channel?.postMessage(answer);
      } else {
        this.settle(m);
      }
    };
    this.send = (m) => worker.postMessage(m);
    const opened = this.call('open', { ...opts, takeover });
    this.role = this.channel ? 'leader' : ROLE_ALONE;
    // The worker answers calls in order after its open: what waited for the old leader goes now.
    for (const [id, c] of this.calls) if (c.method !== 'open') this.send({ id, method: c.method, args: c.args });
    if (this.channel) {
      this.channel.onmessage = (e) => {
        const m = e.data;
        if (m.kind === 'hello') this.channel.postMessage({ kind: 'leader', tab: this.tab });
        if (m.kind !== 'call') return;
        const key = `${m.from}:${m.id}`;
        if (served.has(key)) { this.channel.postMessage(served.get(key)); return; }
        if (served.has(`pending ${key}`)) return;
        served.set(`pending ${key}`, true);
        worker.postMessage({ id: key, method: m.method, args: m.args });
      };
      this.channel.postMessage({ kind: 'leader', tab: this.tab });
    }
    return opened;
  }

  /** Send calls to the leader tab and take its events. */
  follow() {
    this.role = 'follower';
    this.send = (m) => this.channel.postMessage({ kind: 'call', from: this.tab, ...m });
    this.channel.onmessage = (e) => {
      const m = e.data;
      if (m.kind === 'event') this.emitLocal(m.event);
      else if (m.kind === 'answer' && m.to === this.tab) this.settle(m);
      else if (m.kind === 'leader') this.resend();
    };
    this.channel.postMessage({ kind: 'hello', tab: this.tab });
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
  /**
   * Write here at once (uploaded exactly once when online); `{ wait: 'node' }`: resolve with
   * the node's seq. Upserts without an id get one here, so a write sent again (to a new leader
   * tab) writes the same rows.
   */
  write(ops, opts) { return this.call('write', withIds(ops), opts); }
  /** The writes not yet confirmed by the node, oldest first. */
  pending() { return this.call('pending'); }
  disconnect() { return this.call('stop'); }
  reconnect() { return this.call('start'); }
  /** Close this tab's handle; a leader hands the replica to another tab. */
  close() {
    this.worker?.terminate();
    this.release?.();
    this.channel?.close();
  }
}

function withIds(ops) {
  if (!Array.isArray(ops)) return ops;
  return ops.map((o) => (o?.op === 'upsert' && o.kind !== 'vector' && o.data && typeof o.data === 'object' && o.data.id === undefined && globalThis.crypto?.randomUUID
    ? { ...o, data: { ...o.data, id: globalThis.crypto.randomUUID() } }
    : o));
}

/**
 * Open a replica. Options: url (the node's /v1/sync; omit for an offline-only replica), token,
 * name (the OPFS database name, and what tabs share), persist (default true), protocol ('bin',
 * the default, or 'json'), namespaces (default: all the token may read), shareTabs (default
 * true: one replica and one connection for all tabs of the origin; without Web Locks or
 * BroadcastChannel, or with persist false, each tab opens its own).
 */
export async function openReplica(opts = {}) {
  // Importing this module touches no browser API (it loads in Node and in bundlers); opening does.
  if (typeof Worker === 'undefined') {
    throw new Error('openReplica needs Web Workers (a browser); elsewhere drive the wasm Replica with SyncClient from hivesync/sync.js');
  }
  const r = new HivesyncReplica();
  const locks = globalThis.navigator?.locks;
  const share = opts.persist !== false && opts.shareTabs !== false && locks && typeof BroadcastChannel === 'function';
  if (!share) {
    r.opened = { ...(await r.lead(opts)), tab: ROLE_ALONE };
    return r;
  }
  const key = `hivesync:${opts.name ?? 'hivesync'}`;
  r.channel = new BroadcastChannel(key);
  const hold = (resolve) => new Promise((done) => { r.release = done; resolve?.(); });
  const leading = await new Promise((resolve) => {
    locks.request(key, { ifAvailable: true }, (lock) => (lock ? hold(() => resolve(true)) : resolve(false)));
  });
  if (leading) {
    r.opened = { ...(await r.lead(opts)), tab: 'leader' };
    return r;
  }
  r.follow();
  // When the leader's tab closes, this one may be next.
  locks.request(key, async () => {
    const wait = hold();
    await r.lead(opts, true);
    r.opened = { ...r.opened, tab: 'leader' };
    await wait;
  });
  r.opened = { ...(await r.call('opened')), tab: 'follower' };
  return r;
}
