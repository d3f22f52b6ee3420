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

/**
 * @typedef {import('./hivesync.js').OpenOptions} OpenOptions
 * @typedef {import('./hivesync.js').Opened} Opened
 * @typedef {import('./hivesync.js').ReplicaEvent} ReplicaEvent
 * @typedef {(ev: ReplicaEvent) => void} Listener
 * @typedef {{ resolve: (result: unknown) => void, reject: (e: Error) => void, method: string, args: unknown[] }} Call
 *   a call waiting for its answer
 * @typedef {{ id?: unknown, result?: unknown, error?: string }} Answer  the answer to call `id`
 * @typedef {import('./hivesync.js').LiveDiff} LiveDiff
 * @typedef {{ id: number, result: unknown, diff: LiveDiff, runs: number, error?: string }} LiveMessage
 *   a live query's answer, from the Worker (to every tab: each delivers its own)
 * @typedef {{ read: string, args: unknown[], onResult: (r: { result: unknown, diff: LiveDiff, runs: number }) => void, onError: ((e: Error) => void) | null, handle: { runs: number, closed: boolean }, id: number | null }} LiveEntry
 * @typedef {{ id?: number | string, result?: unknown, error?: string, event?: ReplicaEvent, trap?: boolean, live?: LiveMessage }} FromWorker
 *   what the Worker posts: an answer (`id` is `tab:id` for a call another tab sent), an event, or a trap
 * @typedef {{ kind: 'hello', tab: string } | { kind: 'leader', tab: string, worker: string } | { kind: 'event', event: ReplicaEvent } | { kind: 'live', live: LiveMessage }
 *   | { kind: 'answer', to: string, id: number, result?: unknown, error?: string }
 *   | { kind: 'call', from: string, id: number, method: string, args: unknown[] }} TabMessage
 *   what tabs send each other over the BroadcastChannel
 * @typedef {{ message?: unknown } | null | undefined} Thrown  what a rejection carries (an Error, as a rule)
 */

/**
 * @typedef {string} TypeSpec  a name in TYPES, ending in `?` when the value may be left out
 * @typedef {Record<string, TypeSpec>} Fields  an object parameter's fields
 * @typedef {[name: string, type: TypeSpec | Fields]} Param  a parameter; a name ending in `?` may be left out
 */
