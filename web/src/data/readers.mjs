/**
 * Data files, as src/mobillm/data/readers.py reads them: TSV, CSV (a header row, or `noHeader` and columns by
 * position) and JSONL, one file or a directory of train/dev/test files. No I/O: a file is its name and bytes
 * (node_files.mjs reads them from a path in Node; a browser gives a File's bytes).
 */

import { DataError } from '../exceptions.mjs';
import { readCsv } from './csv.mjs';
import { toExamples } from './examples.mjs';
import { compareCodePoints, pyRepr, pySplitLines, pyStrip } from './python.mjs';
import { fillMissing, splitExamples, splitNote } from './splits.mjs';

/** The default text column (GLUE SST-2's). */
export const TEXT_COLUMN = 'sentence';
/** The default label column. */
export const LABEL_COLUMN = 'label';
/** The file types read. */
export const FILE_SUFFIXES = Object.freeze(['.tsv', '.csv', '.jsonl']);
/** The file stems of each split in a directory, in the order they are looked for. */
export const SPLIT_FILES = Object.freeze({ train: ['train'], validation: ['dev', 'validation'], test: ['test'] });
const REPLACEMENT = '\ufffd';

/**
 * @typedef {{name: string, data: Uint8Array | ArrayBuffer | string}} DataFile a file: its name (a path or a bare
 *   file name, as messages show it) and its bytes (a string is read as its UTF-8 bytes)
 * @typedef {{name: string, files: DataFile[]}} DataDirectory a directory: its name and its files
 * @typedef {{name: string, labelNames: string[], train: import('./examples.mjs').Example[],
 *   validation: import('./examples.mjs').Example[], test: import('./examples.mjs').Example[], notes: string[]}} TextDataset
 */

/** The last component of a path. */
export function baseName(path) {
  return path.replace(/\/+$/, '').split('/').pop();
}

/** Python's `Path(name).suffix`. */
function suffixOf(name) {
  const base = baseName(name);
  const dot = base.lastIndexOf('.');
  return dot > 0 && dot < base.length - 1 ? base.slice(dot) : '';
}

/** Python's `Path(name).stem`. */
function stemOf(name) {
  const base = baseName(name);
  return base.slice(0, base.length - suffixOf(name).length);
}

/**
 * UTF-8 text with a leading BOM dropped; invalid bytes become U+FFFD, as Python's `decode("utf-8-sig",
 * errors="replace")`. Returns the text and whether any byte was invalid.
 * @param {Uint8Array | ArrayBuffer | string} data
 * @returns {{text: string, damaged: boolean}}
 */
export function decodeText(data) {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(bytes), damaged: false };
  } catch {
    return { text: new TextDecoder('utf-8').decode(bytes), damaged: true };
  }
}

/**
 * The 0-based position a column of a headerless file is read from: `column` itself when it is a number,
 * `defaultPosition` when it is left at its default name (text first, then label).
 * @param {string} column
 * @param {string} defaultName
 * @param {number} defaultPosition
 * @param {string} flag the command-line flag, for the message
 */
export function columnPosition(column, defaultName, defaultPosition, flag) {
  if (/^[0-9]+$/.test(pyStrip(column))) return Number(pyStrip(column));
  if (column === defaultName) return defaultPosition;
  throw new DataError(`${flag} ${pyRepr(column)}: a file read with --no-header has no column names; ` +
    `give ${flag} as a position (0 is the first field) or leave it out`);
}

