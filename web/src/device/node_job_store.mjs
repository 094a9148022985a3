/**
 * Node's store of a job's record (device/job_state.mjs): `job_state.json` in the device's output directory, as the
 * Python device keeps it (a browser keeps the record in IndexedDB instead).
 */
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { ConfigError } from '../exceptions.mjs';
import { JOB_STATE_NAME } from './job_state.mjs';

/**
 * The JobStateStore of `directory`: `directory/job_state.json`, written through a temporary file and a rename.
 * @param {string} directory
 * @returns {import('./job_state.mjs').JobStateStore}
 */
export function fileJobStore(directory) {
  const path = join(directory, JOB_STATE_NAME);
  return {
    name: path,
    async load() {
      let text;
      try {
        text = await readFile(path, 'utf8');
      } catch (err) {
        if (err.code === 'ENOENT') return null;
        throw err;
      }
      try {
        return JSON.parse(text);
      } catch {
        throw new ConfigError(`${path} is not JSON; remove it to start the job afresh`);
      }
    },
    async save(record) {
      await mkdir(directory, { recursive: true });
      const tmp = `${path}.tmp`;
      await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`);
      await rename(tmp, path);
    },
    async remove() {
      await rm(path, { force: true });
    },
  };
}
