import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BundleTokenizer } from '../src/bundle/tokenizer.mjs';
import { ConfigError } from '../src/exceptions.mjs';
import { cutText } from '../src/truncation.mjs';

// Expected ids and offsets printed by Python's `tokenizers` on the same tokenizer.json (tests/test_web_data.py
// compares whole data sets' batches, with SmolLM2's tokenizer too).

const SPECIALS = ['[PAD]', '[UNK]', '<s>', '</s>'];
const WORDS = ['Review', ':', 'the', 'movie', 'was', 'great', '(', ')', 'positive', 'or', 'negative', 'Sentiment', '\n'];

/** A word-level tokenizer.json as tests/helpers.py's make_tiny_tokenizer(bos=true) saves it. */
function wordLevelJson() {
  const vocab = Object.fromEntries([...SPECIALS, ...WORDS].map((w, i) => [w, i]));
  return {
    version: '1.0', truncation: null, padding: null, normalizer: null, decoder: null,
    added_tokens: SPECIALS.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }, { type: 'Punctuation', behavior: 'Isolated' }] },
    post_processor: {
      type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [2], tokens: ['<s>'] } },
    },
    model: { type: 'WordLevel', vocab, unk_token: '[UNK]' },
  };
}

/** GPT-2's byte-to-character map: a byte-level BPE whose vocabulary is the 256 bytes, without merges. */
function byteLevelJson() {
  const printable = (b) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let extra = 0;
  const chars = Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
  return {
    version: '1.0', truncation: null, padding: null, normalizer: null, added_tokens: [],
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab: Object.fromEntries(chars.map((c, b) => [c, b])), merges: [] },
  };
}

const PREFIX = 'Review: ';
const SUFFIX = '\nSentiment (positive or negative):';

test('word level: punctuation split one mark at a time, unknown words as [UNK], the <s> mask', () => {
  const tok = BundleTokenizer.fromJSON(JSON.stringify(wordLevelJson()), 0);
  assert.deepEqual(tok.encode('the movie): zzz'), [2, 6, 7, 11, 5, 1]);
  assert.deepEqual(tok.encode('the movie', false), [6, 7]);
  assert.deepEqual(tok.encodeWithOffsets('the café!'), { ids: [2, 6, 1, 1], offsets: [[0, 0], [0, 3], [4, 8], [8, 9]], special: [1, 0, 0, 0] });
  assert.equal(tok.decode([2, 6, 7, 1]), 'the movie');
});

test('promptIds cuts the text from its end, keeping the template', () => {
  const tok = BundleTokenizer.fromJSON(wordLevelJson(), 0);
  const [whole, cut] = tok.promptIds(PREFIX, ['great', 'the movie was great'], SUFFIX, 12);
  assert.deepEqual(whole, [2, 4, 5, 9, 15, 10, 12, 13, 14, 11, 5]);
  assert.deepEqual(cut, [2, 4, 5, 6, 7, 15, 10, 12, 13, 14, 11, 5]); // "the movie" kept of the text
  assert.throws(() => tok.promptIds(PREFIX, ['great'], SUFFIX, 5), (err) => err instanceof ConfigError && /template alone takes 10 tokens/.test(err.message));
});

test('byte level: a token inside a character covers the whole character, in code points', () => {
  const tok = BundleTokenizer.fromJSON(byteLevelJson(), 0);
  const { ids, offsets, special } = tok.encodeWithOffsets('a😀é');
  assert.deepEqual(ids, [97, 240, 159, 152, 128, 195, 169]);
  assert.deepEqual(offsets, [[0, 1], [1, 2], [1, 2], [1, 2], [1, 2], [2, 3], [2, 3]]);
  assert.deepEqual(special, [0, 0, 0, 0, 0, 0, 0]);
  assert.equal(tok.decode(ids), 'a😀é');
});

test('byte level: cutting inside a run of emoji keeps whole tokens of the text and the whole suffix', () => {
  const tok = BundleTokenizer.fromJSON(byteLevelJson(), 0);
  assert.deepEqual(tok.promptIds('P:', ['😀😀'], '!', 6), [[80, 58, 240, 159, 152, 33]]);
});

test('cutText mirrors truncation.py', () => {
  const offsets = [[0, 0], [0, 2], [2, 5], [5, 9], [9, 12], [12, 13]];
  const special = [1, 0, 0, 0, 0, 0];
  assert.deepEqual(cutText([9, 1, 2, 3, 4, 5], offsets, special, 2, 12, 6), [9, 1, 2, 3, 4, 5]);
  assert.deepEqual(cutText([9, 1, 2, 3, 4, 5], offsets, special, 2, 12, 4), [9, 1, 2, 5]);
});

test('pad right-pads with the pad id and marks the last real token', () => {
  const tok = BundleTokenizer.fromJSON(wordLevelJson(), 3);
  const batch = tok.pad([[5, 6, 7], [8]]);
  assert.deepEqual(batch.inputIds.shape, [2, 3]);
  assert.deepEqual(Array.from(batch.inputIds.data), [5n, 6n, 7n, 8n, 3n, 3n]);
  assert.deepEqual(Array.from(batch.attentionMask.data), [1n, 1n, 1n, 1n, 0n, 0n]);
  assert.deepEqual(Array.from(batch.lastIndex.data), [2n, 0n]);
  assert.throws(() => tok.pad([[1], []]), ConfigError);
});
