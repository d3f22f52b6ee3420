// Types for hivesync/react (React is a peer dependency of this entry point).
import type { HivesyncReplica, LiveDiff, LiveReads, Status } from './hivesync.js';

/** A live query's state: its current answer, what changed last, how often it ran. */
export interface LiveState<T> {
  /** The current answer (undefined while loading). */
  result: T | undefined;
  /** What changed with the last answer (null before the first). */
  diff: LiveDiff | null;
  runs: number;
  /** Why the last run failed (the query stays open), or null. */
  error: Error | null;
  loading: boolean;
}

/** Keep `db.live(query.read, query.args)` in state; `query` is compared by value. */
export declare function useLiveQuery<K extends keyof LiveReads>(
  db: HivesyncReplica | null | undefined,
  query: { read: K; args: unknown[] },
): LiveState<LiveReads[K]>;

/** The replica's status, kept current; null until the first. */
export declare function useReplicaStatus(db: HivesyncReplica | null | undefined): Status | null;
