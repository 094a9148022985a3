/**
 * The noise defence of src/mobillm/device/noise.py (`--noise SIGMA`), which the web device does not run yet.
 *
 * The Python device draws each sample's noise from numpy's `default_rng(HMAC-SHA256(secret, ...))`: SeedSequence
 * hashing, the PCG64 generator and numpy's float32 ziggurat tables. The same sample must carry the same draws on
 * every device and on every resend, so a JavaScript port would have to reproduce that stream bit for bit; until
 * it does, the web device refuses noise rather than add draws of its own.
 */
import { ConfigError } from '../exceptions.mjs';

/**
 * The device's noise for `--noise sigma`: `null` for 0 (no noise), the only strength the web device runs.
 *
 * @param {number} sigma the relative noise strength asked for
 * @returns {null}
 * @throws {ConfigError} for any other sigma: a positive one with the Python device as the way to run it
 */
export function deviceNoise(sigma) {
  if (sigma === 0) return null;
  if (!(typeof sigma === 'number' && sigma > 0 && Number.isFinite(sigma))) {
    throw new ConfigError(`noise: must be a number >= 0, got ${JSON.stringify(sigma)}; use 0 for no noise`);
  }
  throw new ConfigError(`noise ${sigma}: the web device does not add activation noise yet; run the Python device ` +
    `(\`mobillm device --noise ${sigma}\`) for the noise defence, or use noise 0`);
}