// Each public method's parameters, checked on the page before a call leaves it: a wrong call is
// a TypeError naming the signature (it never reaches the Worker or the wasm). A type ending in
// `?` may be left out (or null); an object type lists its fields the same way, and a field it
// does not list is refused (a misspelt option would otherwise be ignored).
const SEARCH = { text: 'string', ns: 'string?', kind: 'string?', records: 'records?', limit: 'count?' };
const KNN = { model: 'string', embedding: 'numbers', k: 'count', ns: 'string?', kind: 'string?' };
/** @satisfies {Record<string, Param[]>} */
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
  patch: [['kind', 'patchKind'], ['id', 'string'], ['fields', 'fields'], ['opts?', { ns: 'string?', wait: 'wait?' }]],
  pending: [],
  disconnect: [],
  reconnect: [],
};
/** @satisfies {Fields} */
const OPEN = {
  url: 'string?', token: 'string?', name: 'name?', persist: 'boolean?', protocol: 'protocol?',
  namespaces: 'strings?', shareTabs: 'boolean?', getToken: 'tokenSource?', image: 'boolean?',
};
// Each type: [check, what the message says it must be, how the signature writes it].
/** @typedef {[check: (v: unknown) => boolean, must: string, spelling: string]} TypeInfo */
/** @type {(...vs: string[]) => TypeInfo} */
const oneOf = (...vs) => { const t = vs.map((x) => `'${x}'`).join(' | '); return [(v) => vs.includes(/** @type {string} */ (v)), t, t]; };
/** @type {Record<string, TypeInfo>} */
const TYPES = {
  string: [(v) => typeof v === 'string', 'a string', 'string'],
  boolean: [(v) => typeof v === 'boolean', 'a boolean', 'boolean'],
  // What SQLite and the wasm take as a count.
  count: [(v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= 0x7fffffff, 'an integer from 0 to 2147483647', 'number'],
  name: [(v) => typeof v === 'string' && v.length > 0 && new TextEncoder().encode(v).length <= 128 && !v.includes('\0'),
    'a string of 1 to 128 bytes without NUL', 'string'],
  kind: oneOf('entity', 'edge', 'note', 'event', 'vector'),
  records: [(v) => Array.isArray(v) && v.every((r) => r === 'entity' || r === 'note'), "an array of 'entity' | 'note'", "('entity' | 'note')[]"],
  direction: oneOf('out', 'in', 'both'),
  patchKind: oneOf('entity', 'edge', 'note'),
  fields: [(v) => v !== null && typeof v === 'object' && !Array.isArray(v), 'an object of the fields to change', 'Record<string, unknown>'],
  wait: oneOf('local', 'node'),
  protocol: oneOf('bin', 'json'),
  numbers: [(v) => Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x)), 'an array of finite numbers', 'number[]'],
  strings: [(v) => Array.isArray(v) && v.every((x) => typeof x === 'string'), 'an array of strings', 'string[]'],
  array: [(v) => Array.isArray(v), 'an array', 'unknown[]'],
  bytes: [(v) => v instanceof Uint8Array || v instanceof ArrayBuffer, 'a Uint8Array', 'Uint8Array'],
  tokenSource: [(v) => typeof v === 'function', 'a function that returns a token (or a promise of one)', '() => string | null | undefined | Promise<string | null | undefined>'],
  ops: [(v) => Array.isArray(v) && v.every((o) => o !== null && typeof o === 'object' && !Array.isArray(o)), 'an array of write ops (objects)', 'WriteOp[]'],
};
// The reads `live` keeps current.
const LIVE_READS = ['get', 'list', 'search', 'knn', 'hybrid', 'neighbors', 'traverse', 'sql'];
/** @type {(t: string) => string} */
const bare = (t) => t.replace(/\?$/, '');
/** @type {(n: string, t: TypeSpec | Fields) => boolean} */
const optional = (n, t) => n.endsWith('?') || (typeof t === 'string' && t.endsWith('?'));
/** @type {(t: TypeSpec | Fields) => string} */
const showType = (t) => (typeof t === 'object'
  ? `{ ${Object.entries(t).map(([k, f]) => `${k}${f.endsWith('?') ? '?' : ''}: ${TYPES[bare(f)][2]}`).join(', ')} }`
  : TYPES[bare(t)][2]);
/** @typedef {keyof typeof SIGNATURES | 'openReplica'} Checked  a method whose arguments are checked */
/** @type {(method: Checked) => Param[]} */
const paramsOf = (method) => (method === 'openReplica' ? [['opts?', OPEN]] : SIGNATURES[method]);
/**
 * A method's signature as its TypeErrors name it, e.g. `get(kind: ..., ns: string, id: string, model?: string)`.
 * @param {Checked} method
 */
function signature(method) {
  return `${method}(${paramsOf(method).map(([n, t]) => `${bare(n)}${optional(n, t) ? '?' : ''}: ${showType(t)}`).join(', ')})`;
}
/** @type {(v: unknown) => string} */
const what = (v) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v === 'undefined' ? 'undefined' : `a ${typeof v}`);
/** @type {(v: unknown) => v is Record<string, unknown>} */
const plain = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof ArrayBuffer);

/**
 * Check a call's arguments against its signature; throws a TypeError naming it.
 * @param {Checked} method
 * @param {unknown[]} args
 */
