/**
 * Seeded splits and subsets, as src/mobillm/data/splits.py: 80/10/10 for data that comes unsplit, missing splits
 * carved out of train, with Python's `random.Random` (random.mjs) so the same examples land in the same split.
 */

import { DataError } from '../exceptions.mjs';
import { PyRandom } from './random.mjs';

/** The seed of the splits a loader makes itself (not the run's seed: the test set stays put). */
export const SPLIT_SEED = 0;
/** Train / validation / test, for data that does not come split. */
export const SPLIT_FRACTIONS = Object.freeze([0.8, 0.1, 0.1]);

/** Python's `round(x)` to an integer: halves to even. */
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff !== 0.5) return Math.round(x);
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * Seeded split stratified by label: part k>0 gets round(n_class * fractions[k]) of each class, part 0 the rest;
 * every part keeps the input order and none with a positive fraction is left empty.
 * @template {{label: number}} T
 * @param {T[]} examples
 * @param {number} seed
 * @param {readonly number[]} [fractions]
 * @returns {T[][]}
 */
export function splitExamples(examples, seed, fractions = SPLIT_FRACTIONS) {
  const wanted = fractions.filter((f) => f > 0).length;
  if (examples.length < wanted) {
    throw new DataError(`need at least ${wanted} examples to make ${wanted} splits, got ${examples.length}`);
  }
  const byLabel = new Map();
  examples.forEach((e, i) => {
    if (!byLabel.has(e.label)) byLabel.set(e.label, []);
    byLabel.get(e.label).push(i);
  });
  const rng = new PyRandom(`mobillm-split:${seed}`);
  const parts = fractions.map(() => []);
  for (const label of [...byLabel.keys()].sort((a, b) => a - b)) {
    const idx = rng.shuffle(byLabel.get(label));
    let start = 0;
    for (let k = 1; k < fractions.length; k++) {
      const n = roundHalfEven(idx.length * fractions[k]);
      parts[k].push(...idx.slice(start, start + n));
      start += n;
    }
    parts[0].push(...idx.slice(start));
  }
  fractions.forEach((f, k) => {
    if (f > 0 && !parts[k].length) parts[k].push(largest(parts).pop());
  });
  return parts.map((part) => [...part].sort((a, b) => a - b).map((i) => examples[i]));
}

/** The first of the longest parts (Python's `max(parts, key=len)`). */
function largest(parts) {
  return parts.reduce((best, part) => (part.length > best.length ? part : best));
}

/**
 * Carve a missing validation and/or test split out of train (seeded, stratified, 10% each); returns the notes.
 * @param {Record<string, {label: number}[]>} splits updated in place
 * @param {number} seed
 * @returns {string[]}
 */
export function fillMissing(splits, seed) {
  const missing = ['validation', 'test'].filter((s) => !(s in splits));
  if (!missing.length) return [];
  const fractions = [1.0 - SPLIT_FRACTIONS[1] * missing.length, ...missing.map(() => SPLIT_FRACTIONS[1])];
  const [train, ...carved] = splitExamples(splits.train, seed, fractions);
  splits.train = train;
  missing.forEach((split, k) => { splits[split] = carved[k]; });
  const sizes = ['train', ...missing].map((s) => `${splits[s].length} ${s}`).join(', ');
  const percent = `${Math.round(SPLIT_FRACTIONS[1] * 100)}%`;
  return [`no ${missing.join(' or ')} split: carved out of train (seeded, stratified, ${percent} each): ${sizes}`];
}

/**
 * The note on an 80/10/10 split.
 * @param {unknown[]} train
 * @param {unknown[]} validation
 * @param {unknown[]} test
 * @param {number} seed
 */
export function splitNote(train, validation, test, seed) {
  const sizes = `${train.length}/${validation.length}/${test.length}`;
  return `split ${sizes} (train/validation/test, 80/10/10 stratified, split seed ${seed})`;
}

/**
 * A seeded random subset of `n` items (all of them when `n` is null or not smaller), in the split's order.
 * @template T
 * @param {T[]} items
 * @param {number | null | undefined} n
 * @param {number} seed
 * @param {string} split
 * @returns {T[]}
 */
export function subset(items, n, seed, split) {
  if (n === null || n === undefined || n >= items.length) return items;
  const indices = Array.from({ length: items.length }, (_, i) => i);
  const picked = new PyRandom(`mobillm-subset:${split}:${seed}`).sample(indices, n).sort((a, b) => a - b);
  return picked.map((i) => items[i]);
}
