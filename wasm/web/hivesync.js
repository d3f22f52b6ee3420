// @ts-check
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

// Each public method's parameters, checked on the page before a call leaves it: a wrong call is
// a TypeError naming the signature (it never reaches the Worker or the wasm). A type ending in
// `?` may be left out (or null); an object type lists its fields the same way, and a field it
// does not list is refused (a misspelt option would otherwise be ignored).
const SEARCH = { text: 'string', ns: 'string?', kind: 'string?', records: 'records?', limit: 'count?' };
const KNN = { model: 'string', embedding: 'numbers', k: 'count', ns: 'string?', kind: 'string?' };
const SIGNATURES = {
  status: [],
  search: [['query', SEARCH]],
  knn: [['query', KNN]],
  hybrid: [['text', SEARCH], ['knn', KNN], ['limit', 'count?']],
  get: [['kind', 'kind'], ['ns', 'string'], ['id', 'string'], ['model', 'string?']],
  list: [['kind', 'kind'], ['ns', 'string'], ['opts?', { kind: 'string?', after: 'string?', limit: 'count?' }]],
  neighbors: [['ns', 'string'], ['id', 'string'], ['opts?', { direction: 'direction?', relation: 'string?', limit: 'count?' }]],
  traverse: [['ns', 'string'], ['id', 'string'], ['opts?', { direction: 'direction?', relation: 'string?', depth: 'count?', limit: 'count?' }]],
  sql: [['query', 'string'], ['params', 'array?']],
  models: [],
  digest: [['namespaces', 'strings?']],
  exportBytes: [],
  importBytes: [['bytes', 'bytes']],
  write: [['ops', 'ops'], ['opts?', { wait: 'wait?' }]],
  pending: [],
  disconnect: [],
  reconnect: [],
};
const OPEN = {
  url: 'string?', token: 'string?', name: 'name?', persist: 'boolean?', protocol: 'protocol?',
  namespaces: 'strings?', shareTabs: 'boolean?',
};
// Each type: [check, what the message says it must be, how the signature writes it].
const oneOf = (...vs) => { const t = vs.map((x) => `'${x}'`).join(' | '); return [(v) => vs.includes(v), t, t]; };
const TYPES = {
  string: [(v) => typeof v === 'string', 'a string', 'string'],
  boolean: [(v) => typeof v === 'boolean', 'a boolean', 'boolean'],
  // What SQLite and the wasm take as a count.
  count: [(v) => Number.isSafeInteger(v) && v >= 0 && v <= 0x7fffffff, 'an integer from 0 to 2147483647', 'number'],
  name: [(v) => typeof v === 'string' && v.length > 0 && new TextEncoder().encode(v).length <= 128 && !v.includes('\0'),
    'a string of 1 to 128 bytes without NUL', 'string'],
  kind: oneOf('entity', 'edge', 'note', 'event', 'vector'),
  records: [(v) => Array.isArray(v) && v.every((r) => r === 'entity' || r === 'note'), "an array of 'entity' | 'note'", "('entity' | 'note')[]"],
  direction: oneOf('out', 'in', 'both'),
  wait: oneOf('local', 'node'),
  protocol: oneOf('bin', 'json'),
  numbers: [(v) => Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x)), 'an array of finite numbers', 'number[]'],
  strings: [(v) => Array.isArray(v) && v.every((x) => typeof x === 'string'), 'an array of strings', 'string[]'],
  array: [(v) => Array.isArray(v), 'an array', 'unknown[]'],
  bytes: [(v) => v instanceof Uint8Array || v instanceof ArrayBuffer, 'a Uint8Array', 'Uint8Array'],
  ops: [(v) => Array.isArray(v) && v.every((o) => o !== null && typeof o === 'object' && !Array.isArray(o)), 'an array of write ops (objects)', 'WriteOp[]'],
};
const bare = (t) => t.replace(/\?$/, '');
const optional = (n, t) => n.endsWith('?') || (typeof t === 'string' && t.endsWith('?'));
const showType = (t) => (typeof t === 'object'
  ? `{ ${Object.entries(t).map(([k, f]) => `${k}${f.endsWith('?') ? '?' : ''}: ${TYPES[bare(f)][2]}`).join(', ')} }`
  : TYPES[bare(t)][2]);
const paramsOf = (method) => (method === 'openReplica' ? [['opts?', OPEN]] : SIGNATURES[method]);
/** A method's signature as its TypeErrors name it, e.g. `get(kind: ..., ns: string, id: string, model?: string)`. */
function signature(method) {
  return `${method}(${paramsOf(method).map(([n, t]) => `${bare(n)}${optional(n, t) ? '?' : ''}: ${showType(t)}`).join(', ')})`;
}
const what = (v) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v === 'undefined' ? 'undefined' : `a ${typeof v}`);
const plain = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof ArrayBuffer);

/** Check a call's arguments against its signature; throws a TypeError naming it. */
function checkArgs(method, args) {
  const params = paramsOf(method);
  const fail = (msg) => { throw new TypeError(`${signature(method)}: ${msg}`); };
  if (args.length > params.length) fail(`takes ${params.length} argument${params.length === 1 ? '' : 's'} at most, got ${args.length}`);
  params.forEach(([n, t], i) => {
    const v = args[i];
    const name = bare(n);
    if (v === undefined || v === null) {
      if (!optional(n, t)) fail(`\`${name}\` is missing`);
      return;
    }
    if (typeof t === 'string') {
      if (!TYPES[bare(t)][0](v)) fail(`\`${name}\` must be ${TYPES[bare(t)][1]}, got ${what(v)}`);
      return;
    }
    if (!plain(v)) fail(`\`${name}\` must be an object, got ${what(v)}`);
    for (const k of Object.keys(v)) if (!(k in t)) fail(`\`${name}\` has no field \`${k}\` (it takes ${Object.keys(t).join(', ')})`);
    for (const [k, ft] of Object.entries(t)) {
      const fv = v[k];
      if (fv === undefined || fv === null) {
        if (!ft.endsWith('?')) fail(`\`${name}.${k}\` is missing`);
      } else if (!TYPES[bare(ft)][0](fv)) {
        fail(`\`${name}.${k}\` must be ${TYPES[bare(ft)][1]}, got ${what(fv)}`);
      }
    }
  });
}

