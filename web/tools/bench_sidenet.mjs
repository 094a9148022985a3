/**
 * Developer tool: times the web device's local scoring of one batch — the side network's forward pass
 * (bundle/sidenet.mjs) and the activation codec's round trip (wire/codecs.mjs) — on a SmolLM2-135M-shaped side
 * network with random weights: hidden 576, the 6 default shortcut layers, width 64, 4 heads, bidirectional
 * attention blocks, an ensemble of 5 ladders (SideConfig's and the recipes' defaults), B 16 x T 128, codec nf4.
 * It prints the median wall and CPU seconds of `--repeat` runs of each step.
 *
 *   cd web && node tools/bench_sidenet.mjs [--repeat 5] [--block attention|mlp] [--members 5] [--codec nf4]
 *       [--min-length 128]
 *
 * `--min-length L` pads the batch as the tokenizer does: row lengths drawn from L..128, one row of 128 (the default,
 * 128, is no padding; the device's batches are as long as their longest prompt).
 *
 * The numpy side network (src/mobillm/bundle/sidenet.py) on the same shapes, for comparison (from the repository
 * root; one ladder's `hidden`, then the ensemble's `classify`, in wall seconds; prefix OPENBLAS_NUM_THREADS=1 to
 * compare one thread with one thread):
 *
 *   .venv/bin/python -c "import time, numpy as np; from mobillm.bundle.sidenet import NpSideNetwork as N
 *   H, r, M, B, T, K = 576, 64, 6, 16, 128, 5; g = np.random.default_rng(0)
 *   shapes = lambda i: {f'down.{i}.weight': (r, H), f'down.{i}.bias': (r,), **{f'blocks.{i}.{n}': s for n, s in
 *     [('norm1.weight', (r,)), ('norm1.bias', (r,)), ('attn.in_proj_weight', (3*r, r)), ('attn.in_proj_bias', (3*r,)),
 *      ('attn.out_proj.weight', (r, r)), ('attn.out_proj.bias', (r,)), ('mlp.norm.weight', (r,)), ('mlp.norm.bias', (r,)),
 *      ('mlp.mlp.0.weight', (r, r)), ('mlp.mlp.0.bias', (r,)), ('mlp.mlp.3.weight', (r, r)), ('mlp.mlp.3.bias', (r,))]}}
 *   one = {'gate': (M,), 'up.weight': (H, r), 'up.bias': (H,)}; [one.update(shapes(i)) for i in range(M)]
 *   w = lambda s: (g.uniform(-1, 1, s) / np.sqrt(s[-1])).astype(np.float32)
 *   state = {f'members.{j}.{n}': w(s) for j in range(K) for n, s in one.items()}
 *   net = N(dict(shortcuts=list(range(M)), width=r, attention_heads=4, bidirectional=True, members=K), state)
 *   x = g.standard_normal((B, T, M, H)).astype(np.float32); mask = np.ones((B, T), np.int64); last = np.full(B, T - 1)
 *   head = g.standard_normal((H, 2)).astype(np.float32)
 *   def t(f): f(); s = time.perf_counter(); [f() for _ in range(5)]; return (time.perf_counter() - s) / 5
 *   print('hidden', t(lambda: net.members[0].hidden(x, mask)), 'classify', t(lambda: net.classify(x, mask, last, lambda h: h @ head)))"
 */
import { parseArgs } from 'node:util';

import { SideNetwork } from '../src/bundle/sidenet.mjs';
import { getCodec } from '../src/wire/codecs.mjs';
import { int64, tensor } from '../src/wire/tensor.mjs';
import { stackLayers } from '../src/recipes/bundle_device.mjs';
import { ladderShape, random } from './side_weights.mjs';

const H = 576;
const WIDTH = 64;
const LAYERS = 6;
const B = 16;
const T = 128;

const { values: args } = parseArgs({
  options: {
    repeat: { type: 'string', default: '5' },
    block: { type: 'string', default: 'attention' },
    members: { type: 'string', default: '5' },
    codec: { type: 'string', default: 'nf4' },
    'min-length': { type: 'string', default: String(T) },
  },
});

/** The shape of one of a ladder's tensors, by its name (SideNetwork's modules). */
function shapeOf(name) {
  return ladderShape(name, { layers: LAYERS, hidden: H, width: WIDTH });
}

