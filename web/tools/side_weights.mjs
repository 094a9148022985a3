/** Reproducible side-network weights for the side network's tests and timings (test/sidenet.test.mjs, bench_sidenet.mjs). */

/** A seeded uniform generator in [-1, 1) (mulberry32). */
export function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  };
}

/**
 * The shape of one of a ladder's tensors, by its name (SideNetwork's modules), for `layers` taps of width `hidden`
 * and a side width `width`.
 */
export function ladderShape(name, { layers, hidden, width }) {
  if (name === 'gate') return [layers];
  if (name === 'up.weight') return [hidden, width];
  if (name === 'up.bias') return [hidden];
  if (/^down\.\d+\.weight$/.test(name)) return [width, hidden];
  if (name.endsWith('in_proj_weight')) return [3 * width, width];
  if (name.endsWith('in_proj_bias')) return [3 * width];
  return name.endsWith('weight') && !/norm1?\.weight$/.test(name) ? [width, width] : [width];
}
