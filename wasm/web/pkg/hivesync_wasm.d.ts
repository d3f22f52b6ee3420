/* tslint:disable */
/* eslint-disable */

/**
 * A local copy of a node's data.
 */
export class Replica {
    private constructor();
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Abort, as a bug would: for tests of the page's recovery from a trap (`web/worker.js`).
     */
    __trap(): void;
    /**
     * The last seq applied (0 when nothing was).
     */
    appliedSeq(): number;
    /**
     * Give up the image being written (the replica stays as it was).
     */
    bootstrapAbort(): void;
    /**
     * Start writing a database image of `size` bytes (the `Hivesync-Image-Bytes` header) at
     * seq `at` (`Hivesync-At`): chunks follow with `bootstrapWrite`, then `bootstrapFinish`
     * (or `bootstrapAbort`). The replica stays readable and writable meanwhile.
     */
    bootstrapBegin(size: number, at: number): void;
    /**
     * The whole image is in: open it, carry the replica's own state over (pending writes
     * redone on top), and make it the replica. Returns `{"at", "pending"}` (the
     * pending writes carried over). On an
     * error the replica stays as it was.
     */
    bootstrapFinish(): string;
    /**
     * The next chunk of the image.
     */
    bootstrapWrite(chunk: any): void;
    /**
     * Copy the WAL into the database file and empty it (a truncating checkpoint), so that no
     * later write or query pays for it; the Worker calls it when the replica has been idle a
     * moment. Returns the pages the WAL held (0 for a replica in memory).
     */
    checkpoint(): number;
    /**
     * A digest of the logical state of the namespaces in `namespaces_json` (a JSON array;
     * all when absent): equal to the node's `hivesync digest` for the same rows.
     */
    digest(namespaces_json: any): string;
    /**
     * The whole database as SQLite file bytes (opens in the native node: `hivesync serve --db`).
     */
    exportBytes(): Uint8Array;
    /**
     * One row as JSON (`null` when absent). Vectors: `id` is the subject, `model` required.
     */
    get(kind: any, ns: any, id: any, model: any): string;
    /**
     * Hybrid search (reciprocal-rank fusion of a text query and a KNN query).
     */
    hybrid(text_json: any, knn_json: any, limit: number): string;
    /**
     * Replace this replica's contents with a database file's bytes (from `exportBytes` or a
     * native node's file, checkpointed). The file must carry a schema this build knows.
     */
    importBytes(file: any): void;
    /**
     * Exact KNN; `query_json` is `{"model":..,"embedding":[..],"k":..,"ns"?,"kind"?}`.
     */
    knn(query_json: any): string;
    /**
     * A page of rows of one kind, in id order, as a JSON array.
     */
    list(kind: any, ns: any, kind_filter: any, after: any, limit: number): string;
    /**
     * Whether any live query is open.
     */
    liveAny(): boolean;
    /**
     * Close live query `id` (false: it was not open).
     */
    liveClose(id: number): boolean;
    /**
     * Open a live query: `read` one of `get`, `list`, `search`, `knn`, `hybrid`, `neighbors`,
     * `traverse`, `sql`, `argsJson` the JSON array of the arguments that read takes. Returns
     * its first answer, `{"id", "result", "diff", "runs"}`.
     */
    liveOpen(read: any, args_json: any): string;
    /**
     * The answers that changed since the last call: the rows written since are matched against
     * each live query's dependencies, and only those they can affect run again. A JSON array
     * of `{"id", "result", "diff", "runs", "error"?}`.
     */
    liveTick(): string;
    /**
     * The vector models this replica holds, as JSON.
     */
    models(): string;
    /**
     * Edges around a node (`direction`: out, in, both) as a JSON array.
     */
    neighbors(ns: any, id: any, direction: any, relation: any, limit: number): string;
    /**
     * An empty replica in memory (Node, the main thread, tests).
     */
    static openMemory(): Replica;
    /**
     * A replica persisted in the Origin Private File System under `name`. Works only inside a
     * dedicated Worker in a secure context (127.0.0.1 counts); fails elsewhere. Each name has
     * a pool of its own (see [`pool_of`]), so replicas of different names persist side by side.
     */
    static openPersistent(name: any): Promise<Replica>;
    /**
     * The pending writes, oldest first: `[{"n", "ops", "created_us", "seq"}]`.
     */
    outboxPending(): string;
    /**
     * The outbox at a glance: `{"pending", "unsent", "oldest_us", "error"}`.
     */
    outboxStatus(): string;
    /**
     * Full-text search; `query_json` is `{"text":..,"ns"?,"kind"?,"limit"?}`.
     */
    search(query_json: any): string;
    /**
     * Restrict what a snapshot replaces to these namespaces (JSON array, or null for all):
     * set it to what the subscription asks for.
     */
    setNamespaces(namespaces_json: any): void;
    /**
     * Run a read-only SQL query with JSON array parameters; returns `{"columns":[..],"rows":[[..]..]}`.
     * Statements that would write are refused.
     */
    sql(sql: any, params_json: any): string;
    /**
     * The socket could not be opened (`bad_url`: the URL itself was refused).
     */
    syncConnectFailed(why: any, bad_url: boolean, now: number): string;
    /**
     * The socket opened.
     */
    syncConnected(): string;
    /**
     * The socket closed.
     */
    syncDisconnected(why: any, now: number): string;
    /**
     * Upload what the outbox holds and this connection has not sent yet (when subscribed).
     */
    syncFlush(): string;
    /**
     * A binary frame arrived.
     */
    syncFrame(frame: any, now: number): string;
    /**
     * The next binary frame to send, if any.
     */
    syncNextFrame(): Uint8Array | undefined;
    /**
     * The next text frame to send, if any (the JSON subprotocol).
     */
    syncNextText(): string | undefined;
    /**
     * A fresh token (renewed before the old one expires): sent on the open connection and
     * used for every later hello.
     */
    syncSetToken(token: any): string;
    /**
     * Start a sync session: resume after the applied seq (a replica that never synced asks
     * for a snapshot), for the namespaces set with `setNamespaces`. `json`: speak
     * `hivesync.v1.json` instead of the binary subprotocol. `seed`: jitter (Math.random()).
     */
    syncStart(token: any, json: boolean, seed: number): void;
    /**
     * A text frame arrived.
     */
    syncText(frame: any, now: number): string;
    /**
     * Breadth-first traversal as a JSON array of hops.
     */
    traverse(ns: any, id: any, direction: any, relation: any, depth: number, limit: number): string;
    /**
     * Write ops (a JSON array) here, now, in one transaction with an outbox entry: returns
     * `{"n", "ids"}` (the entry's number, each op's row id). Every query sees the rows at
     * once; `syncFlush` uploads the entry when connected.
     */
    writeLocal(ops_json: any): string;
    /**
     * `opfs` or `memory`.
     */
    readonly storage: string;
}

