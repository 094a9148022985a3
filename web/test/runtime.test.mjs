/**
 * web/src/bundle/runtime.mjs without a real bundle (tests/test_web_bundle.py runs real ones against the Python
 * runtime): bundle.json's checks, safetensors reading, the file readers, the refusals; and device/noise.mjs's.
 */
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import {
  Bundle, loadSideNetwork, readBundleConfig, readSafetensors, directoryReader, urlReader,
} from '../src/bundle/runtime.mjs';
import { deviceNoise } from '../src/device/noise.mjs';
import { ConfigError } from '../src/exceptions.mjs';
import { tensor } from '../src/wire/tensor.mjs';

const BUNDLE = {
  model: 'tiny-llama', fingerprint: '3b4e', model_type: 'llama', num_layers: 4, shortcuts: [1, 3], hidden_size: 32,
  vocab_size: 96, kv_heads: 2, head_dim: 8, pad_token_id: 0, opset: 18,
};
const encode = (value) => new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value));

/** A reader over an in-memory {name: bytes} map (null for any other name). */
const memoryReader = (files) => async (name, range) => {
  const bytes = files[name];
  if (bytes === undefined) return null;
  return range === undefined ? bytes : bytes.subarray(range[0], range[1]);
};

/** A safetensors file of `tensors` ({name: {dtype, shape, data}}), its data right after the header. */
function safetensors(tensors) {
  const header = {};
  const parts = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  const json = encode(header);
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

describe('readBundleConfig', () => {
  it('fills the defaults of a valid bundle.json', () => {
    const config = readBundleConfig(JSON.stringify(BUNDLE));
    assert.equal(config.weights, 'fp32');
    assert.deepEqual(config.eos_token_ids, []);
    assert.equal(config.bos_token_id, null);
    assert.ok(Object.isFrozen(config));
  });

  it('names every problem at once, with the file', () => {
    const bad = { ...BUNDLE, model: undefined, shortcuts: [3, 1], opset: 16, weights: 2, extra: 1 };
    assert.throws(() => readBundleConfig(JSON.stringify(bad), 'b/bundle.json'), (err) => {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.problems, [
        'b/bundle.json: extra: unknown field',
        'b/bundle.json: model: missing (a string)',
        'b/bundle.json: weights: must be a weight format (bundle.json as mobillm export writes it), got 2',
        'b/bundle.json: opset: must be an integer >= 17, got 16',
        'b/bundle.json: shortcuts: [3,1] must increase strictly within 1..4',
      ]);
      return true;
    });
    assert.throws(() => readBundleConfig('{"model":'), /bundle.json: not valid JSON/);
    assert.throws(() => readBundleConfig(JSON.stringify({ ...BUNDLE, shortcuts: [1, 5] })), /within 1\.\.4/);
  });
});

describe('readSafetensors', () => {
  it('reads F32 tensors, aligned whatever the header length', () => {
    const weight = tensor('F32', [2, 3], Float32Array.from([1, 2, 3, 4, 5, 6.5]));
    for (const name of ['w', 'ww']) { // header lengths of both parities: the data starts unaligned in one
      const out = readSafetensors(safetensors({ [name]: weight, b: tensor('F32', [1], Float32Array.from([-1])) }), 'f');
      assert.deepEqual(out[name].shape, [2, 3]);
      assert.deepEqual(Array.from(out[name].data), [1, 2, 3, 4, 5, 6.5]);
      assert.deepEqual(Array.from(out.b.data), [-1]);
    }
  });

  it('refuses other dtypes, truncation and non-safetensors bytes', () => {
    const half = safetensors({ h: tensor('F16', [2], Uint16Array.from([1, 2])) });
    assert.throws(() => readSafetensors(half, 'side.safetensors'), /side.safetensors: h is F16; the web device reads F32 tensors only/);
    const whole = safetensors({ w: tensor('F32', [4], new Float32Array(4)) });
    assert.throws(() => readSafetensors(whole.subarray(0, whole.length - 1), 'x'), /x: truncated; re-download it/);
    assert.throws(() => readSafetensors(encode('{"not": "safetensors"}'), 'y'), /y: not a safetensors file/);
  });
});

