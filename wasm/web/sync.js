// The sync client: keeps a Replica in step with a node's feed. Runs wherever the Replica runs
// (a dedicated Worker in the browser, or Node); the Replica (Rust) decodes and applies every
// frame, this file only owns the socket, the subscription and reconnects.

const SUB = 'replica';

export class SyncClient {
  /**
   * @param {object} replica  a wasm Replica
   * @param {object} opts     { url, token, protocol: 'bin'|'json', namespaces, onEvent, WebSocket }
   */
  constructor(replica, opts) {
    this.replica = replica;
    this.Replica = replica.constructor;
    this.url = opts.url;
    this.token = opts.token ?? null;
    this.protocol = opts.protocol === 'json' ? 'json' : 'bin';
    this.namespaces = opts.namespaces ?? null;
    this.onEvent = opts.onEvent ?? (() => {});
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.ws = null;
    this.stopped = true;
    this.backoff = 250;
    this.head = 0;
    this.live = false;
    this.online = false;
    this.pending = new Map();
    this.nextReq = 1;
    this.lastAck = 0;
    this.fatal = null;
    this.resumedFrom = null; // the seq the last subscription resumed after (null: a snapshot)
    this.waiters = [];
    replica.setNamespaces(this.namespaces ? JSON.stringify(this.namespaces) : undefined);
  }

  status() {
    const seq = this.replica.appliedSeq();
    return {
      type: 'status', seq, head: Math.max(this.head, seq), lag: this.live ? 0 : Math.max(0, this.head - seq),
      live: this.live, online: this.online, storage: this.replica.storage, error: this.fatal,
      resumedFrom: this.resumedFrom,
    };
  }

