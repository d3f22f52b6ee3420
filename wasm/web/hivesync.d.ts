// Types for hivesync.js.

export type Kind = 'entity' | 'edge' | 'note' | 'event' | 'vector';
export type Direction = 'out' | 'in' | 'both';

export interface Entity { id: string; kind: string; name: string; description: string; properties: Record<string, unknown>; tags: string[]; created_at: number; updated_at: number }
export interface Edge { id: string; source: string; target: string; relation: string; weight: number; properties: Record<string, unknown>; created_at: number; updated_at: number }
export interface Note { id: string; kind: string; name: string; content: string; salience: number; expires_at: number | null; properties: Record<string, unknown>; created_at: number; updated_at: number }
export interface Event { id: string; verb: string; actor: string | null; outcome: string | null; target: string | null; data: Record<string, unknown>; duration_us: number | null; created_at: number }
export interface Vector { subject: string; model: string; kind: string; embedding: number[]; created_at: number; updated_at: number }

/** `patch`: `id` names the row, `data` the fields to change (see `HivesyncReplica.patch`). */
export interface WriteOp { op: 'upsert' | 'delete' | 'patch'; kind: Kind; ns?: string; data?: Record<string, unknown>; id?: string; model?: string }

export interface SearchQuery { text: string; ns?: string; kind?: string; records?: ('entity' | 'note')[]; limit?: number }
export interface SearchHit { record: 'entity' | 'note'; ns: string; id: string; kind: string; name: string; snippet: string; score: number }
export interface KnnQuery { model: string; embedding: number[]; k: number; ns?: string; kind?: string }
export interface KnnHit { ns: string; subject: string; kind: string; distance: number }
export interface HybridHit { ns: string; id: string; score: number; text_rank: number | null; vector_rank: number | null; snippet: string | null }
/** A page of rows in id order: `after` is the last id of the previous page. */
export interface ListOptions { kind?: string; after?: string; limit?: number }
export interface Neighbor { node: string; direction: Direction; edge: Edge }
export interface Hop { node: string; depth: number; from: string; edge: string; relation: string }

/** A replica's sync state: the `status` event, and the answer of `status()`. */
export interface Status {
  type: 'status';
  /** Last seq applied to this replica. */
  seq: number;
  /** The node's last seq, as far as this replica knows. */
  head: number;
  /** Changes behind the node (0 once live). */
  lag: number;
  live: boolean;
  online: boolean;
  storage: 'opfs' | 'memory';
  /** Why the replica is in memory though persistence was asked for (its data and pending writes go when the page closes); else null. */
  storageError: string | null;
  /** Why the sync client stopped for good (`unauthorized: ...`, `forbidden: ...`, `bad_request: ...`), else null. */
  error: string | null;
  /** The seq the last subscription resumed after; null for a snapshot (or before the first). */
  resumedFrom: number | null;
  /** Local writes not yet confirmed by the node (they show in every query meanwhile). */
  pending: number;
  /** Age of the oldest pending write in ms; null when none is pending. */
  pendingAgeMs: number | null;
  /** Why the last upload did not go through (it is retried), until one does; else null. */
  uploadError: string | null;
  /** Why there is no token (`getToken` failed or gave none, or the node refused the last one): the replica stays readable and writes stay pending until a token comes; else null. */
  signedOut: string | null;
}

/** Error codes of the wire protocol. */
export type ErrorCode = 'unauthorized' | 'forbidden' | 'bad_request' | 'too_large' | 'overloaded' | 'internal';

export interface WelcomeEvent {
  type: 'welcome';
  /** The node's name. */
  node: string;
  head: number;
  /** The seq this replica resumes after; null when a snapshot follows (no copy yet, or the node's log no longer holds the changes after its seq). */
  from: number | null;
}
/** Rows applied: `count` changes, or a whole snapshot (`snapshot: true`) up to `seq`. */
export interface AppliedEvent { type: 'applied'; seq: number; count?: number; snapshot?: boolean }
export interface LiveEvent { type: 'live'; seq: number }
export interface OfflineEvent { type: 'offline' }
/**
 * `code` is set for errors from the node; `unauthorized`, `forbidden` and `bad_request` stop the
 * sync client. Errors raised before the page listened (while opening: persistence unavailable)
 * are delivered to the first `error` (or `*`) listener.
 */
export interface ReplicaError { type: 'error'; code?: ErrorCode; message: string }

/** The node committed local write `n` at `seq` (exactly once). */
export interface WrittenEvent { type: 'written'; n: number; seq: number }
/** The node refused local write `n`: it was taken back in this replica. */
export interface RejectedEvent { type: 'rejected'; n: number; ops: WriteOp[]; code: ErrorCode; message: string }

