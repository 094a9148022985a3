/**
 * The device bundle's files for the browser: bundle/runtime.mjs's `urlReader` with every answer kept in Cache
 * Storage, so that the model loads offline afterwards and a second visit downloads nothing. A file is kept under
 * its URL, a byte span of it (the LM head's label rows) under its URL with `?bytes=START-END`; the bundle's base
 * URL is content-addressed (`/device/bundle/<key>/`), so a kept file never goes stale, and the files of any other
 * bundle are deleted when a reader opens. Outside a secure context there is no Cache Storage: the reader then
 * downloads what it reads, every time; so does a browser that refuses to keep a file (its storage quota: a private
 * window, or a phone short of space), which then says why in `stats.notKept` — the job goes on either way.
 */
import { ConfigError } from '../exceptions.mjs';
import { urlReader } from '../bundle/runtime.mjs';

/** The Cache Storage cache that holds bundle files. */
export const BUNDLE_CACHE = 'mobillm-bundle';

/** `response` whose body reports each chunk's size to `onBytes` as it arrives. */
function counted(response, onBytes) {
  if (response.body === null) return response;
  const body = response.body.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      onBytes(chunk.byteLength);
      controller.enqueue(chunk);
    },
  }));
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/** The cache key of `name` (or of its `[start, end)` span) under `root`. */
export function cacheKey(root, name, range) {
  const url = new URL(name, root);
  if (range !== undefined) url.search = `bytes=${range[0]}-${range[1]}`;
  return url.href;
}

/**
 * A reader of the bundle that `/device/config.json` describes, through Cache Storage when the browser has it.
 *
 * @param {{base: string, files: Record<string, {size: number, etag?: string}>}} bundle config.json's `bundle`, with
 *   `base` an absolute URL (resolve it against the page's address)
 * @param {object} [options] `caches` (the browser's CacheStorage, or undefined where it has none), `fetchImpl`,
 *   `onBytes(n)` told the size of each downloaded chunk
 * @returns {Promise<{readFile: (name: string, range?: [number, number]) => Promise<Uint8Array | null>,
 *   stats: {downloaded: number, cached: number, kept: boolean, notKept: string | null}}>} `stats`: bytes downloaded
 *   and read from the cache so far; `kept`: whether the bundle is kept; `notKept`: why not
 */
export async function cachedReader(bundle, { caches = globalThis.caches, fetchImpl = globalThis.fetch, onBytes = () => {} } = {}) {
  const root = bundle.base.endsWith('/') ? bundle.base : `${bundle.base}/`;
  const stats = { downloaded: 0, cached: 0, kept: caches !== undefined, notKept: caches === undefined ? 'no Cache Storage here' : null };
  const fetchCounted = async (url, init) => counted(await fetchImpl(url, init), (n) => {
    stats.downloaded += n;
    onBytes(n);
  });
  const download = urlReader(root, fetchCounted);
  const cache = caches === undefined ? null : await caches.open(BUNDLE_CACHE);
  if (cache !== null) await forgetOthers(cache, root);

  const size = (name, range) => (range === undefined ? bundle.files[name].size : range[1] - range[0]);
  const readFile = async (name, range) => {
    if (!Object.hasOwn(bundle.files, name)) return null; // the bundle has no such file: nothing to ask the server
    const key = cacheKey(root, name, range);
    const hit = cache === null ? undefined : await cache.match(key);
    if (hit !== undefined) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.length === size(name, range)) {
        stats.cached += bytes.length;
        return bytes;
      }
      await cache.delete(key); // a damaged entry: download it again
    }
    const bytes = await download(name, range);
    if (bytes === null) throw new ConfigError(`bundle file ${name} is listed in config.json but the server has none; reload the page`);
    if (bytes.length !== size(name, range)) { // a cut download is never kept
      throw new ConfigError(`bundle file ${name}: got ${bytes.length} bytes, expected ${size(name, range)}; `
        + 'reload the page to download it again');
    }
    if (cache !== null && stats.notKept === null) await keep(key, name, bytes);
    return bytes;
  };
  /** Keep a downloaded file; a refusal (quota) stops keeping this bundle, whose kept files are then removed. */
  const keep = async (key, name, bytes) => {
    try {
      await cache.put(key, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
    } catch (err) {
      stats.kept = false;
      stats.notKept = `the browser refused to keep ${name} (${formatSize(bytes.length)}): ${err.message}`;
      await forgetOthers(cache, null);
    }
  };
  return { readFile, stats };
}

const formatSize = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;

/** Delete every kept file that is not under `root` (an earlier bundle's; with `root` null, every one). */
async function forgetOthers(cache, root) {
  for (const request of await cache.keys()) {
    if (root === null || !request.url.startsWith(root)) await cache.delete(request);
  }
}