/**
 * The hivesync version.
 */
export function version(): string;

export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

export interface InitOutput {
    readonly memory: WebAssembly.Memory;
    readonly memcmp: (a: number, b: number, c: number) => number;
    readonly __wbg_replica_free: (a: number, b: number) => void;
    readonly memcpy: (a: number, b: number, c: number) => number;
    readonly memset: (a: number, b: number, c: number) => number;
    readonly replica___trap: (a: number) => void;
    readonly replica_appliedSeq: (a: number) => [number, number, number];
    readonly replica_bootstrapAbort: (a: number) => void;
    readonly replica_bootstrapBegin: (a: number, b: number, c: number) => [number, number];
    readonly replica_bootstrapFinish: (a: number) => [number, number, number, number];
    readonly replica_bootstrapWrite: (a: number, b: any) => [number, number];
    readonly replica_checkpoint: (a: number) => [number, number, number];
    readonly replica_digest: (a: number, b: any) => [number, number, number, number];
    readonly replica_exportBytes: (a: number) => [number, number, number, number];
    readonly replica_get: (a: number, b: any, c: any, d: any, e: any) => [number, number, number, number];
    readonly replica_hybrid: (a: number, b: any, c: any, d: number) => [number, number, number, number];
    readonly replica_importBytes: (a: number, b: any) => [number, number];
    readonly replica_knn: (a: number, b: any) => [number, number, number, number];
    readonly replica_list: (a: number, b: any, c: any, d: any, e: any, f: number) => [number, number, number, number];
    readonly replica_liveAny: (a: number) => number;
    readonly replica_liveClose: (a: number, b: number) => [number, number, number];
    readonly replica_liveOpen: (a: number, b: any, c: any) => [number, number, number, number];
    readonly replica_liveTick: (a: number) => [number, number, number, number];
    readonly replica_models: (a: number) => [number, number, number, number];
    readonly replica_neighbors: (a: number, b: any, c: any, d: any, e: any, f: number) => [number, number, number, number];
    readonly replica_openMemory: () => [number, number, number];
    readonly replica_openPersistent: (a: any) => any;
    readonly replica_outboxPending: (a: number) => [number, number, number, number];
    readonly replica_outboxStatus: (a: number) => [number, number, number, number];
    readonly replica_search: (a: number, b: any) => [number, number, number, number];
    readonly replica_setNamespaces: (a: number, b: any) => [number, number];
    readonly replica_sql: (a: number, b: any, c: any) => [number, number, number, number];
    readonly replica_storage: (a: number) => [number, number];
    readonly replica_syncConnectFailed: (a: number, b: any, c: number, d: number) => [number, number, number, number];
    readonly replica_syncConnected: (a: number) => [number, number];
    readonly replica_syncDisconnected: (a: number, b: any, c: number) => [number, number, number, number];
    readonly replica_syncFlush: (a: number) => [number, number];
    readonly replica_syncFrame: (a: number, b: any, c: number) => [number, number, number, number];
    readonly replica_syncNextFrame: (a: number) => [number, number];
    readonly replica_syncNextText: (a: number) => [number, number];
    readonly replica_syncSetToken: (a: number, b: any) => [number, number, number, number];
    readonly replica_syncStart: (a: number, b: any, c: number, d: number) => [number, number];
    readonly replica_syncText: (a: number, b: any, c: number) => [number, number, number, number];
    readonly replica_traverse: (a: number, b: any, c: any, d: any, e: any, f: number, g: number) => [number, number, number, number];
    readonly replica_writeLocal: (a: number, b: any) => [number, number, number, number];
    readonly version: () => [number, number];
    readonly memmove: (a: number, b: number, c: number) => number;
    readonly rust_sqlite_wasm_assert_fail: (a: number, b: number, c: number, d: number) => void;
    readonly rust_sqlite_wasm_abort: () => void;
    readonly rust_sqlite_wasm_host_epoch_timestamp_in_ms: (a: number) => number;
    readonly rust_sqlite_wasm_host_sleep: (a: bigint, b: number) => void;
    readonly rust_sqlite_wasm_host_random: (a: number, b: number) => number;
    readonly rust_sqlite_wasm_calloc: (a: number, b: number) => number;
    readonly rust_sqlite_wasm_malloc: (a: number) => number;
    readonly rust_sqlite_wasm_free: (a: number) => void;
    readonly rust_sqlite_wasm_getentropy: (a: number, b: number) => number;
    readonly rust_sqlite_wasm_host_fill_entropy: (a: number, b: number) => number;
    readonly rust_sqlite_wasm_host_localtime: (a: bigint, b: number) => number;
    readonly rust_sqlite_wasm_localtime: (a: number) => number;
    readonly rust_sqlite_wasm_realloc: (a: number, b: number) => number;
    readonly sqlite3_os_end: () => number;
    readonly sqlite3_os_init: () => number;
    readonly wasm_bindgen__convert__closures_____invoke__h212d6de2a01f735b: (a: number, b: number, c: any, d: any) => void;
    readonly wasm_bindgen__convert__closures_____invoke__hd14f6b040d9d0423: (a: number, b: number, c: any) => [number, number];
    readonly __wbindgen_malloc: (a: number, b: number) => number;
    readonly __wbindgen_realloc: (a: number, b: number, c: number, d: number) => number;
    readonly __wbindgen_free: (a: number, b: number, c: number) => void;
    readonly __wbindgen_exn_store: (a: number) => void;
    readonly __externref_table_alloc: () => number;
    readonly __wbindgen_externrefs: WebAssembly.Table;
    readonly __wbindgen_destroy_closure: (a: number, b: number) => void;
    readonly __externref_table_dealloc: (a: number) => void;
    readonly __wbindgen_start: () => void;
}

export type SyncInitInput = BufferSource | WebAssembly.Module;

/**
 * Instantiates the given `module`, which can either be bytes or
 * a precompiled `WebAssembly.Module`.
 *
 * @param {{ module: SyncInitInput }} module - Passing `SyncInitInput` directly is deprecated.
 *
 * @returns {InitOutput}
 */
export function initSync(module: { module: SyncInitInput } | SyncInitInput): InitOutput;

/**
 * If `module_or_path` is {RequestInfo} or {URL}, makes a request and
 * for everything else, calls `WebAssembly.instantiate` directly.
 *
 * @param {{ module_or_path: InitInput | Promise<InitInput> }} module_or_path - Passing `InitInput` directly is deprecated.
 *
 * @returns {Promise<InitOutput>}
 */
export default function __wbg_init (module_or_path?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>): Promise<InitOutput>;
