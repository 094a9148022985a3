/**
 * The JS messages on their own: the header JSON the device writes (Python's formatting), what encodeMessage and
 * decodeMessage refuse, and batchTensors. tests/test_web_session.py checks the same against the Python side.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ProtocolError } from '../src/exceptions.mjs';
import { readFrame, writeFrame } from '../src/wire/frame.mjs';
import { activationGroups, batchTensors, decodeMessage, encodeMessage, makeHeader } from '../src/wire/messages.mjs';
import { int64, tensor } from '../src/wire/tensor.mjs';
import { RULES } from '../tools/py/session.mjs';

const HELLO = { type: 'hello', ...RULES.hello };
const headerText = (bytes) => readFrame(bytes).header;
const refusedWith = (code) => (err) => err instanceof ProtocolError && err.code === code;
const server = (header, tensors = {}) => writeFrame(tensors, JSON.stringify({ v: 1, ...header }));
const zeros = (dtype, shape) => tensor(dtype, shape);

describe('the header JSON the device writes', () => {
  test('fields in the Python models\' order', () => {
    const text = headerText(encodeMessage(HELLO));
    assert.ok(text.startsWith('{"type":"hello","v":1,"job":"sst2-run_1.a","token":"secret",'));
    assert.ok(text.includes('"width":8,"block":"mlp","attention_heads":4,"dropout":0.0,'));
    assert.ok(text.endsWith('"train_samples":100,"device_epochs":1,"resume":false}'));
  });

  test('floats as Python writes them', () => {
    const cases = [[0.001, '0.001'], [1e-5, '1e-05'], [2, '2.0'], [1e16, '1e+16'], [1e15, '1000000000000000.0'],
      [0.0001, '0.0001'], [1.5e-7, '1.5e-07'], [123.25, '123.25'], [1e22, '1e+22']];
    for (const [lr, written] of cases) {
      const text = headerText(encodeMessage({ ...HELLO, train_config: { ...HELLO.train_config, lr } }));
      assert.ok(text.includes(`"lr":${written},`), `${lr} -> ${text.match(/"lr":[^,]*/)}`);
    }
  });

  test('every character past ~ escaped, as json.dumps(ensure_ascii=True)', () => {
    const names = ['é', '😀', '\u007f', 'a"\\\n'];
    const side = { ...RULES.hello.side_config, label_names: names, num_labels: 4, label_token_ids: [1, 2, 3, 4] };
    const text = headerText(encodeMessage({ ...HELLO, side_config: side }));
    assert.ok(text.includes(String.raw`"label_names":["\u00e9","\ud83d\ude00","\u007f","a\"\\\n"]`), text);
  });

  test('a Hello decodes back to its header with defaults', () => {
    const { header } = decodeMessage(encodeMessage(HELLO));
    assert.deepEqual(header, makeHeader(HELLO));
    assert.equal(header.train_config.ema_gamma, 7);
    assert.deepEqual(header.train_config.lora_targets, ['q_proj', 'v_proj']);
  });
});

describe('encodeMessage refuses', () => {
  test('a type the device does not send', () => {
    assert.throws(() => encodeMessage({ type: 'welcome', session: 's', window: 1, last_seq: -1, step: 0 }), TypeError);
    assert.throws(() => encodeMessage({ type: 'nope' }), TypeError);
  });

  test('bad fields, naming each', () => {
    assert.throws(() => encodeMessage({ ...HELLO, job: '', train_samples: -1, extra: 1 }), (err) => err.code === 'bad_header'
      && /job: expected/.test(err.message) && /train_samples: expected an integer >= 0/.test(err.message)
      && /extra: extra field/.test(err.message));
    assert.throws(() => encodeMessage({ ...HELLO, train_config: { ...HELLO.train_config, lr: Number.NaN } }), refusedWith('bad_header'));
    assert.throws(() => encodeMessage({ type: 'done', epoch: 1.5 }), refusedWith('bad_header'));
    assert.throws(() => encodeMessage({ type: 'done' }), /epoch: missing/);
  });

  test('tensors on a message without tensors', () => {
    const tensors = { x: zeros('F32', [1]) };
    assert.throws(() => encodeMessage({ type: 'done', epoch: 0 }, tensors), refusedWith('unexpected_tensors'));
  });

  test('a bad Batch', () => {
    const good = { sample_ids: int64([1, 2]), labels: int64([0, 1]), 'act.0.data': zeros('I8', [2, 4]) };
    const batch = { type: 'batch', seq: 0, split: 'train', epoch: 0 };
    assert.ok(encodeMessage(batch, good) instanceof Uint8Array);
    const bad = [
      { labels: good.labels, 'act.0.data': good['act.0.data'] },
      { ...good, sample_ids: zeros('I32', [2]) },
      { ...good, labels: int64([0]) },
      { ...good, loss_mask: zeros('F32', [2, 3]) },
      { ...good, labels: zeros('I64', [2, 3]), loss_mask: zeros('BOOL', [2, 4]) },
      { ...good, 'act.2.data': good['act.0.data'] },
      { sample_ids: good.sample_ids, labels: good.labels },
      { ...good, other: good.labels },
    ];
    for (const tensors of bad) {
      assert.throws(() => encodeMessage(batch, tensors), refusedWith('bad_batch'), Object.keys(tensors).join());
    }
  });
});

describe('decodeMessage', () => {
  test('an Ack, its integers as Numbers and its defaults filled', () => {
    const { header, tensors } = decodeMessage(server({ type: 'ack', seq: 3, step: 9 }));
    assert.deepEqual(header, { type: 'ack', v: 1, seq: 3, step: 9, loss: null });
    assert.deepEqual(tensors, {});
  });

  test('refuses with Python\'s codes', () => {
    const cases = [
      [writeFrame({}, 'not json'), 'bad_frame'],
      [server({ type: 'ack', seq: 0, step: 0, v: 2 }), 'bad_version'],
      [writeFrame({}, '{"type":"done","v":1.0,"epoch":0}'), 'bad_version'],
      [server({ type: 'toString' }), 'unknown_type'],
      [writeFrame({}, '{"type":"welcome","v":1,"session":"s","window":2.0,"last_seq":-1,"step":0}'), 'bad_header'],
      [server({ type: 'error', code: 'nope', message: 'x' }), 'bad_header'],
      [server({ type: 'side_net', config: {}, step: 0, eval_sample_ids: [1] }), 'bad_header'],
      [server({ type: 'side_net', config: {}, step: 0 }, { w: zeros('U8', [1]) }), 'unexpected_tensors'],
    ];
    for (const [bytes, code] of cases) assert.throws(() => decodeMessage(bytes), refusedWith(code), code);
  });

  test('a SideNet\'s config comes with plain numbers', () => {
    const config = { width: 8, dropout: 0.5, nested: [1] };
    const { header } = decodeMessage(server({ type: 'side_net', config, step: 2 }));
    assert.deepEqual(header.config, { width: 8, dropout: 0.5, nested: [1] });
  });
});

describe('batchTensors', () => {
  test('builds I64 ids, labels and last_index, names the activations by layer', () => {
    const layers = [{ data: zeros('I8', [2, 4]), scale: zeros('F16', [2, 1]) }, { data: zeros('I8', [2, 4]) }];
    const mask = zeros('BOOL', [2, 3]);
    const labels = tensor('I32', [2], Int32Array.from([1, 0]));
    const out = batchTensors(layers, { sampleIds: [7, 3], labels, lastIndex: [2, 1], lossMask: mask });
    assert.deepEqual(Object.keys(out),
      ['sample_ids', 'labels', 'loss_mask', 'last_index', 'act.0.data', 'act.0.scale', 'act.1.data']);
    assert.deepEqual(out.labels, int64([1, 0]));
    assert.deepEqual(out.sample_ids, int64([7, 3]));
    assert.equal(out.loss_mask, mask);
    assert.deepEqual(activationGroups(out).map((g) => Object.keys(g)), [['data', 'scale'], ['data']]);
  });

  test('refuses ids that are not integers', () => {
    assert.throws(() => batchTensors([], { sampleIds: [0.5], labels: [0] }), refusedWith('bad_batch'));
    assert.throws(() => batchTensors([], { sampleIds: [0], labels: zeros('F32', [1]) }), refusedWith('bad_batch'));
  });
});
