/**
 * The order of a split's batches, as src/mobillm/data/order.py: the Python devices and this one send the same
 * samples in the same batches.
 */

import { ConfigError } from '../exceptions.mjs';
import { PyRandom } from './random.mjs';

/**
 * Indices `0..n-1` in chunks of `batchSize`; with `shuffle` the order is a pure function of (seed, epoch).
 * @param {number} n
 * @param {number} batchSize
 * @param {{shuffle: boolean, seed?: number, epoch?: number, dropLast?: boolean}} options
 * @returns {Generator<number[]>}
 */
export function* batchChunks(n, batchSize, { shuffle, seed = 0, epoch = 0, dropLast = false }) {
  if (!(batchSize >= 1)) throw new ConfigError(`batch_size must be >= 1, got ${batchSize}`);
  const order = Array.from({ length: n }, (_, i) => i);
  if (shuffle) new PyRandom(`mobillm-batches:${seed}:${epoch}`).shuffle(order);
  for (let start = 0; start < n; start += batchSize) {
    const chunk = order.slice(start, start + batchSize);
    if (dropLast && chunk.length < batchSize) return;
    yield chunk;
  }
}
