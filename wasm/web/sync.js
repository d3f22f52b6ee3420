// @ts-check
// The sync client's I/O shell: the socket and the timers. Every protocol decision (the resume
// cursor, the ahead-of-head check, gaps, acks, which errors are fatal, backoff with jitter) is
// the Rust client session's, the one the relay and `hivesync watch` use (src/protocol/client.rs,
// reached through the wasm Replica's sync* methods, wasm/src/sync.rs); the Replica also applies
// every frame and keeps the outbox of local writes (src/outbox.rs), which the session uploads
// exactly once. This file only moves bytes and turns the session's events into the page's.

/**
 * @typedef {import('./pkg/hivesync_wasm.js').Replica} Replica
 * @typedef {import('./hivesync.js').ReplicaEvent} ReplicaEvent
 * @typedef {import('./hivesync.js').Status} Status
 * @typedef {import('./hivesync.js').ErrorCode} ErrorCode
 * @typedef {import('./hivesync.js').WriteOp} WriteOp
 * @typedef {import('./hivesync.js').LocalWrite} LocalWrite
 * @typedef {object} SyncOptions
 * @property {string} url  the node's /v1/sync
 * @property {string | null} [token]
 * @property {'bin' | 'json'} [protocol]  'bin' unless 'json'
 * @property {string[] | null} [namespaces]  default: all the token may read
 * @property {(ev: ReplicaEvent) => void} [onEvent]
 * @property {() => void} [onWork]  called after each batch of frames the replica handled
 * @property {string | null} [storageError]  why the replica is in memory (for its status)
 * @property {boolean} [tokenFromPage]  the page's getToken supplies tokens: an `unauthorized`
 *   (expired, refused) asks for a fresh one (`token_needed`) instead of stopping for good
 * @property {string | null} [signedOut]  why there is no token yet (getToken failed): no
 *   connection until setToken
 * @property {new (url: string, protocol: string) => WebSocket} [WebSocket]  default: the global one
 * @property {boolean} [image]  start from the node's database image (GET /v1/image) when there
 *   is no copy yet or the cursor fell behind the node's log (default true); else the row snapshot
 * @property {typeof fetch} [fetch]  default: the global one
 *
 * What the Rust session reports (wasm/src/sync.rs, as JSON): the events this client acts on.
 * @typedef {{ type: 'welcome', node: string, head: number, from: number | null, snapshot: boolean }
 *   | { type: 'applied', seq: number, count: number, snapshot?: undefined }
 *   | { type: 'applied', seq: number, snapshot: true, count?: undefined }
 *   | { type: 'live', seq: number }
 *   | { type: 'written', n: number, seq: number }
 *   | { type: 'rejected', n: number, ops: WriteOp[], code: ErrorCode, message: string }
 *   | { type: 'upload_error', n: number, code: ErrorCode, message: string }
 *   | { type: 'error', code?: ErrorCode, message: string }
 *   | { type: 'reconnect', after: number, why: string }
 *   | { type: 'fatal', code: ErrorCode, message: string }} SessionEvent
 */

// Runs `f` in a task below the page's calls (where the browser has task priorities), and
// within FRAME_WAIT_MS whatever else keeps the thread busy; `f` must be safe to run twice.
const FRAME_WAIT_MS = 50;
/**
 * The Prioritized Task Scheduling API, where the browser has it (TypeScript's lib lacks it).
 * @typedef {{ postTask?: (f: () => void, opts: { priority: 'background' }) => Promise<unknown> }} Scheduler
 */
const host = /** @type {typeof globalThis & { scheduler?: Scheduler }} */ (globalThis);
/** @param {() => void} f */
const later = (f) => {
  if (host.scheduler?.postTask) {
    host.scheduler.postTask(f, { priority: 'background' }).catch(() => {});
    setTimeout(f, FRAME_WAIT_MS);
  } else {
    setTimeout(f, 0);
  }
};

export class SyncClient {
  /**
   * @param {Replica} replica  a wasm Replica
   * @param {SyncOptions} opts
   */
  constructor(replica, opts) {
    this.replica = replica;
    this.url = opts.url;
    this.token = opts.token ?? null;
    this.protocol = opts.protocol === 'json' ? 'json' : 'bin';
    this.namespaces = opts.namespaces ?? null;
    this.onEvent = opts.onEvent ?? (() => {});
    this.onWork = opts.onWork ?? (() => {});
    this.storageError = opts.storageError ?? null;
    this.tokenFromPage = opts.tokenFromPage === true;
    /** @type {string | null} */
    this.signedOut = opts.signedOut ?? null;
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.fetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    this.image = opts.image !== false;
    // The image was tried since the replica was last live (a failure falls back to the row
    // snapshot, and is not tried again until then).
    this.imageTried = false;
    /** @type {Promise<void> | null} */
    this.booting = null;
    /** @type {WebSocket | null} */
    this.ws = null;
    this.stopped = true;
    this.head = 0;
    this.live = false;
    this.online = false;
    /** @type {Map<number, { resolve: (seq: number) => void, reject: (e: Error) => void }>} */
    this.pending = new Map(); // outbox entry n -> { resolve, reject } of a write({ wait: 'node' })
    /** @type {string | null} */
    this.fatal = null;
    /** @type {number | null} */
    this.resumedFrom = null; // the seq the last subscription resumed after (null: a snapshot)
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.statusTimer = null;
    this.t0 = Date.now();
    replica.setNamespaces(this.namespaces ? JSON.stringify(this.namespaces) : undefined);
    replica.syncStart(this.token ?? undefined, this.protocol === 'json', Math.random());
  }