describe('readers', () => {
  it('directoryReader reads files and byte ranges, null for a missing file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mobillm-web-'));
    await writeFile(join(dir, 'a.bin'), Uint8Array.from([0, 1, 2, 3, 4, 5]));
    const read = directoryReader(dir);
    assert.deepEqual(Array.from(await read('a.bin')), [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(Array.from(await read('a.bin', [2, 5])), [2, 3, 4]);
    assert.equal(await read('missing.onnx'), null);
  });

  it('urlReader sends Range requests, cuts a whole-file answer, maps 404 to null', async () => {
    const file = Uint8Array.from([10, 11, 12, 13, 14]);
    const seen = [];
    const server = (honourRange) => async (url, { headers }) => {
      seen.push([String(url), headers.Range]);
      if (url.pathname.endsWith('gone')) return new Response(null, { status: 404 });
      if (url.pathname.endsWith('broken')) return new Response(null, { status: 500, statusText: 'Internal Server Error' });
      const match = /bytes=(\d+)-(\d+)/.exec(headers.Range ?? '');
      if (honourRange && match) return new Response(file.slice(+match[1], +match[2] + 1), { status: 206 });
      return new Response(file, { status: 200 });
    };
    const read = urlReader('https://host/bundle', server(true));
    assert.deepEqual(Array.from(await read('taps.onnx', [1, 3])), [11, 12]);
    assert.deepEqual(seen[0], ['https://host/bundle/taps.onnx', 'bytes=1-2']);
    assert.deepEqual(Array.from(await urlReader('https://host/bundle/', server(false))('x', [1, 3])), [11, 12]);
    assert.deepEqual(Array.from(await read('x')), [10, 11, 12, 13, 14]);
    assert.equal(await read('gone'), null);
    await assert.rejects(read('broken'), /https:\/\/host\/bundle\/broken: HTTP 500 Internal Server Error/);
  });
});

describe('Bundle', () => {
  const files = { 'bundle.json': encode(BUNDLE) };

  it('refuses a directory without a bundle and an incomplete bundle, saying how to make one', async () => {
    await assert.rejects(Bundle.load(memoryReader({})), /no bundle.json — not a device bundle \(write one with `mobillm export`\)/);
    await assert.rejects(Bundle.load(memoryReader(files), { threads: 0 }), /threads must be an integer >= 1, got 0/);
    await assert.rejects(Bundle.load(memoryReader(files)), /bundle incomplete: no tokenizer.json; re-run `mobillm export`/);
    const withTokenizer = memoryReader({ ...files, 'tokenizer.json': encode({}) });
    await assert.rejects(Bundle.load(withTokenizer), /bundle incomplete: no taps.onnx; re-run `mobillm export`/);
    await assert.rejects(Bundle.load(memoryReader(files), { threads: 2 }), /already runs on 1 thread\(s\)/);
  });

  it('refuses label ids outside the vocabulary before reading anything', async () => {
    const reads = [];
    const bundle = new Bundle(async (name) => { reads.push(name); return null; }, readBundleConfig(JSON.stringify(BUNDLE)), null, null);
    const hidden = tensor('F32', [1, 32], new Float32Array(32));
    await assert.rejects(bundle.labelLogits(hidden, [5, 96, -1]), /label token ids \[96,-1\] are outside the bundle's vocabulary \(0\.\.95\)/);
    assert.deepEqual(reads, []);
  });
});

describe('loadSideNetwork', () => {
  it('names the two files of a saved side network when one is missing', async () => {
    await assert.rejects(loadSideNetwork(memoryReader({ 'side_config.json': encode({}) })),
      /expected side_config.json and side_network.safetensors \(a saved side network\)/);
  });
});

describe('deviceNoise', () => {
  it('runs without noise and refuses noise, pointing at the Python device', () => {
    assert.equal(deviceNoise(0), null);
    assert.throws(() => deviceNoise(0.3), (err) => err instanceof ConfigError &&
      /web device does not add activation noise yet; run the Python device \(`mobillm device --noise 0.3`\)/.test(err.message));
    assert.throws(() => deviceNoise(-1), /noise: must be a number >= 0, got -1/);
    assert.throws(() => deviceNoise(Number.NaN), /must be a number >= 0/);
  });
});
