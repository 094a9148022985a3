/**
 * web/src/bundle/sidenet.mjs on its own: the erf approximation, a stable log-softmax, what the side network's
 * structure guarantees (a zero `up` returns the top tap; causal attention never looks ahead; an ensemble of equal
 * ladders is that ladder) and its refusals. tests/test_web_bundle.py holds it equal to the numpy side network.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { SideNetwork, erf, gelu, logSoftmax } from '../src/bundle/sidenet.mjs';
import { ConfigError } from '../src/exceptions.mjs';
import { int64, tensor } from '../src/wire/tensor.mjs';
import { ladderShape, random } from '../tools/side_weights.mjs';

const H = 8;
const WIDTH = 4;

function randomTensor(shape, next) {
  const n = shape.reduce((a, b) => a * b, 1);
  return tensor('F32', shape, Float32Array.from({ length: n }, next));
}

/** The shape of one of a ladder's tensors, by its name (SideNetwork's modules). */
function shapeOf(name, M) {
  return ladderShape(name, { layers: M, hidden: H, width: WIDTH });
}

function config(extra = {}) {
  return { hidden_size: H, shortcuts: [1, 2], width: WIDTH, block: 'attention', attention_heads: 2, ...extra };
}

/** Random tensors for every name a ladder of `cfg` reads (under `prefix`, for an ensemble's members). */
function randomState(cfg, seed = 1, prefix = '') {
  const next = random(seed);
  return Object.fromEntries(SideNetwork.tensorNames(cfg).map((n) => [prefix + n, randomTensor(shapeOf(n, cfg.shortcuts.length), next)]));
}

function acts(B, T, seed = 7) {
  return randomTensor(T === null ? [B, 2, H] : [B, T, 2, H], (() => { const n = random(seed); return () => 3 * n(); })());
}

