/**
 * The page's IndexedDB database: one per origin, with an object store for the kept model (model_store.mjs) and
 * one for the records of unfinished jobs (job_store.mjs). Each operation opens the database, runs in one
 * transaction and closes it again, so that no connection held open blocks a later version's upgrade.
 */

export const DB_NAME = 'mobillm-device';
/** 1: models; 2: jobs added. */
export const DB_VERSION = 2;
/** The object stores, each keyed by a string given to `put`. */
export const STORES = Object.freeze({ models: 'models', jobs: 'jobs' });

/** A request's result as a promise. */
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function open(indexedDB) {
  if (!indexedDB) throw new Error('this browser keeps no data for pages (no IndexedDB)');
  const request = indexedDB.open(DB_NAME, DB_VERSION);
  request.onupgradeneeded = () => {
    const db = request.result;
    for (const name of Object.values(STORES)) {
      if (!db.objectStoreNames.contains(name)) db.createObjectStore(name);
    }
  };
  return done(request);
}

/**
 * Run `op(objectStore)` in one transaction on the store `name`; resolves to op's request's result once the
 * transaction commits (so a write has landed, whole, when the promise resolves).
 * @param {IDBFactory} indexedDB
 * @param {string} name one of STORES
 * @param {'readonly' | 'readwrite'} mode
 * @param {(store: IDBObjectStore) => IDBRequest} op
 */
export async function withStore(indexedDB, name, mode, op) {
  const db = await open(indexedDB);
  try {
    const tx = db.transaction(name, mode);
    const committed = new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    const [result] = await Promise.all([done(op(tx.objectStore(name))), committed]);
    return result;
  } finally {
    db.close();
  }
}
