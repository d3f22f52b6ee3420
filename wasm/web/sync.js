// The sync client's I/O shell: the socket and the timers. Every protocol decision (the resume
// cursor, the ahead-of-head check, gaps, acks, which errors are fatal, backoff with jitter) is
// the Rust client session's, the one the relay and `hivesync watch` use (src/protocol/client.rs,
// reached through the wasm Replica's sync* methods, wasm/src/sync.rs); the Replica also applies
// every frame. This file only moves bytes and turns the session's events into the page's.

export class SyncClient {
  /**
   * @param {object} replica  a wasm Replica
   * @param {object} opts     { url, token, protocol: 'bin'|'json', namespaces, onEvent, WebSocket }
   */
  constructor(replica, opts) {
    this.replica = replica;
    this.url = opts.url;
    this.token = opts.token ?? null;
    this.protocol = opts.protocol === 'json' ? 'json' : 'bin';
    this.namespaces = opts.namespaces ?? null;
    this.onEvent = opts.onEvent ?? (() => {});
    this.WS = opts.WebSocket ?? globalThis.WebSocket;
    this.ws = null;
    this.stopped = true;
    this.head = 0;
    this.live = false;
    this.online = false;
    this.ready = false; // subscribed: writes can go out
    this.pending = new Map();
    this.nextId = 1;
    this.fatal = null;
    this.resumedFrom = null; // the seq the last subscription resumed after (null: a snapshot)
    this.waiters = [];
    this.timer = null;
    this.t0 = Date.now();
    replica.setNamespaces(this.namespaces ? JSON.stringify(this.namespaces) : undefined);
    replica.syncStart(this.token ?? undefined, this.protocol === 'json', Math.random());
  }

  now() { return Date.now() - this.t0; }

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
    clearTimeout(this.timer);
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error('the sync client was disconnected; the write was not sent'));
    }
    if (this.ws) this.ws.close(1000, 'client stopped');
  }

  connect() {
    if (this.stopped || this.fatal || this.ws) return;
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
    ws.onmessage = (e) => {
      if (this.ws !== ws) return;
      this.run(typeof e.data === 'string'
        ? this.replica.syncText(e.data, this.now())
        : this.replica.syncFrame(new Uint8Array(e.data), this.now()));
    };
    ws.onerror = () => {};
    ws.onclose = () => {
      const current = this.ws === ws;
      if (current) this.ws = null;
      const was = this.online;
      this.online = false;
      this.live = false;
      this.ready = false;
      if (was) this.emit({ type: 'offline' });
      this.emit(this.status());
      if (!current) return;
      this.run(opened
        ? this.replica.syncDisconnected('the connection closed', this.now())
        : this.replica.syncConnectFailed('could not connect to the node', false, this.now()));
    };
  }

  /** Send what the session queued, then act on its events. */
  run(eventsJson) {
    for (;;) {
      const f = this.protocol === 'bin' ? this.replica.syncNextFrame() : this.replica.syncNextText();
      if (f === undefined || f === null) break;
      if (this.ws && this.ws.readyState === 1) this.ws.send(f);
    }
    for (const ev of JSON.parse(eventsJson)) this.onSessionEvent(ev);
  }

  onSessionEvent(ev) {
    switch (ev.type) {
      case 'welcome':
        this.head = ev.head;
        this.ready = true;
        this.resumedFrom = ev.from ?? null;
        this.emit({ type: 'welcome', node: ev.node, head: ev.head, from: ev.from ?? null });
        // Writes waiting for the connection go out after the subscribe, in order.
        for (const w of this.waiters.splice(0)) { clearTimeout(w.timer); w.resolve(); }
        break;
      case 'applied':
        this.head = Math.max(this.head, ev.seq);
        if (ev.snapshot) this.emit({ type: 'applied', seq: ev.seq, snapshot: true });
        else if (ev.count > 0) this.emit({ type: 'applied', seq: ev.seq, count: ev.count });
        this.emit(this.status());
        break;
      case 'live':
        this.live = true;
        this.head = Math.max(this.head, ev.seq);
        this.emit({ type: 'live', seq: ev.seq });
        this.emit(this.status());
        break;
      case 'written':
      case 'rejected': {
        const p = this.pending.get(ev.id);
        if (!p) break;
        this.pending.delete(ev.id);
        if (ev.type === 'written') p.resolve(ev.seq);
        else p.reject(new Error(`${ev.code}: ${ev.message}`));
        break;
      }
      case 'error':
        this.emit(ev.code ? { type: 'error', code: ev.code, message: ev.message } : { type: 'error', message: ev.message });
        break;
      case 'reconnect':
        if (this.ws) { const ws = this.ws; this.ws = null; ws.close(4000, 'reconnecting'); }
        clearTimeout(this.timer);
        if (!this.stopped) this.timer = setTimeout(() => this.connect(), ev.after);
        break;
      case 'fatal':
        this.fatal = `${ev.code}: ${ev.message}`;
        this.emit({ type: 'error', code: ev.code, message: ev.message });
        this.emit(this.status());
        this.stop();
        break;
    }
  }

  /** Resolves once subscribed (writes can go out); rejects after `ms`. */
  whenConnected(ms) {
    if (this.ready) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`not connected to the node after ${ms / 1000} s; the write was not sent: retry when the status says online`));
      }, ms);
      this.waiters.push(w);
    });
  }

  /** Send write ops to the node; resolves with the committed seq. */
  async write(ops, waitMs = 10000) {
    // A write made while connecting (right after opening, or during a reconnect) waits for
    // the connection rather than failing.
    if (this.fatal) throw new Error(`the sync client stopped: ${this.fatal}`);
    if (this.stopped) throw new Error('the sync client is disconnected: call reconnect() first; the write was not sent');
    await this.whenConnected(waitMs);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      try {
        this.run(this.replica.syncWrite(id, JSON.stringify(ops)));
      } catch (e) { this.pending.delete(id); reject(e); }
    });
  }
}
