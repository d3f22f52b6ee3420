// @ts-check
// The replica's Worker: SQLite (OPFS-persisted) and the sync client run here, off the main
// thread. The page talks to it through hivesync.js.
import init, { Replica } from './pkg/hivesync_wasm.js';
import { SyncClient, outboxStatus } from './sync.js';

/**
 * @typedef {import('./hivesync.js').OpenOptions} OpenOptions
 * @typedef {import('./hivesync.js').Opened} Opened
 * @typedef {import('./hivesync.js').Status} Status
 * @typedef {import('./hivesync.js').ReplicaEvent} ReplicaEvent
 * @typedef {import('./hivesync.js').Kind} Kind
 * @typedef {import('./hivesync.js').Direction} Direction
 * @typedef {import('./hivesync.js').SearchQuery} SearchQuery
 * @typedef {import('./hivesync.js').KnnQuery} KnnQuery
 * @typedef {import('./hivesync.js').ListOptions} ListOptions
 * @typedef {import('./hivesync.js').WriteOp} WriteOp
 * @typedef {{ id?: number | string, method: string, args?: unknown[] }} CallMessage
 *   a call from the page: `id` is a number, or `tab:id` for a call another tab sent through it
 * @typedef {{ message?: unknown }} Thrown  what was thrown (an Error, as a rule)
 */

// Set by open(), which every other call waits for (isOpen): typed as set.
let replica = /** @type {Replica} */ (/** @type {unknown} */ (null));
/** @type {SyncClient | null} */
let client = null;
// Local first: the page's first query is answered from the stored copy before the sync client
// starts competing for this thread; sync starts right after that answer, or after 300 ms at
// the latest (page open to first answer with 10,000 stored entities: 330-360 ms, against
// 330-500 ms, and up to 1 s, when both start together; benches/replica.rs).
/** @type {ReturnType<typeof setTimeout> | null} */
let pendingStart = null;
const startSync = () => {
  if (!pendingStart) return;
  clearTimeout(pendingStart);
  pendingStart = null;
  /** @type {SyncClient} */ (client).start(); // (pendingStart is only set with a client)
};
/** @param {ReplicaEvent} event */
const emit = (event) => postMessage({ event });

// Checkpoints in idle time: once the replica has had no write and no frame for IDLE_MS, the
// WAL is copied into the database file here, where no write waits for it (SQLite's own
// checkpoint, inside a commit, is only the backstop for a replica that is never idle; see
// `Replica.checkpoint`). Queries do not put it off: they add nothing to the WAL.
const IDLE_MS = 100;
/** @type {ReturnType<typeof setTimeout> | null} */
let idleTimer = null;
const worked = () => {
  liveSoon();
  clearTimeout(/** @type {ReturnType<typeof setTimeout>} */ (idleTimer)); // (null clears nothing)
  idleTimer = setTimeout(() => {
    idleTimer = null;
    try { replica?.checkpoint(); } catch (e) { emit({ type: 'error', message: `checkpoint: ${/** @type {Thrown} */ (e).message ?? e}` }); }
  }, IDLE_MS);
};

// Live queries: after work (frames applied, a write, a refusal taken back), the answers that
// changed go to the page, at most once per LIVE_MS however much work comes, and never taking
// more than a share of the Worker's time from applying: after a run of them that took T ms, the
// next waits at least LIVE_YIELD x T (so under a long catch-up, live queries take at most
// 1 / (1 + LIVE_YIELD) of the time; with work only now and then, they answer at once).
const LIVE_MS = 16;
const LIVE_YIELD = 4;
/** @type {ReturnType<typeof setTimeout> | null} */
let liveTimer = null;
let liveNotBefore = 0;
/** @param {number} [ms]  0 after a write of the page's own: its live queries answer at once */
const liveSoon = (ms = LIVE_MS) => {
  if (liveTimer || !replica?.liveAny()) return;
  liveTimer = setTimeout(() => {
    liveTimer = null;
    const t0 = performance.now();
    try {
      for (const r of JSON.parse(replica.liveTick())) postMessage({ live: r });
    } catch (e) { emit({ type: 'error', message: `live queries: ${/** @type {Thrown} */ (e).message ?? e}` }); }
    const t1 = performance.now();
    liveNotBefore = t1 + LIVE_YIELD * (t1 - t0);
  }, Math.max(ms, liveNotBefore - performance.now()));
};

