/** Classification scores, as src/mobillm/metrics.py's classification_scores. */

/**
 * Accuracy next to balanced accuracy and the majority-class baseline, honest on imbalanced data.
 * @param {number[]} predictions class ids
 * @param {number[]} labels class ids
 * @param {number} numLabels
 */
export function classificationScores(predictions, labels, numLabels) {
  if (predictions.length !== labels.length) throw new RangeError(`${predictions.length} predictions for ${labels.length} labels`);
  if (labels.length === 0) return { accuracy: NaN, balanced_accuracy: NaN, majority_baseline: NaN, n: 0 };
  const hits = new Array(numLabels).fill(0);
  const counts = new Array(numLabels).fill(0);
  labels.forEach((y, i) => {
    counts[y] += 1;
    if (predictions[i] === y) hits[y] += 1;
  });
  const recalls = counts.flatMap((n, c) => (n ? [hits[c] / n] : []));
  return {
    accuracy: hits.reduce((a, b) => a + b, 0) / labels.length,
    balanced_accuracy: recalls.reduce((a, b) => a + b, 0) / recalls.length,
    majority_baseline: Math.max(...counts) / labels.length,
    n: labels.length,
  };
}