/**
 * A start from the node's database image (a new replica, or one whose cursor fell behind the
 * node's log): `download` as it comes (`bytes` of `totalBytes`; the image holds `rows` rows at
 * seq `seq`), then `done` (`pending`: local writes carried over, still on top), or `fallback`
 * (why the image was not used: the row snapshot follows).
 */
export interface BootstrapEvent {
  type: 'bootstrap';
  phase: 'download' | 'done' | 'fallback';
  /** `download`, `done`: bytes received so far (all of them once `done`). */
  bytes?: number;
  /** `download`: the image's size. */
  totalBytes?: number;
  /** `download`, `done`: the rows the image holds. */
  rows?: number;
  /** `download`, `done`: the seq the image is at (the replica's seq once `done`). */
  seq?: number;
  /** `done`: local writes carried over into the new copy, still pending and on top. */
  pending?: number;
  /** `done`: ms from the request to the replica opened on the image. */
  ms?: number;
  /** `fallback`: why the image was not used. */
  message?: string;
}

/** Every event a replica emits, by type. */
export interface ReplicaEventMap {
  status: Status;
  welcome: WelcomeEvent;
  applied: AppliedEvent;
  live: LiveEvent;
  offline: OfflineEvent;
  written: WrittenEvent;
  rejected: RejectedEvent;
  error: ReplicaError;
  token_needed: TokenNeededEvent;
  bootstrap: BootstrapEvent;
}

/** The node refused the token (expired, or no longer accepted): `getToken` is asked for a fresh one. */
export interface TokenNeededEvent { type: 'token_needed'; reason: string }

/** A local write, as `write()` answers it (without `wait: 'node'`). */
export interface LocalWrite { n: number; ids: string[]; pending: true }
/** A write not yet confirmed by the node. */
export interface PendingWrite { n: number; ops: WriteOp[]; created_us: number; seq: number | null }
export type ReplicaEvent = ReplicaEventMap[keyof ReplicaEventMap];

/** What opening found: `HivesyncReplica.opened`. */
export interface Opened {
  storage: 'opfs' | 'memory';
  /** Why the replica is in memory though persistence was asked for; else null. */
  storageError: string | null;
  /** Last seq applied to the stored copy. */
  seq: number;
  /** Where opening spent its time, in ms: loading the wasm, opening the database. */
  timings: { wasm: number; db: number };
  /**
   * This tab's part in sharing the replica: `leader` (its Worker holds the database and the
   * connection), `follower` (served by the leader tab; it takes over when that tab closes), or
   * `alone` (not shared: `persist: false`, `shareTabs: false`, or no Web Locks).
   */
  tab: 'leader' | 'follower' | 'alone';
}

export interface OpenOptions {
  /** The node's feed, e.g. `ws://127.0.0.1:7070/v1/sync`; omit for an offline-only replica. */
  url?: string;
  /** Sent in the hello; the node answers `unauthorized` (an `error` event) when it is wrong or missing. */
  token?: string;
  /** The replica's name (default `hivesync`): what tabs share, and its own OPFS storage (replicas of different names persist side by side). 1 to 128 bytes. */
  name?: string;
  /** Persist in OPFS (default true; where OPFS is unavailable the replica is kept in memory and says why in `status().storageError` and an `error` event). */
  persist?: boolean;
  protocol?: 'bin' | 'json';
  namespaces?: string[];
  /** Share one replica and one connection among this origin's tabs (default true). */
  shareTabs?: boolean;
  /**
   * Sign-in with the app's identity provider: returns a token (a JWT the node's `[jwt]` section
   * accepts), or a promise of one. Called before connecting and again ahead of the token's
   * `exp` (the fresh one is sent on the open connection); when it fails or gives nothing the
   * replica stays readable, local writes stay pending, and `status().signedOut` says why.
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /**
   * Start from the node's database image (`GET /v1/image`: its rows in a ready SQLite file,
   * streamed into storage) when the replica holds nothing yet or fell behind the node's log
   * (default true). `false`: the row snapshot of the feed.
   */
  image?: boolean;
}

/** Every method rejects with a `TypeError` naming its signature when its arguments do not match it (a wrong type, a missing or extra argument, an unknown option). */
/** What changed between two answers of a live query, by row key: a row's `id` (`get`, `list`), `record/ns/id` (`search`), `ns/subject` (`knn`), `ns/id` (`hybrid`), the edge's id (`neighbors`), the node (`traverse`), the row itself as JSON (`sql`). */
export interface LiveDiff { added: string[]; removed: string[]; changed: string[]; moved: boolean }
/** A live query's answer: the whole of it, what changed since the last one, and how often it ran (the first run included). */
export interface LiveResult<T> { result: T; diff: LiveDiff; runs: number }
/** An open live query. */
export interface LiveHandle { readonly runs: number; readonly closed: boolean; close(): void }
/** What each read answers, kept live. */
export interface LiveReads {
  get: Entity | Edge | Note | Event | Vector | null;
  list: (Entity | Edge | Note | Event)[];
  search: SearchHit[];
  knn: KnnHit[];
  hybrid: HybridHit[];
  neighbors: Neighbor[];
  traverse: Hop[];
  sql: { columns: string[]; rows: unknown[][] };
}

