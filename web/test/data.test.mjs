import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ConfigError, DataError } from '../src/exceptions.mjs';
import { readCsv } from '../src/data/csv.mjs';
import { batchChunks } from '../src/data/order.mjs';
import { compareCodePoints, pySplitLines, pyStrip } from '../src/data/python.mjs';
import { decodeText } from '../src/data/readers.mjs';
import { loadDataset } from '../src/data/sources.mjs';
import { splitExamples, subset } from '../src/data/splits.mjs';
import { PromptTemplate, defaultTemplate } from '../src/data/templates.mjs';

// Expected values printed by the Python code (src/mobillm/data/); tests/test_web_data.py compares whole data sets.

const rows = (text, dialect) => [...readCsv(text, dialect)].map((r) => [r.row, r.lineNum]);
const CSV = { delimiter: ',', quoting: true };
const TSV = { delimiter: '\t', quoting: false };

test('csv: quoted fields with commas, doubled quotes and newlines; line numbers count physical lines', () => {
  assert.deepEqual(rows('a,b\r\n"x, ""y""\nz",1\n\nlast,0', CSV), [[['a', 'b'], 1], [['x, "y"\nz', '1'], 3], [[], 4], [['last', '0'], 5]]);
  assert.deepEqual(rows('"ab"cd,e\n', CSV), [[['abcd', 'e'], 1]]); // not strict: text after a closing quote is kept
  assert.deepEqual(rows('"open\n', CSV), [[['open\n'], 1]]); // a quote left open at the end
});

test('tsv: quotes are plain characters', () => {
  assert.deepEqual(rows('"a\tb"\tc\r', TSV), [[['"a', 'b"', 'c'], 1]]);
});

test('python string helpers', () => {
  assert.equal(pyStrip('\x1c a \ufeff'), 'a \ufeff'); // Python strips \x1c but not U+FEFF
  assert.deepEqual(pySplitLines('a\r\nb\x0bc\n\n'), ['a', 'b', 'c', '']);
  assert.deepEqual(['😀', '\uff01', 'a'].sort(compareCodePoints), ['a', '\uff01', '😀']);
});

test('decodeText drops a BOM and replaces invalid bytes as Python does', () => {
  assert.deepEqual(decodeText(Uint8Array.from([0xef, 0xbb, 0xbf, 0x61])), { text: 'a', damaged: false });
  assert.deepEqual(decodeText(Uint8Array.from([0x61, 0xed, 0xa0, 0x80, 0xe2, 0x82])), { text: 'a\ufffd\ufffd\ufffd\ufffd', damaged: true });
});

test('splitExamples: stratified, seeded, in input order', () => {
  const examples = Array.from({ length: 23 }, (_, i) => ({ text: String(i), label: i % 3 }));
  const parts = splitExamples(examples, 0).map((p) => p.map((e) => e.text));
  assert.deepEqual(parts, [
    ['1', '2', '3', '6', '7', '8', '11', '12', '13', '15', '16', '17', '18', '19', '20', '21', '22'], ['0', '10', '14'], ['4', '5', '9'],
  ]);
  assert.throws(() => splitExamples(examples.slice(0, 2), 0), DataError);
});

test('subset and batchChunks', () => {
  assert.deepEqual(subset(Array.from({ length: 20 }, (_, i) => i), 5, 7, 'validation'), [1, 2, 12, 14, 17]);
  assert.deepEqual([...batchChunks(11, 4, { shuffle: true, seed: 1, epoch: 2 })], [[9, 2, 8, 10], [7, 3, 6, 0], [4, 1, 5]]);
  assert.deepEqual([...batchChunks(5, 2, { shuffle: false, dropLast: true })], [[0, 1], [2, 3]]);
  assert.throws(() => [...batchChunks(5, 0, { shuffle: false })], ConfigError);
});

test('templates', () => {
  assert.equal(defaultTemplate(['positive', 'negative']).template, 'Review: {text}\nSentiment (positive or negative):');
  assert.equal(defaultTemplate(['negative', 'neutral', 'positive']).template, 'Review: {text}\nSentiment (negative, neutral or positive):');
  const other = defaultTemplate(['sports', 'world']);
  assert.deepEqual([other.prefix, other.suffix, other.labelWords], ['Text: ', '\nLabel (sports or world):', [' sports', ' world']]);
  assert.throws(() => new PromptTemplate('no field', [' a', ' a']), (err) => err instanceof ConfigError && err.problems.length === 2);
  assert.throws(() => other.checkLabels(['a', 'b', 'c']), ConfigError);
});

test('loadDataset: an in-memory file, split 80/10/10 with the notes Python writes', () => {
  const lines = Array.from({ length: 20 }, (_, i) => `text ${i}\t${i % 2}`);
  const data = loadDataset({ name: 'upload.tsv', data: `sentence\tlabel\n${lines.join('\n')}\n` }, { maxTrainSamples: 4, seed: 1 });
  assert.equal(data.name, 'upload');
  assert.deepEqual(data.labelNames, ['negative', 'positive']);
  assert.deepEqual([data.train.length, data.validation.length, data.test.length], [4, 2, 2]);
  assert.deepEqual(data.notes, [
    'label names not given: 0=negative, 1=positive assumed (binary sentiment)',
    'split 16/2/2 (train/validation/test, 80/10/10 stratified, split seed 0)',
    'seeded subsets (seed 1): 4 train, 2 validation, 2 test',
  ]);
});

test('loadDataset: errors name the file, the line and the flag to change', () => {
  const load = (name, data, options) => () => loadDataset({ name, data }, options);
  assert.throws(load('d.tsv', 'text\tlabel\na\t1\n'), /d\.tsv: no column 'sentence'; columns are 'text', 'label' \(choose them with --text-column/);
  assert.throws(load('d.tsv', 'sentence\tlabel\na\t1\nb\n'), /d\.tsv:3: 1 fields where the header has 2/);
  assert.throws(load('d.txt', 'x'), /unsupported file type \.txt/);
  assert.throws(load('d.jsonl', '{"sentence": "a"}\n', {}), /d\.jsonl:1: no key 'label'/);
  assert.throws(load('d.tsv', 'a\t1\n', { noHeader: true, maxEvalSamples: 0 }), /max_eval_samples must be >= 1/);
  assert.throws(() => loadDataset({ name: 'dir', files: [{ name: 'dir/dev.tsv', data: '' }] }), /dir has no train\.tsv\/\.csv\/\.jsonl \(found: dev\.tsv\)/);
});
