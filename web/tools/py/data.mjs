/**
 * Driver for tests/test_web_data.py: reads a JSON request on stdin, writes what the web device's data code makes
 * of it as JSON on stdout.
 *
 *   node data.mjs random   {"seeds": [0, "text", {"int": "123456789012345678901"}]}  -> the generators' draws
 *   node data.mjs dataset  {"path", "options", "batchSize", "epochs", "tokenizer"?, "padId"?, "maxLength"?}
 *                          -> splits, label names, notes, template, batch orders (and each batch's padded prompts)
 *   node data.mjs offsets  {"tokenizer", "texts"} -> encodeWithOffsets of each text
 */

import { readFile } from 'node:fs/promises';

import { BundleTokenizer } from '../../src/bundle/tokenizer.mjs';
import { MobillmError } from '../../src/exceptions.mjs';
import { readDataSource } from '../../src/data/node_files.mjs';
import { batchChunks } from '../../src/data/order.mjs';
import { PyRandom } from '../../src/data/random.mjs';
import { loadDataset } from '../../src/data/sources.mjs';
import { defaultTemplate } from '../../src/data/templates.mjs';

/** The draws test_web_data.py asks Python's random.Random for, in the same order. */
function draws(seed) {
  const rng = new PyRandom(typeof seed === 'object' ? BigInt(seed.int) : seed);
  const range = (n) => Array.from({ length: n }, (_, i) => i);
  return {
    random: range(5).map(() => rng.random()),
    getrandbits: [1, 7, 31, 32, 33, 53].map((k) => rng.getrandbits(k)),
    randbelow: [1, 2, 3, 10, 1000, 2 ** 31 + 5].map((n) => rng.randbelow(n)),
    shuffle: rng.shuffle(range(20)),
    sample: [[10, 3], [30, 10], [100, 8], [1000, 50]].map(([n, k]) => rng.sample(range(n), k)),
    choice: rng.choice(['a', 'b', 'c', 'd', 'e']),
  };
}

/** Plain arrays of a TokenBatch's tensors. */
function plainBatch(batch) {
  const rows = (t) => {
    const [b, w] = t.shape;
    return Array.from({ length: b }, (_, i) => Array.from(t.data.subarray(i * w, (i + 1) * w), Number));
  };
  return { inputIds: rows(batch.inputIds), attentionMask: rows(batch.attentionMask), lastIndex: Array.from(batch.lastIndex.data, Number) };
}

/** Each split's batch orders and, with a tokenizer, the padded prompts of every batch. */
function batches(data, template, { batchSize, epochs, seed = 0 }, tokenizer, maxLength) {
  const orders = {
    train: Array.from({ length: epochs }, (_, epoch) => [...batchChunks(data.train.length, batchSize, { shuffle: true, seed, epoch })]),
    validation: [[...batchChunks(data.validation.length, batchSize, { shuffle: false, seed })]],
    test: [[...batchChunks(data.test.length, batchSize, { shuffle: false, seed })]],
  };
  if (!tokenizer) return { orders };
  const prompts = Object.fromEntries(Object.entries(orders).map(([split, epochOrders]) => [split, epochOrders.map((chunks) => chunks.map((chunk) => {
    const texts = chunk.map((i) => data[split][i].text);
    return plainBatch(tokenizer.pad(tokenizer.promptIds(template.prefix, texts, template.suffix, maxLength)));
  }))]));
  return { orders, prompts };
}

async function dataset(request) {
  const data = loadDataset(await readDataSource(request.path), request.options ?? {});
  const template = defaultTemplate(data.labelNames);
  const tokenizer = request.tokenizer ? BundleTokenizer.fromJSON(await readFile(request.tokenizer, 'utf8'), request.padId) : null;
  return {
    name: data.name, labelNames: data.labelNames, notes: data.notes,
    train: data.train, validation: data.validation, test: data.test,
    template: template.template, labelWords: template.labelWords,
    ...batches(data, template, { ...request, seed: request.options?.seed }, tokenizer, request.maxLength),
  };
}

async function offsets({ tokenizer, texts }) {
  const tok = BundleTokenizer.fromJSON(await readFile(tokenizer, 'utf8'), 0);
  return texts.map((t) => tok.encodeWithOffsets(t));
}

const COMMANDS = { random: ({ seeds }) => seeds.map(draws), dataset, offsets };

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));
try {
  process.stdout.write(JSON.stringify(await COMMANDS[process.argv[2]](request)));
} catch (err) {
  if (!(err instanceof MobillmError)) throw err;
  process.stdout.write(JSON.stringify({ error: err.name, message: err.message }));
}