  emit(ev) { try { this.onEvent(ev); } catch (e) { console.error(e); } }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.fatal = null;
    this.connect();
  }

  stop() {
    this.stopped = true;
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error('the sync client was disconnected; the write was not sent'));
    }
    if (this.ws) this.ws.close(1000, 'client stopped');
  }

  send(jsonMsg, binMsg) {
    if (!this.ws || this.ws.readyState !== 1) throw new Error('not connected to the node');
    this.ws.send(this.protocol === 'bin' ? binMsg() : JSON.stringify(jsonMsg));
  }

  connect() {
    const sub = this.protocol === 'bin' ? 'hivesync.v1.bin' : 'hivesync.v1.json';
    let ws;
    try {
      ws = new this.WS(this.url, sub);
    } catch (e) {
      this.emit({ type: 'error', message: String(e) });
      return this.retry();
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      this.online = true;
      this.send({ type: 'hello', token: this.token ?? undefined, client: 'hivesync-web' },
        () => this.Replica.encodeHello(this.token ?? undefined, 'hivesync-web'));
      // Writes waiting for the connection go out after the hello, in order.
      for (const w of this.waiters.splice(0)) { clearTimeout(w.timer); w.resolve(); }
    };
    ws.onmessage = (e) => this.onFrame(e.data);
    ws.onerror = () => {};
    ws.onclose = () => {
      if (this.ws === ws) this.ws = null;
      this.replica.abortSnapshot();
      const was = this.online;
      this.online = false;
      this.live = false;
      for (const [, p] of this.pending) p.reject(new Error('connection to the node lost'));
      this.pending.clear();
      if (was) this.emit({ type: 'offline' });
      this.emit(this.status());
      this.retry();
    };
  }

  retry() {
    if (this.stopped || this.fatal) return;
    const wait = this.backoff * (0.75 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, 10000);
    setTimeout(() => { if (!this.stopped && !this.ws) this.connect(); }, wait);
  }

  onFrame(data) {
    let ev;
    try {
      ev = JSON.parse(typeof data === 'string' ? this.replica.handleText(data) : this.replica.handleFrame(new Uint8Array(data)));
    } catch (e) {
      this.emit({ type: 'error', message: `could not apply a frame: ${e.message ?? e}` });
      if (this.ws) this.ws.close(4000, 'apply failed');
      return;
    }
    switch (ev.type) {
      case 'welcome': {
        this.head = ev.head;
        this.backoff = 250;
        const applied = this.replica.appliedSeq();
        // A replica that never synced asks for a snapshot; otherwise it resumes after its seq.
        const from = applied > 0 ? applied : undefined;
        if (from !== undefined && from > ev.head) {
          this.fatal = `this replica is ahead of the node (seq ${from} > head ${ev.head}): it belongs to another node; clear it`;
          this.emit({ type: 'error', code: 'bad_request', message: this.fatal });
          this.stop();
          return;
        }
        this.send({ type: 'subscribe', sub: SUB, from, namespaces: this.namespaces ?? undefined },
          () => this.Replica.encodeSubscribe(SUB, from, this.namespaces ? JSON.stringify(this.namespaces) : undefined));
        this.resumedFrom = from ?? null;
        this.emit({ type: 'welcome', node: ev.node, head: ev.head, from: from ?? null });
        break;
      }
      case 'snapshot':
        if (ev.done) {
          this.head = Math.max(this.head, ev.at);
          this.emit({ type: 'applied', seq: ev.at, snapshot: true });
          this.emit(this.status());
        }
        break;
      case 'applied':
        this.head = Math.max(this.head, ev.seq);
        if (ev.applied > 0) this.emit({ type: 'applied', seq: ev.seq, count: ev.applied });
        if (ev.seq - this.lastAck >= 100 || this.live) this.ack(ev.seq);
        this.emit(this.status());
        break;
      case 'gap':
        this.emit({ type: 'error', message: ev.message });
        if (this.ws) this.ws.close(4001, 'gap');
        break;
      case 'live':
        this.live = true;
        this.head = Math.max(this.head, ev.seq);
        this.emit({ type: 'live', seq: ev.seq });
        this.emit(this.status());
        break;
      case 'written': {
        const p = this.pending.get(ev.req);
        if (p) { this.pending.delete(ev.req); p.resolve(ev.seq); }
        break;
      }
      case 'error': {
        if (ev.req && this.pending.has(ev.req)) {
          const p = this.pending.get(ev.req);
          this.pending.delete(ev.req);
          p.reject(new Error(`${ev.code}: ${ev.message}`));
          break;
        }
        this.emit({ type: 'error', code: ev.code, message: ev.message });
        if (ev.code === 'unauthorized' || ev.code === 'forbidden' || ev.code === 'bad_request') {
          this.fatal = `${ev.code}: ${ev.message}`;
          this.emit(this.status());
          this.stop();
        }
        break;
      }
    }
  }

  ack(seq) {
    this.lastAck = seq;
    try {
      this.send({ type: 'ack', sub: SUB, seq }, () => this.Replica.encodeAck(SUB, seq));
    } catch { /* offline: the next connection resumes from the applied seq anyway */ }
  }

  /** Send write ops to the node; resolves with the committed seq. */
  /** Resolves once the socket is open (after the hello); rejects after `ms`. */
  whenConnected(ms) {
    if (this.ws && this.ws.readyState === 1) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`not connected to the node after ${ms / 1000} s; the write was not sent: retry when the status says online`));
      }, ms);
      this.waiters.push(w);
    });
  }

  async write(ops, waitMs = 10000) {
    // A write made while connecting (right after opening, or during a reconnect) waits for
    // the connection rather than failing.
    if (this.fatal) throw new Error(`the sync client stopped: ${this.fatal}`);
    if (this.stopped) throw new Error('the sync client is disconnected: call reconnect() first; the write was not sent');
    await this.whenConnected(waitMs);
    const req = `w${this.nextReq++}`;
    return new Promise((resolve, reject) => {
      try {
        this.send({ type: 'write', req, ops }, () => this.Replica.encodeWrite(req, JSON.stringify(ops)));
        this.pending.set(req, { resolve, reject });
      } catch (e) { reject(e); }
    });
  }
}
