import assert from 'node:assert/strict';
import { mkdtemp, mkdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { readDataSource } from '../src/data/node_files.mjs';

test('a data folder lists its data files, a link to a file counting as that file (as Python\'s is_file)', async () => {
  const root = await mkdtemp(join(tmpdir(), 'mobillm-node-files-'));
  const folder = join(root, 'data');
  await mkdir(folder);
  await mkdir(join(root, 'elsewhere'));
  await writeFile(join(root, 'elsewhere', 'train.tsv'), 'sentence\tlabel\nlinked\t1\n');
  await symlink(join(root, 'elsewhere', 'train.tsv'), join(folder, 'train.tsv'));
  await writeFile(join(folder, 'test.tsv'), 'sentence\tlabel\nplain\t0\n');
  await writeFile(join(folder, 'notes.txt'), 'not data');
  await symlink(join(root, 'missing.tsv'), join(folder, 'dev.tsv')); // dangling: no file
  await mkdir(join(folder, 'folder.tsv')); // a directory is no file
  const source = await readDataSource(folder);
  const names = source.files.map((f) => f.name.slice(folder.length + 1)).sort();
  assert.deepEqual(names, ['test.tsv', 'train.tsv']);
  const linked = source.files.find((f) => f.name.endsWith('train.tsv'));
  assert.equal(new TextDecoder().decode(linked.data), 'sentence\tlabel\nlinked\t1\n');
});