export class HivesyncReplica {
  constructor() {
    this.calls = new Map(); // id -> { resolve, reject, method, args }
    this.next = 1;
    this.listeners = new Map();
    /** @type {(m: object) => void} */
    this.send = () => {};
    this.role = ROLE_ALONE;
    this.tab = globalThis.crypto?.randomUUID?.() ?? String(Math.random());
    this.channel = null;
    this.worker = null;
    this.release = null; // lets go of the leader lock
    this.opts = null;
    // Errors that came before anyone listened (while opening, say: persistence unavailable),
    // for the first `error` or `*` listener.
    this.unheard = [];
  }

  emitLocal(event) {
    const fs = [...(this.listeners.get(event.type) ?? []), ...(this.listeners.get('*') ?? [])];
    if (fs.length === 0 && event.type === 'error' && this.unheard.length < 16) this.unheard.push(event);
    for (const f of fs) f(event);
  }

  settle(m) {
    const c = this.calls.get(m.id);
    if (!c) return;
    this.calls.delete(m.id);
    if (m.error !== undefined) c.reject(new Error(m.error)); else c.resolve(m.result);
  }

  /** A checked call of a public method: a wrong argument rejects with a TypeError. */
  checked(method, args, as = method) {
    try {
      checkArgs(method, args);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.call(as, ...args);
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
    this.opts = opts;
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.worker = worker;
    const served = new Map(); // `${tab}:${id}` -> answer, for calls another tab sends twice
    worker.onmessage = (e) => {
      const m = e.data;
      if (m.trap) {
        this.recover(worker, m);
        return;
      }
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

  /**
   * The Worker's WebAssembly trapped (a bug: no argument a page passes reaches one). Its module
   * is unusable, so the Worker is replaced by a fresh one that opens the same stored replica;
   * the call that trapped is refused, the others are sent again, and an `error` event says
   * what happened (and what was lost, for a replica that was only in memory).
   */
  recover(worker, m) {
    if (this.worker !== worker) return;
    worker.terminate();
    this.worker = null;
    const c = m.id !== undefined ? this.calls.get(m.id) : null;
    if (c) {
      this.calls.delete(m.id);
      c.reject(new Error(`the replica failed in WebAssembly (${m.error}) and was reopened`));
    }
    const lost = this.opened?.storage === 'memory' ? ' Its copy was in memory only: it starts empty and syncs again from the node.' : '';
    this.emitLocal({ type: 'error', message: `the replica failed in WebAssembly (${m.error}); it was reopened.${lost}` });
    this.lead(this.opts, true).then((o) => { this.opened = { ...o, tab: this.opened?.tab ?? ROLE_ALONE }; }, (err) => {
      this.emitLocal({ type: 'error', message: `the replica could not be reopened: ${err?.message ?? err}` });
    });
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
    if (typeof f !== 'function') throw new TypeError(`on(type: string, f: (event) => void): \`f\` must be a function, got ${what(f)}`);
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(f);
    if ((type === 'error' || type === '*') && this.unheard.length) {
      const held = this.unheard;
      this.unheard = [];
      queueMicrotask(() => { for (const ev of held) f(ev); });
    }
    return () => this.listeners.set(type, this.listeners.get(type).filter((g) => g !== f));
  }

  status(...a) { return this.checked('status', a); }
  search(...a) { return this.checked('search', a); }
  knn(...a) { return this.checked('knn', a); }
  hybrid(...a) { return this.checked('hybrid', a); }
  get(...a) { return this.checked('get', a); }
  list(...a) { return this.checked('list', a); }
  neighbors(...a) { return this.checked('neighbors', a); }
  traverse(...a) { return this.checked('traverse', a); }
  sql(...a) { return this.checked('sql', a); }
  models(...a) { return this.checked('models', a); }
  /** SHA-256 of the logical state (optionally of some namespaces): equal to `hivesync digest` on the node. */
  digest(...a) { return this.checked('digest', a); }
  exportBytes(...a) { return this.checked('exportBytes', a); }
  importBytes(...a) { return this.checked('importBytes', a); }
  /**
   * Write here at once (uploaded exactly once when online); `{ wait: 'node' }`: resolve with
   * the node's seq. Upserts without an id get one here, so a write sent again (to a new leader
   * tab) writes the same rows.
   */
  write(...a) {
    try { checkArgs('write', a); } catch (e) { return Promise.reject(e); }
    return this.call('write', withIds(a[0]), a[1]);
  }
  /** The writes not yet confirmed by the node, oldest first. */
  pending(...a) { return this.checked('pending', a); }
  disconnect(...a) { return this.checked('disconnect', a, 'stop').then(() => undefined); }
  reconnect(...a) { return this.checked('reconnect', a, 'start').then(() => undefined); }
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
export async function openReplica(...args) {
  checkArgs('openReplica', args);
  const opts = args[0] ?? {};
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