  now() { return Date.now() - this.t0; }

  /** @returns {Status} */
  status() {
    const seq = this.replica.appliedSeq();
    return {
      type: 'status', seq, head: Math.max(this.head, seq), lag: this.live ? 0 : Math.max(0, this.head - seq),
      live: this.live, online: this.online, storage: /** @type {Status['storage']} */ (this.replica.storage), storageError: this.storageError, error: this.fatal,
      signedOut: this.signedOut,
      resumedFrom: this.resumedFrom, ...outboxStatus(this.replica),
    };
  }

  /** @param {ReplicaEvent} ev */
  emit(ev) { try { this.onEvent(ev); } catch (e) { console.error(e); } }

  /** A status event soon: many answers or batches in a row make one (a status counts the outbox). */
  statusSoon() {
    if (this.statusTimer) return;
    this.statusTimer = setTimeout(() => { this.statusTimer = null; this.emit(this.status()); }, 50);
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.fatal = null;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(/** @type {ReturnType<typeof setTimeout>} */ (this.timer)); // (null clears nothing)
    if (this.ws) this.ws.close(1000, 'client stopped');
  }

  /**
   * A fresh token from the page's getToken: sent on the open connection (renewal), or used to
   * connect (signed in again). A session that stopped on `unauthorized` starts anew with it.
   * @param {string} token
   */
  setToken(token) {
    const wasOut = this.signedOut !== null;
    this.token = token;
    this.signedOut = null;
    if (wasOut) {
      this.replica.syncStart(token, this.protocol === 'json', Math.random());
      this.emit(this.status());
      if (!this.stopped) this.connect();
      return;
    }
    this.run(this.replica.syncSetToken(token));
  }

  /**
   * The page's getToken gave no fresh token: while signed out, that is why (the token in use,
   * if any, goes on until the node refuses it).
   * @param {string} why
   */
  tokenFailed(why) {
    if (this.signedOut === null) return;
    this.signedOut = why;
    this.emit(this.status());
  }

