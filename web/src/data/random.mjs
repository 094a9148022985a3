/**
 * Python's `random.Random`, bit for bit: the Mersenne Twister (MT19937) seeded as CPython 3.11 seeds it, and the
 * methods the data code calls (`random`, `getrandbits`, `randbelow`, `shuffle`, `sample`, `choice`), so the
 * splits, subsets and batch orders of src/mobillm/data/ come out the same in JavaScript.
 *
 * Seeds: an integer (a number or a BigInt; its absolute value, as CPython) or a string (CPython's version-2
 * seeding: the UTF-8 bytes followed by their SHA-512 digest, read as one big-endian integer).
 */

import { sha512 } from './sha512.mjs';

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

/** A seeded generator with the state and methods of CPython's `random.Random`. */
export class PyRandom {
  /** @param {number | bigint | string} seed as `random.Random(seed)` */
  constructor(seed) {
    this.mt = new Uint32Array(N);
    this.index = N;
    initByArray(this, seedKey(seed));
  }

  /** The next 32 random bits (CPython's `genrand_uint32`). */
  nextUint32() {
    if (this.index >= N) {
      twist(this.mt);
      this.index = 0;
    }
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A float in [0, 1) with 53 random bits, as `random()`. */
  random() {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /**
   * A non-negative integer of `k` random bits, as `getrandbits(k)`: 32-bit words, least significant first, the
   * last one keeping its top bits. Only up to 53 bits, which a JavaScript number holds exactly.
   * @param {number} k
   */
  getrandbits(k) {
    if (!Number.isInteger(k) || k < 0 || k > 53) throw new RangeError(`getrandbits(k) needs 0 <= k <= 53, got ${k}`);
    if (k === 0) return 0;
    if (k <= 32) return this.nextUint32() >>> (32 - k);
    const low = this.nextUint32();
    const high = this.nextUint32() >>> (64 - k);
    return high * 4294967296 + low;
  }

  /**
   * An integer in [0, n), as `_randbelow` (getrandbits of n's bit length, redrawn until below n).
   * @param {number} n a positive integer below 2**53
   */
  randbelow(n) {
    const k = bitLength(n);
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /**
   * Shuffle `items` in place, as `shuffle(x)`.
   * @template T
   * @param {T[]} items
   * @returns {T[]} items
   */
  shuffle(items) {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.randbelow(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }

  /**
   * `k` distinct elements of `population` in selection order, as `sample(population, k)` (the pool method for a
   * small population, the set method for a large one, chosen as CPython chooses).
   * @template T
   * @param {T[]} population
   * @param {number} k
   * @returns {T[]}
   */
  sample(population, k) {
    const n = population.length;
    if (!Number.isInteger(k) || k < 0 || k > n) throw new RangeError(`sample larger than population or negative: ${k} of ${n}`);
    let setsize = 21;
    if (k > 5) setsize += 4 ** Math.ceil(Math.log(k * 3) / Math.log(4));
    const result = [];
    if (n <= setsize) {
      const pool = [...population];
      for (let i = 0; i < k; i++) {
        const j = this.randbelow(n - i);
        result.push(pool[j]);
        pool[j] = pool[n - i - 1];
      }
      return result;
    }
    const selected = new Set();
    for (let i = 0; i < k; i++) {
      let j = this.randbelow(n);
      while (selected.has(j)) j = this.randbelow(n);
      selected.add(j);
      result.push(population[j]);
    }
    return result;
  }

  /**
   * One element of a non-empty `items`, as `choice(seq)`.
   * @template T
   * @param {T[]} items
   * @returns {T}
   */
  choice(items) {
    if (items.length === 0) throw new RangeError('cannot choose from an empty sequence');
    return items[this.randbelow(items.length)];
  }
}

/** Bits needed for `n` (Python's `int.bit_length`). */
function bitLength(n) {
  let bits = 0;
  for (let x = n; x > 0; x = Math.floor(x / 2)) bits++;
  return bits;
}

/** The 32-bit words, least significant first, of the seed's integer (CPython's `random_seed`). */
function seedKey(seed) {
  if (typeof seed === 'string') return bytesKey([...new TextEncoder().encode(seed), ...sha512(new TextEncoder().encode(seed))]);
  if (typeof seed === 'number' && !Number.isSafeInteger(seed)) {
    throw new TypeError(`a numeric seed must be a safe integer (or a BigInt), got ${seed}`);
  }
  if (typeof seed !== 'number' && typeof seed !== 'bigint') throw new TypeError(`seed must be an integer or a string, got ${typeof seed}`);
  let value = BigInt(seed);
  if (value < 0n) value = -value;
  const key = [];
  for (; value > 0n; value >>= 32n) key.push(Number(value & 0xffffffffn));
  return key.length ? key : [0];
}

/** The words of a big-endian byte string's integer, least significant first (leading zero bytes dropped). */
function bytesKey(bytes) {
  const key = [];
  for (let end = bytes.length; end > 0; end -= 4) {
    let word = 0;
    for (let i = Math.max(0, end - 4); i < end; i++) word = (word * 256 + bytes[i]) >>> 0;
    key.push(word);
  }
  while (key.length > 1 && key[key.length - 1] === 0) key.pop();
  return key;
}

/** CPython's `init_genrand`. */
function initGenrand(state, s) {
  const mt = state.mt;
  mt[0] = s >>> 0;
  for (let i = 1; i < N; i++) {
    const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
    mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
  }
  state.index = N;
}

/** CPython's `init_by_array`. */
function initByArray(state, key) {
  initGenrand(state, 19650218);
  const mt = state.mt;
  let i = 1;
  let j = 0;
  for (let k = Math.max(N, key.length); k > 0; k--) {
    const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
    mt[i] = ((mt[i] ^ Math.imul(prev, 1664525)) + key[j] + j) >>> 0;
    i++;
    j++;
    if (i >= N) {
      mt[0] = mt[N - 1];
      i = 1;
    }
    if (j >= key.length) j = 0;
  }
  for (let k = N - 1; k > 0; k--) {
    const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
    mt[i] = ((mt[i] ^ Math.imul(prev, 1566083941)) - i) >>> 0;
    i++;
    if (i >= N) {
      mt[0] = mt[N - 1];
      i = 1;
    }
  }
  mt[0] = 0x80000000;
}

/** Regenerate all N words of the state (the refill in CPython's `genrand_uint32`). */
function twist(mt) {
  for (let kk = 0; kk < N; kk++) {
    const y = (mt[kk] & UPPER_MASK) | (mt[(kk + 1) % N] & LOWER_MASK);
    mt[kk] = mt[(kk + M) % N] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
  }
}