export declare class HivesyncReplica {
  opened: Opened;
  /** Listen to one type of event, or to all (`*`); returns a function that stops listening. */
  on<K extends keyof ReplicaEventMap>(type: K, f: (ev: ReplicaEventMap[K]) => void): () => void;
  on(type: '*', f: (ev: ReplicaEvent) => void): () => void;
  status(): Promise<Status>;
  search(query: SearchQuery): Promise<SearchHit[]>;
  knn(query: KnnQuery): Promise<KnnHit[]>;
  hybrid(text: SearchQuery, knn: KnnQuery, limit?: number): Promise<HybridHit[]>;
  get(kind: 'entity', ns: string, id: string): Promise<Entity | null>;
  get(kind: 'edge', ns: string, id: string): Promise<Edge | null>;
  get(kind: 'note', ns: string, id: string): Promise<Note | null>;
  get(kind: 'event', ns: string, id: string): Promise<Event | null>;
  /** A vector: `id` is its subject. */
  get(kind: 'vector', ns: string, id: string, model: string): Promise<Vector | null>;
  list(kind: 'entity', ns: string, opts?: ListOptions): Promise<Entity[]>;
  list(kind: 'edge', ns: string, opts?: ListOptions): Promise<Edge[]>;
  list(kind: 'note', ns: string, opts?: ListOptions): Promise<Note[]>;
  list(kind: 'event', ns: string, opts?: ListOptions): Promise<Event[]>;
  neighbors(ns: string, id: string, opts?: { direction?: Direction; relation?: string; limit?: number }): Promise<Neighbor[]>;
  traverse(ns: string, id: string, opts?: { direction?: Direction; relation?: string; depth?: number; limit?: number }): Promise<Hop[]>;
  sql(query: string, params?: unknown[]): Promise<{ columns: string[]; rows: unknown[][] }>;
  models(): Promise<{ ns: string; model: string; dims: number }[]>;
  digest(namespaces?: string[]): Promise<{ sha256: string; rows: [Kind, number][]; namespaces: string[] | null }>;
  exportBytes(): Promise<Uint8Array>;
  importBytes(bytes: Uint8Array): Promise<void>;
  /** Commit here at once (visible to every query), upload exactly once when online. */
  write(ops: WriteOp[], opts?: { wait?: 'local' }): Promise<LocalWrite>;
  /** The same, resolving with the seq the node committed it at (rejects when the node refuses it). */
  write(ops: WriteOp[], opts: { wait: 'node' }): Promise<number>;
  /**
   * Change only these fields of the row (entities, edges, notes), here at once and at the node
   * once uploaded, on top of whatever other writers changed meanwhile: `properties` merge by key
   * (a `null` removes one), an entity's `tags` may be `{ add?: string[], remove?: string[] }`.
   * Refused (and taken back here) when the row does not exist at the node.
   */
  patch(kind: 'entity' | 'edge' | 'note', id: string, fields: Record<string, unknown>, opts?: { ns?: string; wait?: 'local' }): Promise<LocalWrite>;
  /** The same, resolving with the seq the node committed it at. */
  patch(kind: 'entity' | 'edge' | 'note', id: string, fields: Record<string, unknown>, opts: { ns?: string; wait: 'node' }): Promise<number>;
  pending(): Promise<PendingWrite[]>;
  /**
   * Keep a read live: `read` names one of the reads above and `args` are the arguments it takes
   * (`db.live('search', [{ text: 'sailing', ns: 'default' }], f)`). `onResult` gets the answer at
   * once and again whenever a write to the replica (the node's feed, a local write, a refused
   * write taken back) changed it; a write that cannot affect it does not run it again. At most
   * one answer per frame under a burst. Wrong arguments throw a TypeError; a read that fails
   * later (a model not there yet) calls `onError` (or emits `error`) and stays open.
   */
  live<K extends keyof LiveReads>(read: K, args: unknown[], onResult: (r: LiveResult<LiveReads[K]>) => void, onError?: (e: Error) => void): LiveHandle;
  disconnect(): Promise<void>;
  reconnect(): Promise<void>;
  close(): void;
}

export declare function openReplica(opts?: OpenOptions): Promise<HivesyncReplica>;
