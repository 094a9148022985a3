/** How the device page writes figures: sizes, durations, shares, and the time a job has left. */

/** `bytes` as B / KB / MB (powers of 1000, as phones show sizes). */
export function formatBytes(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} KB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** `seconds` as "45 s", "3 min 20 s" or "1 h 5 min". */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** A share in [0, 1] as a percentage with one decimal. */
export function percent(share) {
  return `${(100 * share).toFixed(1)}%`;
}

/**
 * Seconds left when `done` of `total` units took `elapsed` seconds at a steady rate; null before anything is done
 * (no rate yet).
 */
export function timeLeft(elapsed, done, total) {
  if (done <= 0) return null;
  return (elapsed / done) * Math.max(0, total - done);
}

/** Softmax of a row of logits (probabilities of the labels). */
export function softmax(logits) {
  const max = Math.max(...logits);
  const exps = logits.map((x) => Math.exp(x - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

/**
 * The samples in the first `batches` batches of a job whose sources (the validation split, then each device
 * epoch's training split) hold `sizes` samples, cut in batches of `batchSize` (the last of each source short): what
 * a resumed job did not tap again because the server held it.
 * @param {number} batches
 * @param {number[]} sizes
 * @param {number} batchSize
 */
export function samplesInBatches(batches, sizes, batchSize) {
  let left = batches;
  let samples = 0;
  for (const size of sizes) {
    const whole = Math.min(left, Math.ceil(size / batchSize));
    samples += Math.min(size, whole * batchSize);
    left -= whole;
  }
  return samples;
}