/** @type {Omit<Opened, 'tab'> | null} */
let openedInfo = null;
// Why the replica is in memory though persistence was asked for (null when it is not).
/** @type {string | null} */
let storageError = null;
/** @type {(value?: unknown) => void} */
let markOpen;
const isOpen = new Promise((r) => { markOpen = r; });

/**
 * @param {OpenOptions & { takeover?: boolean }} opts  `takeover`: from a tab that just closed
 * @returns {Promise<Omit<Opened, 'tab'>>}
 */
async function open(opts) {
  const t0 = performance.now();
  await init();
  const tInit = performance.now();
  const name = opts.name ?? 'hivesync';
  if (opts.persist !== false) {
    // Taking over from a tab that just closed (or reloaded): its Worker may hold the OPFS files
    // a moment longer. (Without OPFS at all, e.g. outside a secure context, no retry helps.)
    const hasOpfs = typeof navigator !== 'undefined' && typeof navigator.storage?.getDirectory === 'function';
    const until = performance.now() + (hasOpfs ? (opts.takeover ? 5000 : 1500) : 0);
    for (;;) {
      try {
        replica = await Replica.openPersistent(name);
        break;
      } catch (e) {
        if (performance.now() < until) { await new Promise((r) => setTimeout(r, 100)); continue; }
        storageError = `persistence unavailable, the replica is kept in memory (its data and pending writes are lost when this page closes): ${/** @type {Thrown} */ (e).message ?? e}`;
        emit({ type: 'error', message: storageError });
        break;
      }
    }
  }
  if (!replica) replica = Replica.openMemory();
  const tOpen = performance.now();
  if (opts.url) {
    client = new SyncClient(replica, { .../** @type {OpenOptions & { url: string }} */ (opts), storageError, onEvent: emit, onWork: worked });
    // A replica that holds nothing has no answer to give first: its first copy starts at once.
    pendingStart = setTimeout(startSync, replica.appliedSeq() === 0 ? 0 : 300);
  }
  // Where opening spent its time (ms), for diagnosing slow starts.
  const timings = { wasm: Math.round(tInit - t0), db: Math.round(tOpen - tInit) };
  openedInfo = { storage: /** @type {Opened['storage']} */ (replica.storage), storageError, seq: replica.appliedSeq(), timings };
  markOpen();
  return openedInfo;
}

