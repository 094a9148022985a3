/**
 * The data the user picked in the page, as the source that data/sources.mjs's `loadDataset` reads: one file (split
 * 80/10/10 there), or a train file with optional dev and test files (a directory of train/dev/test files). The
 * files are read in the page; their bytes never leave it. Also the columns a file offers, for the page's column
 * choices: the header's names, the first JSONL object's keys, or positions for a file without a header.
 */
import { DataError } from '../exceptions.mjs';
import { readCsv } from '../data/csv.mjs';
import { FILE_SUFFIXES, decodeText } from '../data/readers.mjs';

/** The split files' roles, as data/readers.mjs's SPLIT_FILES names them. */
export const SPLIT_ROLES = Object.freeze(['train', 'dev', 'test']);

/** `.tsv`, `.csv` or `.jsonl` of a file name (lower case); DataError for any other type. */
export function fileSuffix(name) {
  const dot = name.lastIndexOf('.');
  const suffix = dot > 0 ? name.slice(dot).toLowerCase() : '';
  if (!FILE_SUFFIXES.includes(suffix)) {
    throw new DataError(`${name}: unsupported file type ${suffix || '(none)'}; pick a ${FILE_SUFFIXES.join(', ')} file`);
  }
  return suffix;
}

/**
 * A picked file's name and bytes (a `File` or any Blob with a name).
 * @param {{name: string, arrayBuffer: () => Promise<ArrayBuffer>}} file
 * @returns {Promise<{name: string, data: Uint8Array}>}
 */
export async function readPicked(file) {
  fileSuffix(file.name);
  return { name: file.name, data: new Uint8Array(await file.arrayBuffer()) };
}

/**
 * The source for `loadDataset`: `{name, data}` for one file, `{name, files}` for split files (each renamed to its
 * role, `train.tsv`, `dev.csv`…, which is how a directory names its splits; its own suffix is kept).
 *
 * @param {{file?: {name: string, data: Uint8Array}, train?: {name: string, data: Uint8Array},
 *   dev?: {name: string, data: Uint8Array}, test?: {name: string, data: Uint8Array}}} picked read files
 * @returns {import('../data/readers.mjs').DataFile | import('../data/readers.mjs').DataDirectory}
 */
export function dataSource(picked) {
  if (picked.file) return picked.file;
  if (!picked.train) throw new DataError('pick a training file (dev and test files are optional: they are split off it when missing)');
  const files = SPLIT_ROLES.filter((role) => picked[role])
    .map((role) => ({ name: `${role}${fileSuffix(picked[role].name)}`, data: picked[role].data }));
  return { name: picked.train.name, files };
}

const PREVIEW = 24;
const preview = (value) => {
  const text = String(value).replace(/\s+/g, ' ').trim();
  return text.length > PREVIEW ? `${text.slice(0, PREVIEW - 1)}…` : text;
};

/**
 * The columns a file offers: `value` is what `loadDataset` takes as textColumn/labelColumn, `label` what the page
 * shows. With a header (TSV/CSV) the header's names; JSONL: the first object's keys; `noHeader`: positions "0",
 * "1"… with the first row's values.
 *
 * @param {{name: string, data: Uint8Array}} file
 * @param {boolean} noHeader the first TSV/CSV row is data
 * @returns {{value: string, label: string}[]}
 */
export function fileColumns(file, noHeader) {
  const suffix = fileSuffix(file.name);
  const { text } = decodeText(file.data);
  if (suffix === '.jsonl') {
    if (noHeader) throw new DataError(`${file.name}: "no header row" applies to .tsv/.csv files; JSONL lines name their own keys`);
    const line = text.split(/\r\n|\r|\n/).find((l) => l.trim());
    let first;
    try {
      first = JSON.parse(line ?? '');
    } catch (err) {
      throw new DataError(`${file.name}: the first line is not valid JSON (${err.message})`);
    }
    if (first === null || typeof first !== 'object' || Array.isArray(first)) {
      throw new DataError(`${file.name}: expected a JSON object per line`);
    }
    return Object.keys(first).map((key) => ({ value: key, label: key }));
  }
  const rows = readCsv(text, suffix === '.tsv' ? { delimiter: '\t', quoting: false } : { delimiter: ',', quoting: true });
  let row;
  for (const next of rows) {
    if (next.row.length) {
      row = next.row;
      break;
    }
  }
  if (!row) throw new DataError(`${file.name} is empty`);
  if (!noHeader) return row.map((name) => ({ value: name, label: name }));
  return row.map((value, i) => ({ value: String(i), label: `column ${i} (“${preview(value)}”)` }));
}

/**
 * The columns to select first: the template's names when the file has them, else the first column for the text
 * and the last for the label (a file without a header: positions 0 and 1, as the readers' defaults).
 *
 * @param {{value: string}[]} columns fileColumns' answer
 * @param {{text_column: string, label_column: string}} defaults the job template's data fields
 * @param {boolean} noHeader the columns are positions
 * @returns {{text: string, label: string}}
 */
export function defaultColumns(columns, defaults, noHeader) {
  const values = columns.map((c) => c.value);
  const pick = (name, fallback) => (values.includes(name) ? name : fallback);
  if (noHeader) return { text: '0', label: values.length > 1 ? '1' : '0' };
  return { text: pick(defaults.text_column, values[0]), label: pick(defaults.label_column, values.at(-1)) };
}
