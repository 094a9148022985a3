import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import { PyRandom } from '../src/data/random.mjs';
import { sha512 } from '../src/data/sha512.mjs';

// Expected values printed by CPython 3.11's random.Random (tests/test_web_data.py compares many more).

test('integer seeds draw what Python draws', () => {
  const rng = new PyRandom(0);
  assert.deepEqual([rng.random(), rng.random(), rng.random()], [0.8444218515250481, 0.7579544029403025, 0.420571580830845]);
  const neg = new PyRandom(-5); // abs(seed), as CPython
  assert.equal(neg.randbelow(10 ** 6), 653159);
  assert.equal(neg.choice([...'abcdef']), 'c');
});

test('a seed wider than 32 bits and draws wider than 32 bits', () => {
  const rng = new PyRandom(2 ** 40 + 7);
  assert.deepEqual([rng.getrandbits(33), rng.getrandbits(33)], [6930804954, 7795006133]);
  assert.deepEqual(new PyRandom(2n ** 40n + 7n).getrandbits(33), 6930804954);
});

test('string seeds (SHA-512 of the UTF-8 bytes) shuffle and sample as Python', () => {
  assert.deepEqual(new PyRandom('mobillm-split:0').shuffle([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), [1, 0, 4, 2, 7, 9, 8, 5, 3, 6]);
  const population = Array.from({ length: 1000 }, (_, i) => i); // the set-based method of sample
  assert.deepEqual(new PyRandom('mobillm-subset:train:3').sample(population, 6), [820, 388, 91, 848, 636, 673]);
});

test('sample refuses more than the population', () => {
  assert.throws(() => new PyRandom(1).sample([1, 2], 3), RangeError);
});

test('sha512 equals node:crypto across block boundaries', () => {
  for (const n of [0, 3, 111, 112, 127, 128, 129, 300]) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37) % 256);
    assert.equal(Buffer.from(sha512(bytes)).toString('hex'), createHash('sha512').update(bytes).digest('hex'), `${n} bytes`);
  }
});
