/**
 * The side network a job downloaded, kept in the browser's IndexedDB with what it needs to classify again — the
 * job template, the label names and the bundle's description (its files are in Cache Storage: bundle_cache.mjs)
 * — so that a later visit classifies without a job and without the network. One model is kept: the last one.
 */
import { STORES, withStore } from './idb.mjs';

const STORE = STORES.models;
/** The key of the one model kept. */
const LAST = 'last';
/** The record's layout; a record of another version is not read. */
export const RECORD_VERSION = 1;

/**
 * A record of a finished job, as saveModel keeps it.
 *
 * @param {{job: string, template: object, bundle: {base: string, files: object}, labelNames: string[],
 *   sideNet: {config: object, tensors: object}, summary: object}} job what runBundleDevice and the page know
 * @returns {object}
 */
export function modelRecord({ job, template, bundle, labelNames, sideNet, summary }) {
  return { version: RECORD_VERSION, savedAt: Date.now(), job, template, bundle, labelNames, sideNet, summary };
}

/**
 * Why a kept record cannot classify on the server's current bundle (`template`: config.json's), or null when it
 * can: the same backbone (fingerprint) and the same shortcut layers.
 *
 * @param {object} record
 * @param {object} template the job template config.json gives now
 * @returns {string | null}
 */
export function unusableReason(record, template) {
  if (record.version !== RECORD_VERSION) return 'it was saved by another version of this page';
  if (record.template.fingerprint !== template.fingerprint) return `it was trained on another model (${record.template.model})`;
  const kept = record.sideNet.config.shortcuts;
  const now = template.side_config.shortcuts;
  if (String(kept) !== String(now)) return `it reads layers [${kept}], the server's bundle taps [${now}]`;
  return null;
}

/**
 * Keep `record` (modelRecord's) as the last model, replacing the one before.
 * @param {object} record
 * @param {IDBFactory} [indexedDB]
 */
export async function saveModel(record, indexedDB = globalThis.indexedDB) {
  await withStore(indexedDB, STORE, 'readwrite', (store) => store.put(record, LAST));
}

/**
 * The last kept model, or null.
 * @param {IDBFactory} [indexedDB]
 * @returns {Promise<object | null>}
 */
export async function loadModel(indexedDB = globalThis.indexedDB) {
  const record = await withStore(indexedDB, STORE, 'readonly', (store) => store.get(LAST));
  return record ?? null;
}

/**
 * Forget the kept model.
 * @param {IDBFactory} [indexedDB]
 */
export async function forgetModel(indexedDB = globalThis.indexedDB) {
  await withStore(indexedDB, STORE, 'readwrite', (store) => store.delete(LAST));
}
