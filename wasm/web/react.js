// @ts-check
// React hooks over a hivesync replica (`hivesync/react`): React is a peer dependency of this
// entry point only; the core package does not import it.
import { useEffect, useState } from 'react';

/**
 * @typedef {import('./hivesync.js').HivesyncReplica} HivesyncReplica
 * @typedef {import('./hivesync.js').Status} Status
 * @typedef {import('./hivesync.js').LiveDiff} LiveDiff
 * @typedef {{ result: unknown, diff: LiveDiff | null, runs: number, error: Error | null, loading: boolean }} LiveState
 */

/**
 * A live query's current answer: `{ result, diff, runs, error, loading }`, re-rendered whenever
 * the answer changes (`db.live`). `query` is `{ read, args }`, as `db.live(read, args)` takes
 * them; it is compared by value, so an inline object does not reopen the query each render.
 * With no replica yet (`db` null while it opens) the state stays `loading`.
 * @param {HivesyncReplica | null | undefined} db
 * @param {{ read: string, args: unknown[] }} query
 * @returns {LiveState}
 */
export function useLiveQuery(db, query) {
  const key = JSON.stringify([query.read, query.args]);
  const [state, setState] = useState(/** @type {LiveState} */ ({ result: undefined, diff: null, runs: 0, error: null, loading: true }));
  useEffect(() => {
    if (!db) return undefined;
    const [read, args] = /** @type {[string, unknown[]]} */ (JSON.parse(key));
    let handle;
    try {
      handle = db.live(/** @type {any} */ (read), args,
        (r) => setState({ result: r.result, diff: r.diff, runs: r.runs, error: null, loading: false }),
        (e) => setState((s) => ({ ...s, error: e, loading: false })));
    } catch (e) {
      setState({ result: undefined, diff: null, runs: 0, error: /** @type {Error} */ (e), loading: false });
      return undefined;
    }
    return () => handle.close();
  }, [db, key]);
  return state;
}

/**
 * The replica's status (`db.status()`, then every `status` event); null until the first.
 * @param {HivesyncReplica | null | undefined} db
 * @returns {Status | null}
 */
export function useReplicaStatus(db) {
  const [status, setStatus] = useState(/** @type {Status | null} */ (null));
  useEffect(() => {
    if (!db) return undefined;
    let on = true;
    db.status().then((s) => { if (on) setStatus(s); }, () => {});
    const off = db.on('status', (s) => { if (on) setStatus(s); });
    return () => { on = false; off(); };
  }, [db]);
  return status;
}
