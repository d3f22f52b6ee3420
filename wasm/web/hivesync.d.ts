// Types for hivesync.js.

export type Kind = 'entity' | 'edge' | 'note' | 'event' | 'vector';
export type Direction = 'out' | 'in' | 'both';

export interface Entity { id: string; kind: string; name: string; description: string; properties: Record<string, unknown>; tags: string[]; created_at: number; updated_at: number }
export interface Edge { id: string; source: string; target: string; relation: string; weight: number; properties: Record<string, unknown>; created_at: number; updated_at: number }
export interface Note { id: string; kind: string; name: string; content: string; salience: number; expires_at: number | null; properties: Record<string, unknown>; created_at: number; updated_at: number }
export interface Event { id: string; verb: string; actor: string | null; outcome: string | null; target: string | null; data: Record<string, unknown>; duration_us: number | null; created_at: number }
export interface Vector { subject: string; model: string; kind: string; embedding: number[]; created_at: number; updated_at: number }

export interface WriteOp { op: 'upsert' | 'delete'; kind: Kind; ns?: string; data?: Record<string, unknown>; id?: string; model?: string }

export interface SearchQuery { text: string; ns?: string; kind?: string; records?: ('entity' | 'note')[]; limit?: number }
export interface SearchHit { record: 'entity' | 'note'; ns: string; id: string; kind: string; name: string; snippet: string; score: number }
export interface KnnQuery { model: string; embedding: number[]; k: number; ns?: string; kind?: string }
export interface KnnHit { ns: string; subject: string; kind: string; distance: number }
export interface HybridHit { ns: string; id: string; score: number; text_rank: number | null; vector_rank: number | null; snippet: string | null }
export interface Neighbor { node: string; direction: Direction; edge: Edge }
export interface Hop { node: string; depth: number; from: string; edge: string; relation: string }

export interface Status { type: 'status'; seq: number; head: number; lag: number; live: boolean; online: boolean; storage: 'opfs' | 'memory'; error: string | null }
export type ReplicaEvent =
  | Status
  | { type: 'welcome'; node: string; head: number }
  | { type: 'applied'; seq: number; count?: number; snapshot?: boolean }
  | { type: 'live'; seq: number }
  | { type: 'offline' }
  | { type: 'error'; code?: string; message: string };

export interface OpenOptions {
  /** The node's feed, e.g. `ws://127.0.0.1:7070/v1/sync`; omit for an offline-only replica. */
  url?: string;
  token?: string;
  /** OPFS database name (default `hivesync`). */
  name?: string;
  /** Persist in OPFS (default true; falls back to memory where OPFS is unavailable). */
  persist?: boolean;
  protocol?: 'bin' | 'json';
  namespaces?: string[];
}

export declare class HivesyncReplica {
  opened: { storage: 'opfs' | 'memory'; seq: number };
  on(type: ReplicaEvent['type'] | '*', f: (ev: ReplicaEvent) => void): () => void;
  status(): Promise<Status>;
  search(q: SearchQuery): Promise<SearchHit[]>;
  knn(q: KnnQuery): Promise<KnnHit[]>;
  hybrid(text: SearchQuery, knn: KnnQuery, limit?: number): Promise<HybridHit[]>;
  get(kind: 'entity', ns: string, id: string): Promise<Entity | null>;
  get(kind: 'edge', ns: string, id: string): Promise<Edge | null>;
  get(kind: 'note', ns: string, id: string): Promise<Note | null>;
  get(kind: 'event', ns: string, id: string): Promise<Event | null>;
  get(kind: 'vector', ns: string, subject: string, model: string): Promise<Vector | null>;
  list(kind: Exclude<Kind, 'vector'>, ns: string, opts?: { kind?: string; after?: string; limit?: number }): Promise<unknown[]>;
  neighbors(ns: string, id: string, opts?: { direction?: Direction; relation?: string; limit?: number }): Promise<Neighbor[]>;
  traverse(ns: string, id: string, opts?: { direction?: Direction; relation?: string; depth?: number; limit?: number }): Promise<Hop[]>;
  sql(query: string, params?: unknown[]): Promise<{ columns: string[]; rows: unknown[][] }>;
  models(): Promise<{ ns: string; model: string; dims: number }[]>;
  digest(namespaces?: string[]): Promise<{ sha256: string; rows: [Kind, number][]; namespaces: string[] | null }>;
  exportBytes(): Promise<Uint8Array>;
  importBytes(bytes: Uint8Array): Promise<void>;
  write(ops: WriteOp[]): Promise<number>;
  disconnect(): Promise<void>;
  reconnect(): Promise<void>;
  close(): void;
}

export declare function openReplica(opts?: OpenOptions): Promise<HivesyncReplica>;
