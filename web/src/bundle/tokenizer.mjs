/**
 * The bundle's `tokenizer.json` with the torch batcher's conventions, as `BundleTokenizer` in
 * src/mobillm/bundle/runtime.py: special tokens added, prompts cut to `maxLength` from their text's end
 * (truncation.mjs), right padding with `padId`.
 *
 * Tokenization is @huggingface/tokenizers' (pure JavaScript), with two of its pre-tokenizers replaced by ones
 * that split as the Rust library does (`Whitespace`: Unicode word characters; `Punctuation`: each mark on its
 * own), and WordLevel's unknown token taken from tokenizer.json. That library gives no character offsets, which
 * cutting a prompt needs: `encodeWithOffsets` aligns the tokens with the text itself (byte-level BPE: each
 * token's bytes in turn; other models: each token's surface in the text), in code points as Python counts them.
 */

import {
  PreTokenizer, PunctuationPreTokenizer, SequencePreTokenizer, Tokenizer, WhitespacePreTokenizer,
} from '@huggingface/tokenizers';

import { ConfigError } from '../exceptions.mjs';
import { cutText } from '../truncation.mjs';
import { tensor } from '../wire/tensor.mjs';

/** Rust's `\w` (Unicode word characters) and `\s`, as the Whitespace pre-tokenizer's regex reads them. */
const WORD = '\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}';
const WORDS = new RegExp(`[${WORD}]+|[^${WORD}\\p{White_Space}]+`, 'gu');
const UTF8 = new TextEncoder();
/** Rust's `is_punc`: ASCII punctuation or a Unicode punctuation category. */
const PUNCTUATION = /[\p{P}!-/:-@[-`{-~]|[^\p{P}!-/:-@[-`{-~]+/gu;

/** The Whitespace pre-tokenizer as Rust splits: `\w+|[^\w\s]+` with Unicode classes. */
class WordSplit extends PreTokenizer {
  pre_tokenize_text(text) {
    return text.match(WORDS) ?? [];
  }
}

/** The Punctuation pre-tokenizer with Rust's default behaviour (Isolated): each punctuation mark a piece. */
class IsolatedPunctuation extends PreTokenizer {
  pre_tokenize_text(text) {
    return text.match(PUNCTUATION) ?? [];
  }
}

/** `pre` with the library's Whitespace and Isolated Punctuation pre-tokenizers swapped for Rust-faithful ones. */
function faithful(pre) {
  if (pre instanceof SequencePreTokenizer) {
    pre.tokenizers = pre.tokenizers.map(faithful);
    return pre;
  }
  if (pre instanceof WhitespacePreTokenizer) return new WordSplit();
  if (pre instanceof PunctuationPreTokenizer && (pre.config.behavior ?? 'Isolated') === 'Isolated') return new IsolatedPunctuation();
  return pre;
}

/** Whether a pre-tokenizer config (or one inside a Sequence) is ByteLevel: tokens are then one char per byte. */
function isByteLevel(config) {
  if (!config) return false;
  return config.type === 'ByteLevel' || (config.pretokenizers ?? []).some(isByteLevel);
}

/** A map from each UTF-16 index of `text` (and its length) to the number of code points before it. */
function codePointIndex(text) {
  const index = [];
  let points = 0;
  for (let u = 0; u < text.length; u++, points++) {
    index.push(points);
    const c = text.charCodeAt(u);
    if (c >= 0xd800 && c <= 0xdbff && (text.charCodeAt(u + 1) & 0xfc00) === 0xdc00) {
      index.push(points); // the low surrogate, inside the character
      u++;
    }
  }
  index.push(points);
  return index;
}

/** For each byte of `text`'s UTF-8, the UTF-16 span [start, end) of the character it belongs to. */
function byteSpans(text) {
  const spans = [];
  for (let u = 0; u < text.length;) {
    const c = text.codePointAt(u);
    const units = c > 0xffff ? 2 : 1;
    const bytes = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    for (let b = 0; b < bytes; b++) spans.push([u, u + units]);
    u += units;
  }
  return spans;
}

/**
 * @typedef {{inputIds: object, attentionMask: object, lastIndex: object}} TokenBatch `inputIds` and
 *   `attentionMask` (1 = real token) of shape [B, T], `lastIndex` [B]: each row's last real token
 */

/** tokenizer.json with the Python bundle device's conventions. */
export class BundleTokenizer {
  /**
   * @param {object} json the parsed tokenizer.json
   * @param {number} padId the id padding fills with (bundle.json's pad_token_id)
   */
  constructor(json, padId) {
    // the library's fallback model (WordLevel) reads its unknown token from tokenizer_config.json, which a bundle lacks
    this.tokenizer = new Tokenizer(json, { unk_token: json.model?.unk_token });
    this.tokenizer.pre_tokenizer = faithful(this.tokenizer.pre_tokenizer);
    this.padId = padId;
    this.byteLevel = isByteLevel(json.pre_tokenizer);
    this.hasNormalizer = Boolean(json.normalizer);
    this.addedContents = new Set([...this.tokenizer.get_added_tokens_decoder().values()].map((t) => t.content));
    this.subwordPrefix = json.model?.continuing_subword_prefix ?? null;
  }

  /**
   * A tokenizer from tokenizer.json's text (or its parsed object).
   * @param {string | object} json
   * @param {number} padId
   */
  static fromJSON(json, padId) {
    return new BundleTokenizer(typeof json === 'string' ? JSON.parse(json) : json, padId);
  }

  /**
   * The ids of `text`.
   * @param {string} text
   * @param {boolean} [addSpecialTokens]
   * @returns {number[]}
   */
  encode(text, addSpecialTokens = true) {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /**
   * The text of `ids`, special tokens skipped.
   * @param {number[]} ids
   */
  decode(ids) {
    if (!ids.length) return '';
    return this.tokenizer.decode([...ids], { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  /**
   * The ids of `text` with Python's character offsets (code points) and special-tokens mask (1 for the tokens
   * the post-processor adds). ConfigError when the tokens cannot be aligned with the text.
   * @param {string} text
   * @returns {{ids: number[], offsets: [number, number][], special: number[]}}
   */
  encodeWithOffsets(text) {
    const full = this.tokenizer.encode(text, { add_special_tokens: true });
    const plain = this.tokenizer.encode(text, { add_special_tokens: false }).tokens;
    const lead = leadingSpecials(full.tokens, plain);
    const spans = this.spans(text, plain);
    const points = codePointIndex(text);
    const special = full.ids.map((_, k) => (k < lead || k >= lead + plain.length ? 1 : 0));
    const offsets = full.ids.map((_, k) => (special[k] ? [0, 0] : spans[k - lead].map((u) => points[u])));
    return { ids: full.ids, offsets, special };
  }

  /** UTF-16 spans of `tokens` (no specials) in `text`. */
  spans(text, tokens) {
    if (this.hasNormalizer && this.tokenizer.normalizer(text) !== text) {
      throw new ConfigError('this tokenizer normalizes the text, so its tokens cannot be traced back to the text');
    }
    return this.byteLevel ? this.byteLevelSpans(text, tokens) : this.surfaceSpans(text, tokens);
  }

  /** Byte-level BPE: each token covers its bytes in turn (added tokens: their text); a token that ends inside a
   * character covers the whole character, as the Rust library's offsets do. */
  byteLevelSpans(text, tokens) {
    const bytes = byteSpans(text);
    const spans = [];
    let cursor = 0; // bytes consumed
    for (const token of tokens) {
      if (this.addedContents.has(token)) {
        const at = text.indexOf(token, cursor < bytes.length ? bytes[cursor][0] : text.length);
        if (at < 0) throw new ConfigError(`added token ${JSON.stringify(token)} not found in the text`);
        spans.push([at, at + token.length]);
        cursor = UTF8.encode(text.slice(0, at + token.length)).length;
      } else {
        if (cursor + token.length > bytes.length) throw new ConfigError('the tokens hold more bytes than the text');
        spans.push([bytes[cursor][0], bytes[cursor + token.length - 1][1]]);
        cursor += token.length;
      }
    }
    if (cursor !== bytes.length) throw new ConfigError('the tokens do not cover the text');
    return spans;
  }

  /** Other models: each token's text (less a continuing-subword prefix) found in turn, after whitespace. */
  surfaceSpans(text, tokens) {
    const spans = [];
    let cursor = 0;
    for (const token of tokens) {
      let surface = token;
      if (this.subwordPrefix && token.startsWith(this.subwordPrefix) && !text.startsWith(token, cursor)) {
        surface = token.slice(this.subwordPrefix.length);
      }
      const at = text.indexOf(surface, cursor);
      if (at < 0 || /\S/u.test(text.slice(cursor, at))) {
        throw new ConfigError(`token ${JSON.stringify(token)} is not the text's next word`);
      }
      spans.push([at, at + surface.length]);
      cursor = at + surface.length;
    }
    return spans;
  }

  /**
   * Ids of `prefix + text + suffix` for each text, the text cut from its end to fit `maxLength`.
   * @param {string} prefix
   * @param {string[]} texts
   * @param {string} suffix
   * @param {number} maxLength
   * @returns {number[][]}
   */
  promptIds(prefix, texts, suffix, maxLength) {
    if (!Number.isInteger(maxLength) || maxLength < 1) {
      throw new ConfigError(`max_length must be a positive number of tokens, got ${maxLength}`);
    }
    const start = [...prefix].length;
    return texts.map((text) => {
      const prompt = prefix + text + suffix;
      const ids = this.encode(prompt);
      if (ids.length <= maxLength) return ids;
      let encoded;
      try {
        encoded = this.encodeWithOffsets(prompt);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        throw new ConfigError(`a prompt of ${ids.length} tokens needs cutting to max_length=${maxLength}, but ${err.message}; ` +
          `raise max_length (mobillm template --max-length) to at least ${ids.length}`);
      }
      return cutText(encoded.ids, encoded.offsets, encoded.special, start, start + [...text].length, maxLength);
    });
  }

  /**
   * Right-pad token rows to the longest.
   * @param {number[][]} rows
   * @returns {TokenBatch}
   */
  pad(rows) {
    if (!rows.length || rows.some((r) => !r.length)) throw new ConfigError('cannot pad an empty batch or an empty row');
    const width = Math.max(...rows.map((r) => r.length));
    const ids = new BigInt64Array(rows.length * width).fill(BigInt(this.padId));
    const mask = new BigInt64Array(rows.length * width);
    rows.forEach((row, b) => {
      row.forEach((id, t) => {
        ids[b * width + t] = BigInt(id);
        mask[b * width + t] = 1n;
      });
    });
    const last = BigInt64Array.from(rows, (r) => BigInt(r.length - 1));
    return {
      inputIds: tensor('I64', [rows.length, width], ids),
      attentionMask: tensor('I64', [rows.length, width], mask),
      lastIndex: tensor('I64', [rows.length], last),
    };
  }
}

/** Where `plain` (no special tokens) sits inside `full` (with them): the number of specials before it. */
function leadingSpecials(full, plain) {
  for (let lead = 0; lead + plain.length <= full.length; lead++) {
    if (plain.every((t, k) => full[lead + k] === t)) return lead;
  }
  throw new ConfigError('the post-processor changes the text\'s tokens');
}
