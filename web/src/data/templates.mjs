/**
 * Prompt templates for classification, as src/mobillm/data/templates.py: the text goes into `{text}`; the model
 * reads the prompt's last token, and the label words (each starting with a space) score the labels there.
 */

import { ConfigError } from '../exceptions.mjs';
import { compareCodePoints, pyRepr, pyStrip } from './python.mjs';

/** The placeholder for the text. */
export const TEXT_FIELD = '{text}';
/** The binary sentiment template. */
export const DEFAULT_TEMPLATE = 'Review: {text}\nSentiment (positive or negative):';
/** The binary sentiment label words. */
export const DEFAULT_LABEL_WORDS = Object.freeze([' negative', ' positive']);
const SENTIMENT_NAMES = new Set(['negative', 'neutral', 'positive']);

/** `template` holds `{text}` exactly once; `labelWords[i]` verbalises label `i`. */
export class PromptTemplate {
  /**
   * @param {string} [template]
   * @param {string[]} [labelWords]
   */
  constructor(template = DEFAULT_TEMPLATE, labelWords = [...DEFAULT_LABEL_WORDS]) {
    const problems = [];
    if (typeof template !== 'string') {
      problems.push(`template must be a string containing ${TEXT_FIELD}, got ${pyRepr(template)}`);
    } else if (template.split(TEXT_FIELD).length !== 2) {
      const found = template.split(TEXT_FIELD).length - 1;
      problems.push(`template must contain ${TEXT_FIELD} exactly once (found ${found}): ${pyRepr(template)}`);
    }
    if (!Array.isArray(labelWords) || !labelWords.every((w) => typeof w === 'string')) {
      problems.push(`label_words must be a list of strings, got ${pyRepr(labelWords)}`);
    } else {
      if (labelWords.length < 2) {
        problems.push(`label_words needs one word per label (at least two), got ${pyRepr(labelWords)}`);
      }
      if (labelWords.some((w) => !pyStrip(w))) problems.push(`label_words must not be empty or blank: ${pyRepr(labelWords)}`);
      if (new Set(labelWords).size !== labelWords.length) problems.push(`label_words must be distinct: ${pyRepr(labelWords)}`);
    }
    if (problems.length) throw new ConfigError(problems);
    this.template = template;
    this.labelWords = [...labelWords];
  }

  /** The template before `{text}`. */
  get prefix() {
    return this.template.split(TEXT_FIELD)[0];
  }

  /** The template after `{text}`: the cue whose last token the classifier reads. */
  get suffix() {
    return this.template.split(TEXT_FIELD)[1];
  }

  /** The number of labels. */
  get numLabels() {
    return this.labelWords.length;
  }

  /**
   * The prompt for `text` (braces in the text are kept as they are).
   * @param {string} text
   */
  format(text) {
    return this.prefix + text + this.suffix;
  }

  /**
   * ConfigError unless there is exactly one label word per label name; returns this.
   * @param {string[]} labelNames
   */
  checkLabels(labelNames) {
    if (this.labelWords.length !== labelNames.length) {
      throw new ConfigError(
        `label_words has ${this.labelWords.length} words ${pyRepr(this.labelWords)} but the data set has ` +
          `${labelNames.length} labels ${pyRepr(labelNames)}; give one word per label`,
      );
    }
    return this;
  }
}

/** "a", "a or b", "a, b or c". */
function listing(names) {
  return names.length === 1 ? names[0] : `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}`;
}

/**
 * A template listing the label names, with label words `" " + name`: exactly DEFAULT_TEMPLATE for binary
 * sentiment, `Review: {text}\nSentiment (a, b or c):` for other sentiment labels, `Text: {text}\nLabel (a, b or c):`
 * for any other labels.
 * @param {string[]} [labelNames]
 * @returns {PromptTemplate}
 */
export function defaultTemplate(labelNames = ['negative', 'positive']) {
  const names = [...labelNames];
  if (names.length < 2) {
    throw new ConfigError(`a classification template needs at least two label names, got ${pyRepr(names)}`);
  }
  const words = names.map((n) => ` ${n}`);
  const sorted = [...names].sort(compareCodePoints);
  if (sorted.length === 2 && sorted[0] === 'negative' && sorted[1] === 'positive') return new PromptTemplate(DEFAULT_TEMPLATE, words);
  if (names.every((n) => SENTIMENT_NAMES.has(n))) return new PromptTemplate(`Review: ${TEXT_FIELD}\nSentiment (${listing(names)}):`, words);
  return new PromptTemplate(`Text: ${TEXT_FIELD}\nLabel (${listing(names)}):`, words);
}
