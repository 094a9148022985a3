/**
 * The page's store of unfinished jobs (device/job_state.mjs's JobStateStore): one record per job name in this
 * browser's IndexedDB, so that a tab closed mid-job, opened again from the same link with the same file picked,
 * resumes the job instead of starting it again (docs/protocol.md §6b). The record is the job's Hello (without the
 * token) and the digests of its examples — never the examples: the file is picked again and checked against them.
 */
import { STORES, withStore } from './idb.mjs';

const STORE = STORES.jobs;

/**
 * What this browser keeps of the unfinished job `job`: `{record, savedAt}` (savedAt: ms since the epoch), or null.
 * @param {string} job
 * @param {IDBFactory} [indexedDB]
 * @returns {Promise<{record: object, savedAt: number} | null>}
 */
export async function keptJob(job, indexedDB = globalThis.indexedDB) {
  const entry = await withStore(indexedDB, STORE, 'readonly', (store) => store.get(job));
  return entry ?? null;
}

/**
 * The JobStateStore of `job` in this browser. A record is written in one transaction (whole or not at all).
 * @param {string} job
 * @param {IDBFactory} [indexedDB]
 * @returns {import('../device/job_state.mjs').JobStateStore}
 */
export function browserJobStore(job, indexedDB = globalThis.indexedDB) {
  return {
    name: `this browser's saved job '${job}'`,
    async load() {
      return (await keptJob(job, indexedDB))?.record ?? null;
    },
    async save(record) {
      await withStore(indexedDB, STORE, 'readwrite', (store) => store.put({ record, savedAt: Date.now() }, job));
    },
    async remove() {
      await withStore(indexedDB, STORE, 'readwrite', (store) => store.delete(job));
    },
  };
}