/** @type {(s: string) => unknown} */
const json = (s) => JSON.parse(s);
/** @returns {Status} */
const offlineStatus = () => {
  const seq = replica.appliedSeq();
  return { type: 'status', seq, head: seq, lag: 0, live: false, online: false, storage: /** @type {Status['storage']} */ (replica.storage), storageError, error: null, resumedFrom: null, signedOut: null, ...outboxStatus(replica) };
};
const methods = {
  open,
  // What opening found, for the other tabs this one serves.
  opened: () => ({ ...openedInfo, seq: replica.appliedSeq() }),
  // An offline-only replica (no url) answers with the same fields as the sync client's status.
  status: () => client ? client.status() : offlineStatus(),
  search: (/** @type {SearchQuery} */ q) => json(replica.search(JSON.stringify(q))),
  knn: (/** @type {KnnQuery} */ q) => json(replica.knn(JSON.stringify(q))),
  hybrid: (/** @type {SearchQuery} */ t, /** @type {KnnQuery} */ k, /** @type {number | undefined} */ limit) => json(replica.hybrid(JSON.stringify(t), JSON.stringify(k), limit ?? 20)),
  get: (/** @type {Kind} */ kind, /** @type {string} */ ns, /** @type {string} */ id, /** @type {string | undefined} */ model) => json(replica.get(kind, ns, id, model)),
  list: (/** @type {Kind} */ kind, /** @type {string} */ ns, /** @type {ListOptions | undefined} */ o) => (o ??= {}, json(replica.list(kind, ns, o.kind, o.after, o.limit ?? 100))),
  neighbors: (/** @type {string} */ ns, /** @type {string} */ id, /** @type {{ direction?: Direction, relation?: string, limit?: number } | undefined} */ o) => (o ??= {}, json(replica.neighbors(ns, id, o.direction ?? 'out', o.relation, o.limit ?? 100))),
  traverse: (/** @type {string} */ ns, /** @type {string} */ id, /** @type {{ direction?: Direction, relation?: string, depth?: number, limit?: number } | undefined} */ o) => (o ??= {}, json(replica.traverse(ns, id, o.direction ?? 'out', o.relation, o.depth ?? 2, o.limit ?? 100))),
  sql: (/** @type {string} */ q, /** @type {unknown[] | undefined} */ params) => json(replica.sql(q, params ? JSON.stringify(params) : undefined)),
  models: () => json(replica.models()),
  digest: (/** @type {string[] | undefined} */ namespaces) => json(replica.digest(namespaces ? JSON.stringify(namespaces) : undefined)),
  exportBytes: () => replica.exportBytes(),
  importBytes: (/** @type {Uint8Array | ArrayBuffer} */ bytes) => replica.importBytes(bytes),
  write: (/** @type {WriteOp[]} */ ops, /** @type {{ wait?: 'local' | 'node' } | undefined} */ opts) => {
    if (!client) throw new Error('this replica has no node to upload to (open it with a url)');
    startSync();
    return client.write(ops, opts ?? {});
  },
  pending: () => json(replica.outboxPending()),
  liveOpen: (/** @type {string} */ read, /** @type {unknown[]} */ args) => json(replica.liveOpen(read, JSON.stringify(args))),
  liveClose: (/** @type {number} */ id) => replica.liveClose(id),
  // Tokens from the page's getToken (sign-in with the app's identity provider).
  setToken: (/** @type {string} */ token) => client?.setToken(token),
  tokenFailed: (/** @type {string} */ why) => client?.tokenFailed(why),
  stop: () => { if (pendingStart) { clearTimeout(pendingStart); pendingStart = null; } client?.stop(); },
  start: () => { if (pendingStart) startSync(); else client?.start(); },
  // For tests of the page's recovery: a trap, as a bug in the wasm would cause.
  __trap: () => replica.__trap(),
};

// A trap leaves the wasm module unusable: the page is told (it replaces this Worker) and every
// later call is refused rather than run on a broken module.
/** @type {string | null} */
let trapped = null;
/** @param {unknown} e */
const isTrap = (e) => e instanceof WebAssembly.RuntimeError;
/**
 * @param {unknown} e
 * @param {number | string} [id]  the call that trapped
 */
const reportTrap = (e, id) => {
  trapped = String(/** @type {Thrown | null | undefined} */ (e)?.message ?? e);
  try { client?.stop(); } catch { /* the module is gone */ }
  postMessage({ id, trap: true, error: trapped });
};
addEventListener('error', (e) => { if (isTrap(e.error)) { e.preventDefault(); reportTrap(e.error); } });
addEventListener('unhandledrejection', (e) => { if (isTrap(e.reason)) { e.preventDefault(); reportTrap(e.reason); } });

onmessage = async (e) => {
  const { id, method, args } = /** @type {CallMessage} */ (e.data);
  if (trapped) { postMessage({ id, error: `the replica failed in WebAssembly (${trapped}); it is being reopened` }); return; }
  if (!Object.hasOwn(methods, method)) { postMessage({ id, error: `no method ${String(method)}` }); return; }
  try {
    // Calls sent before the open finished (by other tabs, or resent after a handover) wait for it.
    if (method !== 'open') await isOpen;
    // (`method` is one of `methods`, as checked above; its arguments are as the page checked them.)
    const result = await /** @type {(...args: unknown[]) => unknown} */ (methods[/** @type {keyof typeof methods} */ (method)])(...(args ?? []));
    postMessage({ id, result });
    if (method === 'write' || method === 'importBytes') { liveSoon(0); worked(); }
    if (pendingStart && method !== 'open' && method !== 'status') setTimeout(startSync, 0);
  } catch (err) {
    if (isTrap(err)) reportTrap(err, id);
    else postMessage({ id, error: String(/** @type {Thrown | null | undefined} */ (err)?.message ?? err) });
  }
};