  /**
   * No token can be had now (the page's getToken failed or gave none): nothing connects until
   * setToken; the replica stays readable and writes stay pending.
   * @param {string} why
   */
  signOut(why) {
    this.signedOut = why;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000, 'signed out'); }
    this.emit(this.status());
  }

  connect() {
    if (this.stopped || this.fatal || this.signedOut || this.ws || this.booting) return;
    if (this.image && !this.imageTried && this.replica.appliedSeq() === 0) return this.bootstrap();
    const sub = this.protocol === 'bin' ? 'hivesync.v1.bin' : 'hivesync.v1.json';
    let ws;
    try {
      ws = new this.WS(this.url, sub);
    } catch (e) {
      return this.run(this.replica.syncConnectFailed(String(e), true, this.now()));
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.online = true;
      this.run(this.replica.syncConnected());
    };
    // Frames wait in `inbox` for a task of lower priority than the page's calls, so that a
    // query or a write that is already queued is answered before the frames that arrived
    // beside it are applied.
    /** @type {(string | ArrayBuffer)[]} */
    let inbox = [];
    const drain = () => {
      if (inbox.length === 0) return;
      const frames = inbox;
      inbox = [];
      for (const d of frames) {
        if (this.ws !== ws) return;
        this.run(typeof d === 'string'
          ? this.replica.syncText(d, this.now())
          : this.replica.syncFrame(new Uint8Array(d), this.now()));
      }
      this.onWork();
    };
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      inbox.push(e.data);
      if (inbox.length === 1) later(drain);
    };
    ws.onerror = () => {};
    ws.onclose = () => {
      if (this.ws === ws) drain();
      const current = this.ws === ws;
      if (current) this.ws = null;
      const was = this.online;
      this.online = false;
      this.live = false;
      if (was) this.emit({ type: 'offline' });
      this.emit(this.status());
      if (!current) return;
      this.run(opened
        ? this.replica.syncDisconnected('the connection closed', this.now())
        : this.replica.syncConnectFailed('could not connect to the node', false, this.now()));
    };
  }

  /**
   * Start from the node's database image: download it into the replica's storage as it comes
   * (progress in `bootstrap` events), take the replica's pending writes over into it, then
   * subscribe from its seq. Whatever fails on the way (no endpoint, a refusal, a cut download)
   * leaves the replica as it was and the feed's row snapshot does the job instead.
   * @returns {void}
   */
  bootstrap() {
    this.imageTried = true;
    this.booting = this.loadImage().then((done) => {
      if (done) this.emit({ type: 'bootstrap', phase: 'done', ...done });
    }, (e) => {
      try { this.replica.bootstrapAbort(); } catch { /* nothing was begun */ }
      // Stopped midway: the next start tries again.
      if (this.stopped) { this.imageTried = false; return; }
      this.emit({ type: 'bootstrap', phase: 'fallback', message: String(/** @type {{ message?: unknown }} */ (e)?.message ?? e) });
    }).finally(() => {
      this.booting = null;
      // A session of its own from the replica's seq now (the image's, or as it was).
      this.replica.syncStart(this.token ?? undefined, this.protocol === 'json', Math.random());
      this.emit(this.status());
      this.connect();
    });
  }

  /**
   * The download itself; null when the node has nothing to send (an empty log).
   * @returns {Promise<{ seq: number, bytes: number, rows: number, pending: number, ms: number } | null>}
   */
  async loadImage() {
    const t0 = performance.now();
    if (!this.fetch) throw new Error('no fetch in this context');
    const url = new URL('image', this.url.replace(/^ws(s?):/, 'http$1:'));
    if (this.namespaces) url.searchParams.set('ns', this.namespaces.join(','));
    /** @type {Record<string, string>} */
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const res = await this.fetch(url, { headers, cache: 'no-store' });
    if (!res.ok || !res.body) {
      const why = (await res.text().catch(() => '')).trim();
      throw new Error(`the node gave no image (${res.status}${why ? `: ${why}` : ''})`);
    }
    const totalBytes = Number(res.headers.get('Hivesync-Image-Bytes'));
    const seq = Number(res.headers.get('Hivesync-At'));
    const rows = Number(res.headers.get('Hivesync-Image-Rows') ?? 0);
    if (!Number.isSafeInteger(totalBytes) || !Number.isSafeInteger(seq)) {
      throw new Error('the image came without its Hivesync-Image-Bytes and Hivesync-At headers');
    }
    if (seq === 0) { await res.body.cancel(); return null; }
    this.replica.bootstrapBegin(totalBytes, seq);
    const progress = (/** @type {number} */ bytes) => this.emit({ type: 'bootstrap', phase: 'download', bytes, totalBytes, rows, seq });
    progress(0);
    const reader = res.body.getReader();
    // Chunks go to the replica a MiB at a time (fewer crossings into the wasm).
    const buf = new Uint8Array(1 << 20);
    let held = 0;
    let bytes = 0;
    let shown = 0; // (the first chunk is shown at once)
    try {
      for (;;) {
        if (this.stopped) throw new Error('the sync client was stopped');
        const { done, value } = await reader.read();
        if (done) break;
        let at = 0;
        while (at < value.length) {
          const n = Math.min(buf.length - held, value.length - at);
          buf.set(value.subarray(at, at + n), held);
          held += n;
          at += n;
          if (held === buf.length) { this.replica.bootstrapWrite(buf); held = 0; }
        }
        bytes += value.length;
        if (performance.now() - shown > 100) { shown = performance.now(); progress(bytes); }
      }
    } catch (e) {
      // (Stopped, or the replica refused a chunk: the rest of the download is not wanted.)
      reader.cancel().catch(() => {});
      throw e;
    }
    if (held > 0) this.replica.bootstrapWrite(buf.subarray(0, held));
    progress(bytes);
    const done = JSON.parse(this.replica.bootstrapFinish());
    this.onWork();
    return { seq, bytes, rows, pending: done.pending, ms: Math.round(performance.now() - t0) };
  }

  /**
   * Send what the session queued, then act on its events.
   * @param {string} eventsJson  a JSON array of SessionEvent
   */
  run(eventsJson) {
    for (;;) {
      const f = this.protocol === 'bin' ? this.replica.syncNextFrame() : this.replica.syncNextText();
      if (f === undefined || f === null) break;
      if (this.ws && this.ws.readyState === 1) this.ws.send(f);
    }
    for (const ev of JSON.parse(eventsJson)) this.onSessionEvent(ev);
  }

  /** @param {SessionEvent} ev */
  onSessionEvent(ev) {
    switch (ev.type) {
      case 'welcome':
        if (ev.snapshot && ev.from != null && this.image && !this.imageTried && this.ws) {
          // The cursor fell behind the node's log: a snapshot comes. The image is the faster
          // way to it (pending writes are carried over either way).
          const ws = this.ws;
          this.ws = null;
          ws.close(4000, 'starting from an image');
          this.bootstrap();
          return;
        }
        this.head = ev.head;
        // (A cursor the node's log no longer covers resumes with a snapshot.)
        this.resumedFrom = ev.snapshot ? null : ev.from ?? null;
        this.emit({ type: 'welcome', node: ev.node, head: ev.head, from: this.resumedFrom });
        break;
      case 'applied':
        this.head = Math.max(this.head, ev.seq);
        if (ev.snapshot) this.emit({ type: 'applied', seq: ev.seq, snapshot: true });
        else if (ev.count > 0) this.emit({ type: 'applied', seq: ev.seq, count: ev.count });
        this.statusSoon();
        break;
      case 'live':
        this.live = true;
        this.imageTried = false;
        this.head = Math.max(this.head, ev.seq);
        this.emit({ type: 'live', seq: ev.seq });
        this.statusSoon();
        break;
      case 'written': {
        // The node committed outbox entry n (once, however often it was sent).
        this.pending.get(ev.n)?.resolve(ev.seq);
        this.pending.delete(ev.n);
        this.emit({ type: 'written', n: ev.n, seq: ev.seq });
        this.statusSoon();
        break;
      }
      case 'rejected': {
        // The node refused entry n: the replica took it back; the app decides what to do.
        const message = `${ev.code}: ${ev.message}`;
        this.pending.get(ev.n)?.reject(new Error(message));
        this.pending.delete(ev.n);
        this.emit({ type: 'rejected', n: ev.n, ops: ev.ops, code: ev.code, message: ev.message });
        this.statusSoon();
        break;
      }
      case 'upload_error':
        // Not sent this time (the link dropped, the node is busy): it goes again.
        this.statusSoon();
        break;
      case 'error':
        this.emit(ev.code ? { type: 'error', code: ev.code, message: ev.message } : { type: 'error', message: ev.message });
        break;
      case 'reconnect':
        if (this.ws) { const ws = this.ws; this.ws = null; ws.close(4000, 'reconnecting'); }
        clearTimeout(/** @type {ReturnType<typeof setTimeout>} */ (this.timer)); // (null clears nothing)
        if (!this.stopped) this.timer = setTimeout(() => this.connect(), ev.after);
        break;
      case 'fatal':
        if (this.tokenFromPage && ev.code === 'unauthorized') {
          // The token expired or was refused: the page's getToken brings a fresh one.
          this.emit({ type: 'error', code: ev.code, message: ev.message });
          this.signOut(`${ev.code}: ${ev.message}`);
          this.emit({ type: 'token_needed', reason: ev.message });
          break;
        }
        this.fatal = `${ev.code}: ${ev.message}`;
        this.emit({ type: 'error', code: ev.code, message: ev.message });
        this.emit(this.status());
        this.stop();
        break;
    }
  }

  /**
   * Write ops: committed in this replica at once, in one transaction with an outbox entry that
   * is uploaded (exactly once) when connected. Resolves with `{ n, ids, pending: true }` (the
   * entry's number and each op's row id) without waiting for the node; with
   * `{ wait: 'node' }`, with the seq the node committed it at instead (and rejects when the node
   * refuses it). A write that is invalid here throws and leaves nothing behind.
   * @param {WriteOp[]} ops
   * @param {{ wait?: 'local' | 'node' }} [opts]
   * @returns {Promise<LocalWrite | number>}
   */
  write(ops, opts = {}) {
    if (this.fatal) throw new Error(`the sync client stopped: ${this.fatal}; the write was not made`);
    const w = JSON.parse(this.replica.writeLocal(JSON.stringify(ops)));
    const done = opts.wait === 'node'
      ? /** @type {Promise<number>} */ (new Promise((resolve, reject) => this.pending.set(w.n, { resolve, reject })))
      : null;
    this.run(this.replica.syncFlush());
    this.statusSoon();
    return done ?? Promise.resolve({ n: w.n, ids: w.ids, pending: true });
  }
}

/**
 * The outbox part of a status: pending writes, the age of the oldest (ms), the last upload error.
 * @param {Replica} replica
 * @returns {Pick<Status, 'pending' | 'pendingAgeMs' | 'uploadError'>}
 */
export function outboxStatus(replica) {
  const o = JSON.parse(replica.outboxStatus());
  const age = o.oldest_us == null ? null : Math.max(0, Math.round(Date.now() - o.oldest_us / 1000));
  return { pending: o.pending, pendingAgeMs: age, uploadError: o.error ?? null };
}
