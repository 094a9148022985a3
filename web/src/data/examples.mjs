/** Labelled examples and raw labels mapped to ids, as src/mobillm/data/examples.py. */

import { DataError } from '../exceptions.mjs';
import { compareCodePoints, pyRepr, pyStr, pyStrip } from './python.mjs';

/** The names of labels 0/1 when a file gives no names. */
export const SENTIMENT_LABELS = Object.freeze(['negative', 'positive']);

/** A label Python reads as an integer: an int, or a string of ASCII digits with an optional sign. */
const INT = /^[+-]?[0-9]+$/;

/**
 * @typedef {{text: string, label: number}} Example one labelled text; `label` indexes the data set's label names
 * @typedef {[unknown, unknown]} RawRecord (text, raw label) as a file holds them
 */

/** Python's `isinstance(v, int)` or a digit string, for JSON values. */
function isIntLabel(value) {
  return (typeof value === 'number' && Number.isInteger(value)) || (typeof value === 'string' && INT.test(pyStrip(value)));
}

/** Ids and names for integer labels: 0=negative, 1=positive for binary ones, else their numbers. */
function intLabels(name, raw, notes) {
  const ids = [...new Set(raw.map((v) => Number(typeof v === 'string' ? pyStrip(v) : v)))].sort((a, b) => a - b);
  if (ids[0] < 0) throw new DataError(`${name}: label ${ids[0]} is negative; labels must be 0..N-1 or names`);
  const top = ids[ids.length - 1];
  if (top === 1) {
    notes.push('label names not given: 0=negative, 1=positive assumed (binary sentiment)');
    return { labelNames: [...SENTIMENT_LABELS], convert: (v) => Number(typeof v === 'string' ? pyStrip(v) : v) };
  }
  const labelNames = Array.from({ length: top + 1 }, (_, i) => String(i));
  return { labelNames, convert: (v) => Number(typeof v === 'string' ? pyStrip(v) : v) };
}

/** Ids for named labels: the names in sorted (code point) order. */
function namedLabels(raw, notes) {
  const labelNames = [...new Set(raw.map((v) => pyStrip(pyStr(v))))].sort(compareCodePoints);
  notes.push(`string labels mapped to ids in sorted order: ${labelNames.map((n, i) => `${i}=${n}`).join(', ')}`);
  const index = new Map(labelNames.map((n, i) => [n, i]));
  return { labelNames, convert: (v) => index.get(pyStrip(pyStr(v))) };
}

/**
 * Map raw labels to ids consistently over all splits and drop empty texts (Python's `to_examples` with
 * `label_names=None`, the bundle device's call).
 * @param {string} name the data set, for messages
 * @param {Record<string, RawRecord[]>} splits split name -> records, in file order
 * @returns {{splits: Record<string, Example[]>, labelNames: string[], notes: string[]}}
 */
export function toExamples(name, splits) {
  const notes = [];
  const raw = Object.values(splits).flatMap((records) => records.map(([, label]) => label));
  if (!raw.length) throw new DataError(`${name}: the data set is empty`);
  const { labelNames, convert } = raw.every(isIntLabel) ? intLabels(name, raw, notes) : namedLabels(raw, notes);
  if (labelNames.length < 2) {
    throw new DataError(`${name}: classification needs at least two labels, found ${pyRepr(labelNames)}`);
  }
  const out = {};
  for (const [split, records] of Object.entries(splits)) {
    const examples = [];
    let empty = 0;
    for (const [text, label] of records) {
      if (typeof text !== 'string') throw new DataError(`${name} (${split}): text ${pyRepr(text)} is not a string`);
      if (!pyStrip(text)) empty++;
      else examples.push({ text, label: convert(label) });
    }
    if (empty) notes.push(`${split}: dropped ${empty} rows with empty text`);
    out[split] = examples;
  }
  if (!Object.values(out).some((examples) => examples.length)) throw new DataError(`${name}: every text is empty`);
  return { splits: out, labelNames, notes };
}