describe('erf and gelu', () => {
  it('erf equals known values within the approximation bound (1.5e-7)', () => {
    const known = [[0, 0], [0.1, 0.1124629160], [0.5, 0.5204998778], [1, 0.8427007929], [1.5, 0.9661051465],
      [2, 0.9953222650], [3, 0.9999779095], [6, 1]];
    for (const [x, want] of known) {
      assert.ok(Math.abs(erf(x) - want) <= 1.5e-7, `erf(${x}) = ${erf(x)}, want ${want}`);
      assert.equal(erf(-x), -erf(x));
    }
  });

  it('gelu is the exact (erf) form, not the tanh one', () => {
    assert.equal(gelu(0), 0);
    assert.ok(Math.abs(gelu(1) - 0.8413447461) < 2e-7);
    assert.ok(Math.abs(gelu(-1) + 0.1586552539) < 2e-7);
    const tanhForm = (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
    assert.ok(Math.abs(gelu(2.5) - tanhForm(2.5)) > 1e-5);
    assert.equal(gelu(-40), -0);
  });
});

describe('logSoftmax', () => {
  it('stays finite and exact for huge and tiny logits, row by row', () => {
    const out = logSoftmax(Float32Array.from([1000, 1001, 1002, -1000, 0, -1e30]), 3);
    const want = [-2.4076059, -1.4076059, -0.4076059, -1000, 0, -1e30];
    out.forEach((v, i) => assert.ok(Math.abs(v - want[i]) <= 1e-6 * Math.max(1, Math.abs(want[i])), `${i}: ${v}`));
    for (const row of [0, 3]) {
      const sum = out.subarray(row, row + 3).reduce((a, v) => a + Math.exp(v), 0);
      assert.ok(Math.abs(sum - 1) < 1e-6);
    }
  });
});

describe('SideNetwork', () => {
  it('returns the top tap when up is zero (a fresh side network reads the bare backbone)', () => {
    const cfg = config();
    const state = randomState(cfg);
    state['up.weight'].data.fill(0);
    state['up.bias'].data.fill(0);
    const x = acts(2, 3);
    const hidden = new SideNetwork(cfg, state).hidden(x, int64([1, 1, 1, 1, 1, 0], [2, 3]));
    assert.deepEqual(hidden.shape, [2, 3, H]);
    for (let n = 0; n < 6; n++) {
      assert.deepEqual(hidden.data.subarray(n * H, (n + 1) * H), x.data.subarray((2 * n + 1) * H, (2 * n + 2) * H));
    }
  });

  for (const bidirectional of [false, true]) {
    it(`${bidirectional ? 'bidirectional' : 'causal'} attention ${bidirectional ? 'reads' : 'never reads'} later tokens`, () => {
      const cfg = config({ bidirectional });
      const net = new SideNetwork(cfg, randomState(cfg));
      const x = acts(1, 4);
      const before = net.hidden(x).data.slice(0, 3 * H); // positions 0..2
      x.data.fill(5, 3 * 2 * H); // change position 3 only
      const after = net.hidden(x).data.slice(0, 3 * H);
      const changed = before.some((v, i) => Math.abs(v - after[i]) > 1e-4);
      assert.equal(changed, bidirectional);
    });
  }

  it('ignores padded keys: a padded position\'s acts change nothing at the real ones', () => {
    const cfg = config({ bidirectional: true });
    const net = new SideNetwork(cfg, randomState(cfg));
    const x = acts(1, 3);
    const mask = int64([1, 1, 0], [1, 3]);
    const before = net.hidden(x, mask).data.slice(0, 2 * H);
    x.data.fill(-7, 2 * 2 * H);
    assert.deepEqual(net.hidden(x, mask).data.slice(0, 2 * H), before);
  });

  it('an ensemble of equal ladders scores as that ladder (log of its probabilities)', async () => {
    const cfg = config({ block: 'mlp' });
    const one = randomState(cfg, 3);
    const members = { ...Object.fromEntries(Object.entries(one).flatMap(([n, t]) => [[`members.0.${n}`, t], [`members.1.${n}`, t]])) };
    const head = (hidden) => tensor('F32', [hidden.shape[0], 2], Float32Array.from({ length: 2 * hidden.shape[0] }, (_, i) => hidden.data[i] * 3));
    const x = acts(3, null);
    const single = await new SideNetwork(cfg, one).classify(x, null, null, head);
    const ensemble = await new SideNetwork({ ...cfg, members: 2 }, members).classify(x, null, null, head);
    const want = logSoftmax(single.data, 2);
    ensemble.data.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < 1e-6, `${v} vs ${want[i]}`));
  });

  it('classifies every position at each row\'s pivot token', async () => {
    const cfg = config();
    const net = new SideNetwork(cfg, randomState(cfg));
    const x = acts(2, 3);
    const mask = int64([1, 1, 1, 1, 1, 0], [2, 3]);
    const hidden = net.hidden(x, mask);
    const seen = [];
    await net.classify(x, mask, int64([2, 1]), (h) => { seen.push(h); return h; });
    assert.deepEqual(seen[0].shape, [2, H]);
    assert.deepEqual(seen[0].data.subarray(0, H), hidden.data.subarray(2 * H, 3 * H));
    assert.deepEqual(seen[0].data.subarray(H), hidden.data.subarray(4 * H, 5 * H));
  });

  for (const bidirectional of [false, true]) {
    it(`classifies a padded batch as hidden() reads it at the pivots, to the bit (${bidirectional ? 'bidirectional' : 'causal'})`, async () => {
      // classify runs the real tokens and the pivots only: a padded tail, a hole, a pivot on padding, no padding
      const cfg = config({ bidirectional });
      const net = new SideNetwork(cfg, randomState(cfg));
      const x = acts(3, 5);
      const mask = int64([1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1], [3, 5]);
      const hidden = net.hidden(x, mask);
      const seen = [];
      await net.classify(x, mask, int64([2, 4, 4]), (h) => { seen.push(h); return h; });
      [2, 9, 14].forEach((row, b) => assert.deepEqual(seen[0].data.subarray(b * H, (b + 1) * H), hidden.data.subarray(row * H, (row + 1) * H)));
    });
  }

  it('refuses what it cannot run, saying what to do', async () => {
    const cfg = config();
    const state = randomState(cfg);
    assert.throws(() => new SideNetwork(config({ block: 'lstm' }), state), /runs 'mlp' and 'attention' blocks/);
    const noGate = { ...state };
    delete noGate.gate;
    assert.throws(() => new SideNetwork(cfg, { ...noGate, 'up.bias': { ...state['up.bias'], dtype: 'F16' } }),
      (err) => err instanceof ConfigError && /missing: gate/.test(err.message) && /must be F32, got up.bias \(F16\)/.test(err.message));
    const net = new SideNetwork(cfg, state);
    assert.throws(() => net.hidden(acts(2, null)), /needs every position/);
    assert.throws(() => net.hidden(randomTensor([1, 2, 3, H], Math.random)), /expected \(\.\.\., 2, H\)/);
    await assert.rejects(net.classify(acts(1, 2), null, null, (h) => h), /need lastIndex/);
    await assert.rejects(net.classify(acts(1, 2), null, [5], (h) => h), /lastIndex\[0\] = 5 is outside 0\.\.1/);
    const ensemble = new SideNetwork({ ...cfg, members: 2 }, { ...randomState(cfg, 1, 'members.0.'), ...randomState(cfg, 2, 'members.1.') });
    assert.throws(() => ensemble.hidden(acts(1, 2)), /ensemble of 2 ladders has no single hidden state: use classify/);
  });
});
