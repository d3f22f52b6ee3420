// @ts-check
// The replica's Worker: SQLite (OPFS-persisted) and the sync client run here, off the main
// thread. The page talks to it through hivesync.js.
import init, { Replica } from './pkg/hivesync_wasm.js';
import { SyncClient, outboxStatus } from './sync.js';

let replica = null;
let client = null;
// Local first: the page's first query is answered from the stored copy before the sync client
// starts competing for this thread; sync starts right after that answer, or after 300 ms at
// the latest (page open to first answer with 10,000 stored entities: 330-360 ms, against
// 330-500 ms, and up to 1 s, when both start together; benches/replica.rs).
let pendingStart = null;
const startSync = () => {
  if (!pendingStart) return;
  clearTimeout(pendingStart);
  pendingStart = null;
  client.start();
};
const emit = (event) => postMessage({ event });

// Checkpoints in idle time: once the replica has had no write and no frame for IDLE_MS, the
// WAL is copied into the database file here, where no write waits for it (SQLite's own
// checkpoint, inside a commit, is only the backstop for a replica that is never idle; see
// `Replica.checkpoint`). Queries do not put it off: they add nothing to the WAL.
const IDLE_MS = 100;
let idleTimer = null;
const worked = () => {
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => {
    idleTimer = null;
    try { replica?.checkpoint(); } catch (e) { emit({ type: 'error', message: `checkpoint: ${e.message ?? e}` }); }
  }, IDLE_MS);
};

let openedInfo = null;
// Why the replica is in memory though persistence was asked for (null when it is not).
let storageError = null;
let markOpen;
const isOpen = new Promise((r) => { markOpen = r; });

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
        storageError = `persistence unavailable, the replica is kept in memory (its data and pending writes are lost when this page closes): ${e.message ?? e}`;
        emit({ type: 'error', message: storageError });
        break;
      }
    }
  }
  if (!replica) replica = Replica.openMemory();
  const tOpen = performance.now();
  if (opts.url) {
    client = new SyncClient(replica, { ...opts, storageError, onEvent: emit, onWork: worked });
    pendingStart = setTimeout(startSync, 300);
  }
  // Where opening spent its time (ms), for diagnosing slow starts.
  const timings = { wasm: Math.round(tInit - t0), db: Math.round(tOpen - tInit) };
  openedInfo = { storage: replica.storage, storageError, seq: replica.appliedSeq(), timings };
  markOpen();
  return openedInfo;
}

const json = (s) => JSON.parse(s);
const offlineStatus = () => {
  const seq = replica.appliedSeq();
  return { type: 'status', seq, head: seq, lag: 0, live: false, online: false, storage: replica.storage, storageError, error: null, resumedFrom: null, ...outboxStatus(replica) };
};
const methods = {
  open,
  // What opening found, for the other tabs this one serves.
  opened: () => ({ ...openedInfo, seq: replica.appliedSeq() }),
  // An offline-only replica (no url) answers with the same fields as the sync client's status.
  status: () => client ? client.status() : offlineStatus(),
  search: (q) => json(replica.search(JSON.stringify(q))),
  knn: (q) => json(replica.knn(JSON.stringify(q))),
  hybrid: (t, k, limit) => json(replica.hybrid(JSON.stringify(t), JSON.stringify(k), limit ?? 20)),
  get: (kind, ns, id, model) => json(replica.get(kind, ns, id, model)),
  list: (kind, ns, o) => (o ??= {}, json(replica.list(kind, ns, o.kind, o.after, o.limit ?? 100))),
  neighbors: (ns, id, o) => (o ??= {}, json(replica.neighbors(ns, id, o.direction ?? 'out', o.relation, o.limit ?? 100))),
  traverse: (ns, id, o) => (o ??= {}, json(replica.traverse(ns, id, o.direction ?? 'out', o.relation, o.depth ?? 2, o.limit ?? 100))),
  sql: (q, params) => json(replica.sql(q, params ? JSON.stringify(params) : undefined)),
  models: () => json(replica.models()),
  digest: (namespaces) => json(replica.digest(namespaces ? JSON.stringify(namespaces) : undefined)),
  exportBytes: () => replica.exportBytes(),
  importBytes: (bytes) => replica.importBytes(bytes),
  write: (ops, opts) => {
    if (!client) throw new Error('this replica has no node to upload to (open it with a url)');
    startSync();
    return client.write(ops, opts ?? {});
  },
  pending: () => json(replica.outboxPending()),
  stop: () => { if (pendingStart) { clearTimeout(pendingStart); pendingStart = null; } client?.stop(); },
  start: () => { if (pendingStart) startSync(); else client?.start(); },
  // For tests of the page's recovery: a trap, as a bug in the wasm would cause.
  __trap: () => replica.__trap(),
};

// A trap leaves the wasm module unusable: the page is told (it replaces this Worker) and every
// later call is refused rather than run on a broken module.
let trapped = null;
const isTrap = (e) => e instanceof WebAssembly.RuntimeError;
const reportTrap = (e, id) => {
  trapped = String(e?.message ?? e);
  try { client?.stop(); } catch { /* the module is gone */ }
  postMessage({ id, trap: true, error: trapped });
};
addEventListener('error', (e) => { if (isTrap(e.error)) { e.preventDefault(); reportTrap(e.error); } });
addEventListener('unhandledrejection', (e) => { if (isTrap(e.reason)) { e.preventDefault(); reportTrap(e.reason); } });

onmessage = async (e) => {
  const { id, method, args } = e.data;
  if (trapped) { postMessage({ id, error: `the replica failed in WebAssembly (${trapped}); it is being reopened` }); return; }
  if (!Object.hasOwn(methods, method)) { postMessage({ id, error: `no method ${String(method)}` }); return; }
  try {
    // Calls sent before the open finished (by other tabs, or resent after a handover) wait for it.
    if (method !== 'open') await isOpen;
    const result = await methods[method](...(args ?? []));
    postMessage({ id, result });
    if (method === 'write' || method === 'importBytes') worked();
    if (pendingStart && method !== 'open' && method !== 'status') setTimeout(startSync, 0);
  } catch (err) {
    if (isTrap(err)) reportTrap(err, id);
    else postMessage({ id, error: String(err?.message ?? err) });
  }
};
