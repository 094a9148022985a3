/**
 * Labelled text examples for a classification job from a data file or directory, as src/mobillm/data/sources.py's
 * `load_dataset` loads local data for the bundle device: one .tsv/.csv/.jsonl file split 80/10/10, or a directory
 * of train, dev (or validation) and test files with missing splits carved out of train; then the seeded subsets.
 *
 * Splits the loader makes use `splitSeed` (default SPLIT_SEED), not `seed`: the test set stays the same whatever
 * seed a run trains with; `seed` only picks the max*Samples subsets. What a user should know about the loading
 * (damaged bytes, dropped rows, splits) is in the result's `notes`, worded as Python words them.
 */

import { DataError } from '../exceptions.mjs';
import { LABEL_COLUMN, TEXT_COLUMN, loadDirectory, loadFile } from './readers.mjs';
import { SPLIT_SEED, subset } from './splits.mjs';

/**
 * @typedef {object} LoadOptions
 * @property {string} [textColumn] the text column's name, or its position with noHeader (`--text-column`)
 * @property {string} [labelColumn] the label column's name or position (`--label-column`)
 * @property {boolean} [noHeader] TSV/CSV files whose first row is data (`--no-header`)
 * @property {number} [seed] picks the subsets (the run's seed)
 * @property {number | null} [maxTrainSamples]
 * @property {number | null} [maxEvalSamples] caps validation
 * @property {number | null} [maxTestSamples]
 * @property {number} [splitSeed] the seed of the splits the loader makes
 */

/**
 * Load a data file or directory and take the seeded subsets asked for.
 * @param {import('./readers.mjs').DataFile | import('./readers.mjs').DataDirectory} source a file `{name, data}`
 *   or a directory `{name, files}`
 * @param {LoadOptions} [options]
 * @returns {import('./readers.mjs').TextDataset}
 */
export function loadDataset(source, options = {}) {
  const {
    textColumn = TEXT_COLUMN, labelColumn = LABEL_COLUMN, noHeader = false, seed = 0,
    maxTrainSamples = null, maxEvalSamples = null, maxTestSamples = null, splitSeed = SPLIT_SEED,
  } = options;
  const limits = [['max_train_samples', maxTrainSamples], ['max_eval_samples', maxEvalSamples], ['max_test_samples', maxTestSamples]];
  for (const [name, value] of limits) {
    if (value !== null && value !== undefined && value < 1) throw new DataError(`${name} must be >= 1 (or None for all), got ${value}`);
  }
  const data = 'files' in source
    ? loadDirectory(source, textColumn, labelColumn, splitSeed, noHeader)
    : loadFile(source, textColumn, labelColumn, splitSeed, noHeader);
  data.train = subset(data.train, maxTrainSamples, seed, 'train');
  data.validation = subset(data.validation, maxEvalSamples, seed, 'validation');
  data.test = subset(data.test, maxTestSamples, seed, 'test');
  if (limits.some(([, value]) => value !== null && value !== undefined)) {
    data.notes.push(`seeded subsets (seed ${seed}): ${data.train.length} train, ${data.validation.length} validation, ` +
      `${data.test.length} test`);
  }
  return data;
}