/** A random F32 tensor of `shape`, uniform in +-1/sqrt(fan-in) (nn.Linear's scale), from `next`. */
function randomTensor(shape, next) {
  const n = shape.reduce((a, b) => a * b, 1);
  const scale = 1 / Math.sqrt(shape.at(-1));
  return tensor('F32', shape, Float32Array.from({ length: n }, () => scale * next()));
}

/**
 * `fn()`'s median wall and CPU (user + system) seconds over `repeat` runs after one warm-up (awaited when it is
 * async). The CPU time is the steadier figure on a shared machine (the JavaScript runs on one thread), from a tenth
 * of a second up: the system counts it in clock ticks.
 */
async function time(fn, repeat) {
  await fn();
  const wall = [];
  const cpu = [];
  for (let i = 0; i < repeat; i++) {
    const started = performance.now();
    const usage = process.cpuUsage();
    await fn();
    const used = process.cpuUsage(usage);
    wall.push((performance.now() - started) / 1000);
    cpu.push((used.user + used.system) / 1e6);
  }
  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
  return { wall: median(wall), cpu: median(cpu) };
}

const repeat = Number(args.repeat);
const members = Number(args.members);
const config = {
  hidden_size: H, shortcuts: Array.from({ length: LAYERS }, (_, i) => i + 1), width: WIDTH, block: args.block,
  attention_heads: 4, bidirectional: args.block === 'attention', members,
};
const next = random(1);
const names = SideNetwork.tensorNames(config);
const state = {};
for (let j = 0; j < members; j++) for (const n of names) state[members === 1 ? n : `members.${j}.${n}`] = randomTensor(shapeOf(n), next);
const net = new SideNetwork(config, state);
const ladder = net.members?.[0] ?? net;

// the per-batch taps: one (B, T, H) tensor per shortcut layer (the pivot token only for token-wise blocks)
const lead = ladder.tokenWise ? [B] : [B, T];
const taps = Array.from({ length: LAYERS }, () => randomTensor([...lead, H], () => 3 * next()));
const minLength = Number(args['min-length']);
const lengths = Array.from({ length: B }, (_, b) => (b === 0 ? T : minLength + Math.floor(((T - minLength + 1) * (next() + 1)) / 2)));
const mask = int64(lengths.flatMap((n) => Array.from({ length: T }, (_, t) => (t < n ? 1 : 0))), [B, T]);
const last = int64(lengths.map((n) => n - 1));
const head = randomTensor([2, H], next).data;
/** A stand-in for the bundle's label rows: (N, H) -> (N, 2) logits of a random head. */
function labelLogits(hidden) {
  const rows = hidden.shape[0];
  const out = new Float32Array(rows * 2);
  for (let n = 0; n < rows; n++) {
    for (let c = 0; c < 2; c++) for (let k = 0; k < H; k++) out[n * 2 + c] += hidden.data[n * H + k] * head[c * H + k];
  }
  return tensor('F32', [rows, 2], out);
}

const codec = getCodec(args.codec);
const encoded = taps.map((t) => codec.encode(t));
const acts = stackLayers(encoded.map((e) => codec.decode(e)));
const attentionMask = ladder.tokenWise ? null : mask;

const tokens = ladder.tokenWise ? '' : `, ${lengths.reduce((a, n) => a + n, 0)} real tokens`;
console.log(`side network: block ${args.block}, ${members} ladder(s), H ${H}, ${LAYERS} layers, r ${WIDTH}; `
  + `acts [${acts.shape}]${tokens}; node ${process.version}`);
const results = {
  [`${args.codec} encode (${LAYERS} layers)`]: await time(() => taps.map((t) => codec.encode(t)), repeat),
  [`${args.codec} decode + stack`]: await time(() => stackLayers(encoded.map((e) => codec.decode(e))), repeat),
  'hidden (one ladder)': await time(() => ladder.hidden(acts, attentionMask), repeat),
  [`classify (${members} ladder(s))`]: await time(() => net.classify(acts, attentionMask, last, labelLogits), repeat),
};
console.log(`${'step'.padEnd(28)}   wall s    cpu s`);
for (const [step, { wall, cpu }] of Object.entries(results)) {
  console.log(`${step.padEnd(28)} ${wall.toFixed(4).padStart(8)} ${cpu.toFixed(4).padStart(8)}`);
}
