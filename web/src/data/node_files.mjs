/**
 * Node's side of data loading: a path on disk as the in-memory file or directory that sources.mjs loads (the
 * browser hands over a File's bytes instead).
 */

import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { DataError } from '../exceptions.mjs';
import { FILE_SUFFIXES } from './readers.mjs';

/**
 * The file at `path`, or the data files (.tsv/.csv/.jsonl) of the directory at `path`, with their bytes.
 * @param {string} path
 * @returns {Promise<import('./readers.mjs').DataFile | import('./readers.mjs').DataDirectory>}
 */
export async function readDataSource(path) {
  const info = await stat(path).catch(() => null);
  if (info === null) throw new DataError(`data file ${path} does not exist; check --data`);
  if (!info.isDirectory()) return { name: path, data: await readFile(path) };
  // a link to a file counts as that file (as Python's Path.is_file() follows it)
  const isFile = async (name) => (await stat(join(path, name)).catch(() => null))?.isFile() ?? false;
  const candidates = (await readdir(path)).filter((name) => FILE_SUFFIXES.some((s) => name.toLowerCase().endsWith(s)));
  const kept = await Promise.all(candidates.map(isFile));
  const names = candidates.filter((_, i) => kept[i]);
  const files = await Promise.all(names.map(async (name) => ({ name: join(path, name), data: await readFile(join(path, name)) })));
  return { name: path, files };
}