/** (line number, object) of each non-blank JSONL line; DataError naming the line when it is not an object. */
function* jsonlObjects(name, text) {
  const lines = pySplitLines(text);
  for (let i = 0; i < lines.length; i++) {
    if (!pyStrip(lines[i])) continue;
    let obj;
    try {
      obj = JSON.parse(lines[i]);
    } catch (err) {
      throw new DataError(`${name}:${i + 1}: not valid JSON (${err.message})`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      throw new DataError(`${name}:${i + 1}: expected a JSON object per line, got ${jsonType(obj)}`);
    }
    yield [i + 1, obj];
  }
}

/** Python's type name of a parsed JSON value. */
function jsonType(value) {
  if (value === null) return 'NoneType';
  if (Array.isArray(value)) return 'list';
  if (typeof value === 'string') return 'str';
  if (typeof value === 'boolean') return 'bool';
  return Number.isInteger(value) ? 'int' : 'float';
}

/** The (text, raw label) records of a JSONL text. */
function jsonlRecords(name, text, textColumn, labelColumn) {
  const records = [];
  for (const [number, obj] of jsonlObjects(name, text)) {
    for (const column of [textColumn, labelColumn]) {
      if (!Object.hasOwn(obj, column)) {
        throw new DataError(`${name}:${number}: no key ${pyRepr(column)}; keys are ${Object.keys(obj).map(pyRepr).join(', ')} ` +
          '(choose them with --text-column / --label-column)');
      }
    }
    records.push([obj[textColumn], obj[labelColumn]]);
  }
  return records;
}

/** The (text, raw label) records of a TSV (no quoting) or CSV (excel) text. */
function delimitedRecords(name, text, textColumn, labelColumn, noHeader, tsv) {
  const rows = readCsv(text, tsv ? { delimiter: '\t', quoting: false } : { delimiter: ',', quoting: true });
  let ti;
  let li;
  let width = null; // headerless: every row has the first row's number of fields
  if (noHeader) {
    ti = columnPosition(textColumn, TEXT_COLUMN, 0, '--text-column');
    li = columnPosition(labelColumn, LABEL_COLUMN, 1, '--label-column');
  } else {
    const header = rows.next().value?.row;
    if (!header?.length) throw new DataError(`${name} is empty (no header row)`);
    const missing = [textColumn, labelColumn].filter((c) => !header.includes(c));
    if (missing.length) {
      throw new DataError(`${name}: no column ${missing.map(pyRepr).join(' or ')}; columns are ${header.map(pyRepr).join(', ')} ` +
        '(choose them with --text-column / --label-column, or pass --no-header if the first row is data)');
    }
    [ti, li, width] = [header.indexOf(textColumn), header.indexOf(labelColumn), header.length];
  }
  const records = [];
  for (const { row, lineNum } of rows) {
    if (!row.length) continue;
    if (width === null) {
      width = row.length;
      if (Math.max(ti, li) >= width) {
        const flag = ti >= width ? '--text-column' : '--label-column';
        throw new DataError(`${name}:${lineNum}: ${flag} ${Math.max(ti, li)} but the rows have ${width} fields (positions count from 0)`);
      }
    }
    if (row.length !== width) {
      throw new DataError(`${name}:${lineNum}: ${row.length} fields where the ${noHeader ? 'first row' : 'header'} has ${width}` +
        (tsv ? ' (TSV is read without quoting: a tab inside a text breaks the row)' : ''));
    }
    records.push([row[ti], row[li]]);
  }
  return records;
}

/**
 * (text, raw label) records of one file and notes; DataError on an unsupported type, a missing column or a
 * malformed row.
 * @param {DataFile} file
 * @param {string} textColumn
 * @param {string} labelColumn
 * @param {boolean} [noHeader] a TSV/CSV file whose first row is data; its columns are positions
 * @returns {{records: [unknown, unknown][], notes: string[]}}
 */
export function readRecords(file, textColumn, labelColumn, noHeader = false) {
  const suffix = suffixOf(file.name).toLowerCase();
  if (!FILE_SUFFIXES.includes(suffix)) {
    throw new DataError(`${file.name}: unsupported file type ${suffix || '(none)'}; use one of ${FILE_SUFFIXES.join(', ')}`);
  }
  const { text, damaged } = decodeText(file.data);
  let records;
  if (suffix === '.jsonl') {
    if (noHeader) throw new DataError(`${file.name}: --no-header applies to .tsv/.csv files; JSONL lines name their own keys`);
    records = jsonlRecords(file.name, text, textColumn, labelColumn);
  } else {
    records = delimitedRecords(file.name, text, textColumn, labelColumn, noHeader, suffix === '.tsv');
  }
  const notes = [];
  if (damaged) {
    const count = records.filter(([t]) => String(t).includes(REPLACEMENT)).length;
    notes.push(`${baseName(file.name)}: ${count} rows had invalid UTF-8 (decoded with replacement)`);
  }
  return { records, notes };
}

/**
 * One TSV/CSV/JSONL file, split 80/10/10 (seeded, stratified).
 * @param {DataFile} file
 * @param {string} textColumn
 * @param {string} labelColumn
 * @param {number} splitSeed
 * @param {boolean} [noHeader]
 * @returns {TextDataset}
 */
export function loadFile(file, textColumn, labelColumn, splitSeed, noHeader = false) {
  const { records, notes } = readRecords(file, textColumn, labelColumn, noHeader);
  if (!records.length) throw new DataError(`${file.name}: the data set is empty${noHeader ? '' : ' (a header and no rows)'}`);
  const { splits, labelNames, notes: more } = toExamples(file.name, { all: records });
  const [train, validation, test] = splitExamples(splits.all, splitSeed);
  notes.push(...more, splitNote(train, validation, test, splitSeed));
  return { name: stemOf(file.name), labelNames, train, validation, test, notes };
}

/** The file of a split: the first stem, then the first suffix, that the directory has. */
function findSplit(directory, stems) {
  for (const stem of stems) {
    for (const suffix of FILE_SUFFIXES) {
      const file = directory.files.find((f) => baseName(f.name) === `${stem}${suffix}`);
      if (file) return file;
    }
  }
  return null;
}

/**
 * train/dev (or validation)/test files of one directory; missing validation/test splits carved out of train.
 * @param {DataDirectory} directory
 * @param {string} textColumn
 * @param {string} labelColumn
 * @param {number} splitSeed
 * @param {boolean} [noHeader]
 * @returns {TextDataset}
 */
export function loadDirectory(directory, textColumn, labelColumn, splitSeed, noHeader = false) {
  const files = Object.fromEntries(Object.entries(SPLIT_FILES).map(([split, stems]) => [split, findSplit(directory, stems)]));
  if (!files.train) {
    const found = directory.files.map((f) => baseName(f.name)).sort(compareCodePoints).join(', ') || 'nothing';
    throw new DataError(`${directory.name} has no train.tsv/.csv/.jsonl (found: ${found})`);
  }
  const notes = [];
  const raw = {};
  for (const [split, file] of Object.entries(files)) {
    if (!file) continue;
    const read = readRecords(file, textColumn, labelColumn, noHeader);
    raw[split] = read.records;
    notes.push(...read.notes);
  }
  const { splits, labelNames, notes: more } = toExamples(directory.name, raw);
  notes.push(...more, ...fillMissing(splits, splitSeed));
  for (const split of ['train', 'validation', 'test']) {
    if (!splits[split].length) throw new DataError(`${directory.name}: the ${split} split is empty`);
  }
  return { name: baseName(directory.name), labelNames, train: splits.train, validation: splits.validation, test: splits.test, notes };
}
