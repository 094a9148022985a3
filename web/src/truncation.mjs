/**
 * Fitting a classification prompt into `maxLength` tokens by cutting its text, as src/mobillm/truncation.py:
 * both devices feed the backbone the same ids.
 */

import { ConfigError } from './exceptions.mjs';

/**
 * The error for a template that alone does not fit `maxLength`.
 * @param {number} maxLength
 * @param {number} fixed the template's tokens
 */
export function tooSmall(maxLength, fixed) {
  return new ConfigError(`max_length=${maxLength} leaves no room for text: the template alone takes ${fixed} tokens; ` +
    'raise max_length or shorten the template');
}

/**
 * `ids` of one tokenized prompt whose text spans characters [start, end), cut to `maxLength`: tokens are removed
 * from the text's end, so the template's prefix and cue survive. `offsets` (character offsets, in the same units
 * as start and end) and `special` (the special-tokens mask) come from the same tokenization as `ids`.
 * @param {number[]} ids
 * @param {[number, number][]} offsets
 * @param {number[]} special
 * @param {number} start
 * @param {number} end
 * @param {number} maxLength
 * @returns {number[]}
 */
export function cutText(ids, offsets, special, start, end, maxLength) {
  const n = ids.length;
  if (n <= maxLength) return [...ids];
  // [0, i): leading specials + prefix; [i, j): tokens touching the text; [j, n): suffix (+ specials)
  let i = 0;
  while (i < n && (special[i] || offsets[i][1] <= start)) i++;
  let j = i;
  while (j < n && !special[j] && offsets[j][1] <= end) j++;
  const keep = maxLength - i - (n - j);
  if (keep < 0) throw tooSmall(maxLength, i + n - j);
  return [...ids.slice(0, i + keep), ...ids.slice(j)];
}
