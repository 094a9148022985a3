/**
 * Scoring one split batch by batch, as src/mobillm/scoring.py does for classification: per sample only the class
 * id is kept (and, for the caller that asks, the logits), so memory does not grow with the split beyond that.
 */
import { classificationScores } from './metrics.mjs';

/** Accumulates `(logits (B, C), labels, sample ids)` of a split's batches. */
export class Evaluator {
  /** @param {number} numLabels @param {{keepLogits?: boolean}} options keep each sample's logits (for a report) */
  constructor(numLabels, { keepLogits = false } = {}) {
    this.numLabels = numLabels;
    this.sampleIds = [];
    this.predictions = [];
    this.labels = [];
    this.logits = keepLogits ? [] : null;
  }

  /**
   * One batch.
   * @param {Float32Array} logits (B, C) row-major
   * @param {ArrayLike<number>} labels (B,)
   * @param {ArrayLike<number|bigint>} sampleIds (B,)
   */
  add(logits, labels, sampleIds) {
    const c = this.numLabels;
    for (let b = 0; b < labels.length; b += 1) {
      const row = logits.subarray(b * c, (b + 1) * c);
      let best = 0;
      for (let k = 1; k < c; k += 1) if (row[k] > row[best]) best = k; // the first maximum, as argmax
      this.predictions.push(best);
      this.labels.push(Number(labels[b]));
      this.sampleIds.push(Number(sampleIds[b]));
      this.logits?.push(Array.from(row));
    }
  }

  /** accuracy, balanced_accuracy, majority_baseline, n */
  scores() {
    return classificationScores(this.predictions, this.labels, this.numLabels);
  }

  /** The share of this split's predictions equal to another scorer's for the same sample (the server's eval ones). */
  agreement(sampleIds, predictions) {
    const theirs = new Map(sampleIds.map((id, i) => [Number(id), predictions[i]]));
    let same = 0;
    this.sampleIds.forEach((id, i) => { if (theirs.get(id) === this.predictions[i]) same += 1; });
    return same / Math.max(1, this.sampleIds.length);
  }
}