function checkArgs(method, args) {
  const params = paramsOf(method);
  /** @type {(msg: string) => never} */
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
    /** @type {Map<unknown, Call>} */
    this.calls = new Map(); // id -> { resolve, reject, method, args } (looked up by the id an answer carries)
    this.next = 1;
    /** @type {Map<string, Listener[]>} */
    this.listeners = new Map();
    /** @type {(m: object) => void} */
    this.send = () => {};
    this.role = ROLE_ALONE;
    this.tab = globalThis.crypto?.randomUUID?.() ?? String(Math.random());
    /** @type {BroadcastChannel | null} */
    this.channel = null;
    /** @type {Worker | null} */
    this.worker = null;
    /** @type {(() => void) | null} */
    this.release = null; // lets go of the leader lock
    /** @type {OpenOptions | null} */
    this.opts = null;
    // Errors that came before anyone listened (while opening, say: persistence unavailable),
    // for the first `error` or `*` listener.
    /** @type {ReplicaEvent[]} */
    this.unheard = [];
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.renewTimer = null; // the next call of getToken, ahead of the token's expiry
    this.renewFailures = 0;
    /** What opening found (set by openReplica before it returns this replica). @type {Opened} */
    this.opened; // (a declaration, for the type checker: it assigns nothing)
    /** This tab's live queries, by the Worker's id. @type {Map<number, LiveEntry>} */
    this.lives = new Map();
    /** The Worker that serves this tab, as a follower last heard. @type {string | null} */
    this.leaderWorker = null;
  }

  /**
   * A live query's answer: to its callback, if it is this tab's.
   * @param {LiveMessage} m
   */
  deliverLive(m) {
    const l = this.lives.get(m.id);
    if (!l) return;
    l.handle.runs = m.runs;
    if (m.error !== undefined) {
      if (l.onError) l.onError(new Error(m.error));
      else this.emitLocal({ type: 'error', message: `live query: ${m.error}` });
    } else {
      l.onResult({ result: m.result, diff: m.diff, runs: m.runs });
    }
  }

  /** @param {ReplicaEvent} event */
  emitLocal(event) {
    const fs = [...(this.listeners.get(event.type) ?? []), ...(this.listeners.get('*') ?? [])];
    if (fs.length === 0 && event.type === 'error' && this.unheard.length < 16) this.unheard.push(event);
    for (const f of fs) f(event);
  }

  /** @param {Answer} m */
  settle(m) {
    const c = this.calls.get(m.id);
    if (!c) return;
    this.calls.delete(m.id);
    if (m.error !== undefined) c.reject(new Error(m.error)); else c.resolve(m.result);
  }

  /**
   * A checked call of a public method: a wrong argument rejects with a TypeError.
   * @param {keyof typeof SIGNATURES} method
   * @param {unknown[]} args
   * @param {string} [as]  the Worker's name for the method
   */
  checked(method, args, as = method) {
    try {
      checkArgs(method, args);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.call(as, ...args);
  }

  /**
   * @param {string} method
   * @param {...unknown} args
   * @returns {Promise<unknown>}
   */
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

  /**
   * Run the replica in a Worker of this tab; with a channel, serve the other tabs too.
   * @param {OpenOptions} opts
   * @param {boolean} [takeover]
   * @returns {Promise<Omit<Opened, 'tab'>>}
   */
  async lead(opts, takeover = false) {
    this.opts = opts;
    const { getToken, ...plain } = opts;
    /** @type {Record<string, unknown>} */
    let openOpts = { ...plain, takeover };
    /** @type {string | undefined} */
    let token;
    if (getToken && opts.url) {
      // The token comes from the app's sign-in: asked for before connecting, and again ahead
      // of its expiry (renewed on the open connection).
      const got = await this.fetchToken();
      token = got.token;
      openOpts = { ...openOpts, token, tokenFromPage: true, signedOut: got.error ?? null };
    }
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.worker = worker;
    // Which Worker serves the tabs now (a new one after a hand-over or a trap): followers open
    // their live queries again in a new one.
    const workerId = globalThis.crypto?.randomUUID?.() ?? String(Math.random());
    /** @type {Map<string, unknown>} */
    const served = new Map(); // `${tab}:${id}` -> answer, for calls another tab sends twice
    worker.onmessage = (e) => {
      const m = /** @type {FromWorker} */ (e.data);
      if (m.trap) {
        this.recover(worker, m);
        return;
      }
      if (m.live) {
        this.deliverLive(m.live);
        this.channel?.postMessage({ kind: 'live', live: m.live });
      } else if (m.event) {
        if (m.event.type === 'token_needed') this.renewNow();
        this.emitLocal(m.event);
        this.channel?.postMessage({ kind: 'event', event: m.event });
      } else if (typeof m.id === 'string' && m.id.includes(':')) {
        const [to, id] = [m.id.slice(0, m.id.lastIndexOf(':')), Number(m.id.slice(m.id.lastIndexOf(':') + 1))];
        const answer = { kind: 'answer', to, id, result: m.result, error: m.error };
        served.delete(`pending ${m.id}`);
        served.set(m.id, answer);
        if (served.size > 1000) served.delete(/** @type {string} */ (served.keys().next().value));
        this.channel?.postMessage(answer);
      } else {
        this.settle(m);
      }
    };
    this.send = (m) => worker.postMessage(m);
    const opened = /** @type {Promise<Omit<Opened, 'tab'>>} */ (this.call('open', openOpts));
    if (token) this.renewLater(token);
    else if (getToken && opts.url) this.retryToken();
    this.role = this.channel ? 'leader' : ROLE_ALONE;
    // The worker answers calls in order after its open: what waited for the old leader goes now.
    for (const [id, c] of this.calls) if (c.method !== 'open') this.send({ id, method: c.method, args: c.args });
    if (this.channel) {
      // (this.channel is not null here, nor later: a tab's channel is set once, before it leads.)
      this.channel.onmessage = (e) => {
        const m = /** @type {TabMessage} */ (e.data);
        if (m.kind === 'hello') /** @type {BroadcastChannel} */ (this.channel).postMessage({ kind: 'leader', tab: this.tab, worker: workerId });
        if (m.kind !== 'call') return;
        const key = `${m.from}:${m.id}`;
        if (served.has(key)) { /** @type {BroadcastChannel} */ (this.channel).postMessage(served.get(key)); return; }
        if (served.has(`pending ${key}`)) return;
        served.set(`pending ${key}`, true);
        worker.postMessage({ id: key, method: m.method, args: m.args });
      };
      this.channel.postMessage({ kind: 'leader', tab: this.tab, worker: workerId });
    }
    return opened;
  }

  /**
   * The Worker's WebAssembly trapped (a bug: no argument a page passes reaches one). Its module
   * is unusable, so the Worker is replaced by a fresh one that opens the same stored replica;
   * the call that trapped is refused, the others are sent again, and an `error` event says
   * what happened (and what was lost, for a replica that was only in memory).
   * @param {Worker} worker
   * @param {FromWorker} m
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
    // (this.opts is set: the Worker that trapped was started by lead.)
    this.lead(/** @type {OpenOptions} */ (this.opts), true).then((o) => { this.opened = { ...o, tab: this.opened?.tab ?? ROLE_ALONE }; this.reopenLives(); }, (err) => {
      this.emitLocal({ type: 'error', message: `the replica could not be reopened: ${/** @type {Thrown} */ (err)?.message ?? err}` });
    });
  }

  /**
   * Ask the app's getToken for a token.
   * @returns {Promise<{ token?: string, error?: string }>}
   */
  async fetchToken() {
    const g = this.opts?.getToken;
    if (!g) return { error: 'no getToken' };
    try {
      const t = await g();
      if (typeof t === 'string' && t.length > 0) return { token: t };
      return { error: 'signed out: getToken gave no token' };
    } catch (e) {
      return { error: `signed out: getToken failed (${/** @type {Thrown} */ (e)?.message ?? e})` };
    }
  }

  /** Get a fresh token now and hand it to the Worker; without one, try again after a while. */
  async renewNow() {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    const got = await this.fetchToken();
    if (!this.worker) return;
    if (got.token) {
      this.renewFailures = 0;
      await this.call('setToken', got.token);
      this.renewLater(got.token);
    } else {
      // The token in use may still be good until its expiry; the status says why once it is not.
      await this.call('tokenFailed', got.error);
      this.retryToken();
    }
  }

  /** Ask getToken again later (1 s, doubling up to 30 s). */
  retryToken() {
    const wait = Math.min(30000, 1000 * 2 ** this.renewFailures++);
    this.renewTimer = setTimeout(() => this.renewNow(), wait);
  }

  /**
   * Renew ahead of the token's expiry (a JWT's `exp`: a quarter of its remaining life early,
   * at least a second); an opaque token is not renewed.
   * @param {string} token
   */
  renewLater(token) {
    const exp = jwtExpiry(token);
    if (exp === null) return;
    const left = exp * 1000 - Date.now();
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => this.renewNow(), Math.max(200, left - Math.max(1000, left / 4)));
  }

  /** Send calls to the leader tab and take its events (over this.channel, which openReplica set). */
  follow() {
    this.role = 'follower';
    this.send = (m) => /** @type {BroadcastChannel} */ (this.channel).postMessage({ kind: 'call', from: this.tab, ...m });
    /** @type {BroadcastChannel} */ (this.channel).onmessage = (e) => {
      const m = /** @type {TabMessage} */ (e.data);
      if (m.kind === 'event') this.emitLocal(m.event);
      else if (m.kind === 'live') this.deliverLive(m.live);
      else if (m.kind === 'answer' && m.to === this.tab) this.settle(m);
      else if (m.kind === 'leader') {
        this.resend();
        // Another Worker serves the tabs now (another tab leads, or the leader's Worker was
        // reopened after a trap): it has none of this tab's live queries.
        if (this.leaderWorker !== null && m.worker !== this.leaderWorker) this.reopenLives();
        this.leaderWorker = m.worker;
      }
    };
    /** @type {BroadcastChannel} */ (this.channel).postMessage({ kind: 'hello', tab: this.tab });
  }

  /**
   * Listen to `status`, `applied`, `live`, `offline`, `welcome`, `written`, `rejected`, `error` (or `*`); the payloads are in hivesync.d.ts.
   * @param {string} type
   * @param {Listener} f
   */
  on(type, f) {
    if (typeof f !== 'function') throw new TypeError(`on(type: string, f: (event) => void): \`f\` must be a function, got ${what(f)}`);
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    /** @type {Listener[]} */ (this.listeners.get(type)).push(f);
    if ((type === 'error' || type === '*') && this.unheard.length) {
      const held = this.unheard;
      this.unheard = [];
      queueMicrotask(() => { for (const ev of held) f(ev); });
    }
    return () => this.listeners.set(type, /** @type {Listener[]} */ (this.listeners.get(type)).filter((g) => g !== f));
  }

  /** @param {unknown[]} a */
  status(...a) { return this.checked('status', a); }
  /** @param {unknown[]} a */
  search(...a) { return this.checked('search', a); }
  /** @param {unknown[]} a */
  knn(...a) { return this.checked('knn', a); }
  /** @param {unknown[]} a */
  hybrid(...a) { return this.checked('hybrid', a); }
  /** @param {unknown[]} a */
  get(...a) { return this.checked('get', a); }
  /** @param {unknown[]} a */
  list(...a) { return this.checked('list', a); }
  /** @param {unknown[]} a */
  neighbors(...a) { return this.checked('neighbors', a); }
  /** @param {unknown[]} a */
  traverse(...a) { return this.checked('traverse', a); }
  /** @param {unknown[]} a */
  sql(...a) { return this.checked('sql', a); }
  /** @param {unknown[]} a */
  models(...a) { return this.checked('models', a); }
  /**
   * SHA-256 of the logical state (optionally of some namespaces): equal to `hivesync digest` on the node.
   * @param {unknown[]} a
   */
  digest(...a) { return this.checked('digest', a); }
  /** @param {unknown[]} a */
  exportBytes(...a) { return this.checked('exportBytes', a); }
  /** @param {unknown[]} a */
  importBytes(...a) { return this.checked('importBytes', a); }
  /**
   * Write here at once (uploaded exactly once when online); `{ wait: 'node' }`: resolve with
   * the node's seq. Upserts without an id get one here, so a write sent again (to a new leader
   * tab) writes the same rows.
   * @param {unknown[]} a
   */
  write(...a) {
    try { checkArgs('write', a); } catch (e) { return Promise.reject(e); }
    return this.call('write', withIds(a[0]), a[1]);
  }
  /**
   * Change only the fields given, of the row as it is where the write is applied: here at once,
   * at the node when uploaded, and again on top of whatever the node's feed brought meanwhile,
   * so another writer's edit of other fields survives. `properties` merge by key (a `null`
   * removes one); an entity's `tags` may be `{ add: [...], remove: [...] }`.
   * @param {unknown[]} a
   */
  patch(...a) {
    try { checkArgs('patch', a); } catch (e) { return Promise.reject(e); }
    const [kind, id, fields, opts] = /** @type {[string, string, object, { ns?: string, wait?: 'local' | 'node' } | undefined]} */ (a);
    const op = { op: 'patch', kind, ns: opts?.ns ?? 'default', id, data: fields };
    return this.call('write', [op], opts?.wait ? { wait: opts.wait } : undefined);
  }
  /**
   * Keep a read live: `read` is the name of one of this replica's reads (`get`, `list`,
   * `search`, `knn`, `hybrid`, `neighbors`, `traverse`, `sql`) and `args` the arguments it
   * takes. `onResult` gets its answer at once, then again whenever a write to the replica (the
   * node's feed, a local write, a refused write taken back) changed it, with what changed
   * (`diff`: keys `added`, `removed`, `changed`, and whether the order `moved`). A write that
   * cannot affect it does not run it again (`runs` counts its runs). `close()` ends it.
   * @param {string} read
   * @param {unknown[]} args
   * @param {(r: { result: unknown, diff: LiveDiff, runs: number }) => void} onResult
   * @param {(e: Error) => void} [onError]
   */
  live(read, args, onResult, onError) {
    const sig = 'live(read: string, args: unknown[], onResult: (r) => void, onError?: (e: Error) => void)';
    if (!LIVE_READS.includes(read)) throw new TypeError(`${sig}: \`read\` must be one of ${LIVE_READS.join(', ')}, got ${what(read)}`);
    if (!Array.isArray(args)) throw new TypeError(`${sig}: \`args\` must be an array (the arguments of ${read}), got ${what(args)}`);
    if (typeof onResult !== 'function') throw new TypeError(`${sig}: \`onResult\` must be a function, got ${what(onResult)}`);
    if (onError !== undefined && typeof onError !== 'function') throw new TypeError(`${sig}: \`onError\` must be a function, got ${what(onError)}`);
    checkArgs(/** @type {keyof typeof SIGNATURES} */ (read), args);
    /** @type {LiveEntry} */
    const entry = { read, args, onResult, onError: onError ?? null, handle: { runs: 0, closed: false }, id: null };
    const handle = Object.assign(entry.handle, {
      close: () => {
        handle.closed = true;
        if (entry.id !== null) { this.lives.delete(entry.id); this.call('liveClose', entry.id).catch(() => {}); }
      },
    });
    this.openLive(entry);
    return handle;
  }
  /**
   * Open `entry` in the Worker (again, after a new leader or a reopened Worker: it answers once
   * more).
   * @param {LiveEntry} entry
   */
  openLive(entry) {
    this.call('liveOpen', entry.read, entry.args).then((r) => {
      const m = /** @type {LiveMessage} */ (r);
      if (entry.handle.closed) { this.call('liveClose', m.id).catch(() => {}); return; }
      entry.id = m.id;
      this.lives.set(m.id, entry);
      this.deliverLive(m);
    }, (e) => (entry.onError ? entry.onError(e) : this.emitLocal({ type: 'error', message: `live ${entry.read}: ${e.message}` })));
  }

  /** This tab's live queries, opened again in the Worker that serves it now. */
  reopenLives() {
    const open = [...this.lives.values()];
    this.lives.clear();
    for (const entry of open) this.openLive(entry);
  }

  /**
   * The writes not yet confirmed by the node, oldest first.
   * @param {unknown[]} a
   */
  pending(...a) { return this.checked('pending', a); }
  /** @param {unknown[]} a */
  disconnect(...a) { return this.checked('disconnect', a, 'stop').then(() => undefined); }
  /** @param {unknown[]} a */
  reconnect(...a) { return this.checked('reconnect', a, 'start').then(() => undefined); }
  /** Close this tab's handle; a leader hands the replica to another tab. */
  close() {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    this.worker?.terminate();
    this.worker = null;
    this.release?.();
    this.channel?.close();
  }
}

/**
 * A JWT's `exp` (seconds), read without checking it (the node checks); null for anything else.
 * @param {string} token
 * @returns {number | null}
 */
function jwtExpiry(token) {
  const part = token.split('.')[1];
  if (!part) return null;
  try {
    const text = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    const exp = JSON.parse(text)?.exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/**
 * @param {unknown} ops
 * @returns {unknown}
 */
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
 * BroadcastChannel, or with persist false, each tab opens its own), getToken (an async function
 * giving a token from the app's sign-in: called before connecting and again ahead of the
 * token's expiry; while it gives none the replica stays readable and writes stay pending).
 * @param {unknown[]} args
 * @returns {Promise<HivesyncReplica>}
 */
export async function openReplica(...args) {
  checkArgs('openReplica', args);
  const opts = /** @type {OpenOptions} */ (args[0] ?? {}); // as checkArgs found it
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
  /** @type {(resolve?: () => void) => Promise<void>} */
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
    r.reopenLives();
    await wait;
  });
  r.opened = { .../** @type {Omit<Opened, 'tab'>} */ (await r.call('opened')), tab: 'follower' };
  return r;
}
