#!/usr/bin/env node
/**
 * `node web/device.mjs`: one classification job from Node, as `mobillm device --runtime onnx` runs it in Python —
 * the same bundle, the same batches and wire bytes, the side network downloaded and scored locally.
 *
 *   mobillm template --bundle B > job.json            # where mobillm is installed: the job's settings
 *   MOBILLM_TOKEN=... node web/device.mjs --server ws://HOST:8765 --job alice --bundle B --template job.json \
 *       --data my.tsv [--output-dir runs/web-device]
 *
 * Writes OUTPUT_DIR/summary.json, OUTPUT_DIR/side_network/ (side_config.json + side_network.safetensors, as the
 * Python device saves it) and OUTPUT_DIR/test_predictions.json (each test sample's id, label, prediction, logits).
 * While the job runs OUTPUT_DIR/job_state.json keeps what resumes it: run the same command again after the process
 * ended (killed, crashed) and the job goes on from the batches the server holds (docs/protocol.md §6b).
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

import { MobillmError } from './src/exceptions.mjs';
import { Bundle, directoryReader } from './src/bundle/runtime.mjs';
import { readDataSource } from './src/data/node_files.mjs';
import { loadDataset } from './src/data/sources.mjs';
import { DEFAULT_MAX_MESSAGE_BYTES, writeSafetensors } from './src/wire/frame.mjs';
import { BundleTask, runBundleDevice } from './src/recipes/bundle_device.mjs';
import { SavedJob } from './src/device/job_state.mjs';
import { fileJobStore } from './src/device/node_job_store.mjs';

const USAGE = `usage: node web/device.mjs --server ws://HOST:PORT --job NAME --bundle DIR --template FILE --data PATH [options]

  --server URL             a mobillm serve (ws:// or wss://)             [ws://127.0.0.1:8765]
  --job NAME               the job's name on the server                  [default]
  --token TOKEN            the job's token (or $MOBILLM_TOKEN)
  --bundle DIR             a device bundle (mobillm export)
  --template FILE          the job's settings: mobillm template --bundle DIR > FILE
  --data PATH              a .tsv/.csv/.jsonl file, or a directory with train/dev/test files
  --text-column NAME       text column (with --no-header: a position)    [the template's]
  --label-column NAME      label column (with --no-header: a position)   [the template's]
  --no-header              TSV/CSV files without a header row
  --max-train-samples N    a seeded subset of the training split          [the template's]
  --threads N              onnxruntime-web WASM threads                   [1]
  --cafile FILE            CA certificate(s) to verify a wss:// server
  --reconnects N           re-open a dropped connection up to N times     [30]
  --backoff-ms MS          wait between reconnects                        [2000]
  --output-dir DIR         where the summary, side network and predictions go [runs/web-device];
                           its job_state.json resumes a job the device was stopped in (remove it to start afresh)`;

const OPTIONS = {
  server: { type: 'string', default: 'ws://127.0.0.1:8765' },
  job: { type: 'string', default: 'default' },
  token: { type: 'string' },
  bundle: { type: 'string' },
  template: { type: 'string' },
  data: { type: 'string' },
  'text-column': { type: 'string' },
  'label-column': { type: 'string' },
  'no-header': { type: 'boolean' },
  'max-train-samples': { type: 'string' },
  threads: { type: 'string', default: '1' },
  cafile: { type: 'string' },
  reconnects: { type: 'string', default: '30' },
  'backoff-ms': { type: 'string', default: '2000' },
  'output-dir': { type: 'string', default: 'runs/web-device' },
  help: { type: 'boolean', short: 'h' },
};

function integer(value, flag, least) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < least) throw new MobillmError(`${flag} ${value}: expected an integer >= ${least}`);
  return n;
}
const positiveInt = (value, flag) => integer(value, flag, 1);
const nonNegativeInt = (value, flag) => integer(value, flag, 0);

async function main() {
  const { values: args } = parseArgs({ options: OPTIONS, strict: true });
  if (args.help) {
    console.log(USAGE);
    return;
  }
  for (const flag of ['bundle', 'template', 'data']) {
    if (args[flag] === undefined) throw new MobillmError(`--${flag} is required\n${USAGE}`);
  }
  const jobTemplate = JSON.parse(await readFile(args.template, 'utf8'));
  const data = { ...jobTemplate.data };
  if (args['text-column'] !== undefined) data.text_column = args['text-column'];
  if (args['label-column'] !== undefined) data.label_column = args['label-column'];
  if (args['no-header'] !== undefined) data.no_header = args['no-header'];
  if (args['max-train-samples'] !== undefined) data.max_train_samples = positiveInt(args['max-train-samples'], '--max-train-samples');
  jobTemplate.data = data;

  const bundle = await Bundle.load(directoryReader(args.bundle), { threads: positiveInt(args.threads, '--threads') });
  const dataset = loadDataset(await readDataSource(args.data), {
    textColumn: data.text_column, labelColumn: data.label_column, noHeader: data.no_header, seed: jobTemplate.train_config.seed,
    maxTrainSamples: data.max_train_samples, maxEvalSamples: data.max_eval_samples,
  });
  const task = new BundleTask(bundle, jobTemplate, dataset);
  const out = args['output-dir'];
  const savedJob = await SavedJob.open(fileJobStore(out), await task.jobState(args.job));
  if (savedJob.resume) process.stderr.write(`resuming job '${args.job}' (${savedJob.store.name})\n`);
  const total = dataset.validation.length + dataset.train.length * jobTemplate.device_epochs;
  let sent = 0;
  const socketOptions = { maxPayload: DEFAULT_MAX_MESSAGE_BYTES, perMessageDeflate: false };
  if (args.cafile !== undefined) socketOptions.ca = await readFile(args.cafile);
  const { summary, sideNet, predictions } = await runBundleDevice(task, {
    server: args.server, job: args.job, token: args.token ?? process.env.MOBILLM_TOKEN ?? null,
    WebSocketImpl: WebSocket, socketOptions, savedJob,
    reconnects: nonNegativeInt(args.reconnects, '--reconnects'), backoffMs: nonNegativeInt(args['backoff-ms'], '--backoff-ms'),
    onSent: (stats, samples) => {
      sent += samples;
      const loss = stats.losses.at(-1);
      process.stderr.write(`\rdevice → ${args.server}: ${sent}/${total} samples, ${(stats.bytesSent / 2 ** 20).toFixed(1)} MiB sent, `
        + `server step ${stats.ackedSteps.at(-1) ?? 0}${loss === undefined ? '' : `, loss ${loss.toFixed(4)}`}   `);
    },
  });
  process.stderr.write('\n');

  await mkdir(join(out, 'side_network'), { recursive: true });
  await writeFile(join(out, 'side_network', 'side_config.json'), `${JSON.stringify(sideNet.config, null, 2)}\n`);
  await writeFile(join(out, 'side_network', 'side_network.safetensors'), writeSafetensors(sideNet.tensors, { format: 'pt' }));
  await writeFile(join(out, 'test_predictions.json'), `${JSON.stringify(predictions)}\n`);
  summary.data = args.data;
  summary.bundle = args.bundle;
  await writeFile(join(out, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
  await savedJob.finished();
  const pct = (x) => `${(100 * x).toFixed(2)}%`;
  console.log(`zero-shot test accuracy ${pct(summary.zero_shot_test.accuracy)} → fine-tuned ${pct(summary.test.accuracy)} `
    + `(n ${summary.n_test}); ${summary.device_seconds_per_sample.toFixed(4)} s/sample on the device, `
    + `${Math.round(summary.bytes_per_sample)} bytes/sample; wrote ${out}`);
}

main().catch((err) => {
  const known = err instanceof MobillmError || err?.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || err?.code === 'ENOENT';
  console.error(`error: ${known ? err.message : err?.stack ?? err}`);
  process.exit(known ? 2 : 1);
});
