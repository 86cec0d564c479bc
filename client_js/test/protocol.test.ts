/** The decoder against messages written by server/protocol.py's own encoder (test/fixtures). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '@msgpack/msgpack';
import {
  arrayData,
  decodeMap,
  decodeServerMessage,
  encodeClientMessage,
  halfToFloat,
  PROTOCOL_VERSION,
  WireError,
  type ResultMsg,
} from '../src/protocol.ts';
import { assertFloatsClose, expected, fixture } from './helpers.ts';

test('fixtures were written for the protocol version the client speaks', () => {
  assert.equal(expected.protocol, PROTOCOL_VERSION);
});

test('hello: every field the page uses decodes', () => {
  const msg = decodeServerMessage(fixture('hello.msgpack'));
  assert.equal(msg.type, 'hello');
  if (msg.type !== 'hello') return;
  assert.deepEqual(JSON.parse(JSON.stringify(msg)), expected.hello);
  assert.equal(msg.model.synthetic, true);
  assert.match(msg.model.notice ?? '', /synthetic/);
  assert.equal(msg.last_seq, 14);
});

for (const name of ['result_full_f32', 'result_full_f16', 'result_compact'] as const) {
  test(`${name}: points, confidences, colours and poses equal numpy's`, () => {
    const msg = decodeServerMessage(fixture(`${name}.msgpack`)) as ResultMsg;
    const want = expected[name];
    assert.equal(msg.type, 'result');
    assert.equal(msg.seq, want.seq);
    assert.equal(msg.frame_index, want.frame_index);
    assert.equal(msg.ts ?? null, want.ts);
    for (const part of ['final', 'preview'] as const) {
      const w = want[part];
      const frame = msg[part];
      if (!w) {
        assert.equal(frame ?? null, null);
        continue;
      }
      assert.ok(frame, `${part} missing`);
      assert.equal(frame.index, w.index);
      assert.deepEqual(frame.pose.c2w, w.pose);
      assert.equal(frame.pose.valid, w.pose !== null);
      const pts = decodeMap(frame.map, { stride: expected.full_stride });
      assert.equal(pts.count, w.count);
      // exact: both sides hold float32 values (float16 widened, int16 × scale rounded to float32)
      assertFloatsClose(pts.positions, w.positions, 0, `${part}.positions`);
      assertFloatsClose(pts.conf, w.conf, 0, `${part}.conf`);
      assert.deepEqual([...pts.colors!], w.colors);
    }
  });
}

test('full map without client stride keeps every pixel in row-major order', () => {
  const msg = decodeServerMessage(fixture('result_full_f32.msgpack')) as ResultMsg;
  const pts = decodeMap(msg.final!.map, { stride: 1 });
  const w = expected.result_full_f32.final_unstrided;
  assert.equal(pts.count, 48);
  assertFloatsClose(pts.positions, w.positions, 0, 'positions');
  assert.deepEqual([...pts.colors!], w.colors);
});

test('frame 0 result carries neither final nor preview', () => {
  const msg = decodeServerMessage(fixture('result_first.msgpack')) as ResultMsg;
  assert.equal(msg.frame_index, 0);
  assert.equal(msg.final ?? null, null);
  assert.equal(msg.preview ?? null, null);
  assert.equal(msg.timings?.server_s, 0.05);
});

test('the other server messages decode with their fields', () => {
  const dropped = decodeServerMessage(fixture('dropped.msgpack'));
  assert.deepEqual(dropped, { type: 'dropped', seq: 3, reason: 'superseded' });
  const error = decodeServerMessage(fixture('error.msgpack'));
  assert.deepEqual(error, { type: 'error', code: 'bad_image', message: 'cannot decode image data', seq: 17 });
  assert.deepEqual(decodeServerMessage(fixture('finished.msgpack')), { type: 'finished', frames: 2, final: null });
  const ack = decodeServerMessage(fixture('ack.msgpack'));
  assert.equal(ack.type === 'ack' && ack.settings.encoding, 'full');
  assert.deepEqual(decodeServerMessage(fixture('pong.msgpack')), { type: 'pong', id: 7, ts: 1.5, server_ts: 2.25 });
});

test('client messages encode to what the Python side builds', () => {
  const ours = decode(encodeClientMessage({ type: 'frame', seq: 5, ts: 1.25, format: 'jpeg', data: new Uint8Array([0xff, 0xd8, 0xff, 0xd9]), width: null, height: null }));
  assert.deepEqual(ours, decode(fixture('client_frame.msgpack')));
  // optional fields left undefined are omitted (the server refuses unknown keys, not missing ones)
  const minimal = decode(encodeClientMessage({ type: 'frame', seq: 1, format: 'jpeg', data: new Uint8Array(1) })) as Record<string, unknown>;
  assert.deepEqual(Object.keys(minimal).sort(), ['data', 'format', 'seq', 'type']);
  const control = decode(encodeClientMessage({ type: 'control', action: 'settings', settings: { frame_policy: null, queue_size: null, every_n: null, encoding: 'compact', dtype: null, conf_thresh: null, stride: 2, compact_scale: null, preview: null, intrinsics: null, pose_method: null } }));
  assert.deepEqual(control, decode(fixture('client_control.msgpack')));
});

test('malformed input is refused with WireError', () => {
  assert.throws(() => decodeServerMessage(new Uint8Array([0xc1])), WireError);
  assert.throws(() => decodeServerMessage(new Uint8Array([0x93, 1, 2, 3])), /map/);
  assert.throws(() => decodeServerMessage(encodeClientMessage({ type: 'ping', id: 1 })), /unknown message type/);
});

test('array size mismatch is refused; unaligned data is copied, not misread', () => {
  assert.throws(() => arrayData({ dtype: 'float32', shape: [3], data: new Uint8Array(8) }), /needs 12/);
  const buf = new Uint8Array(9);
  new DataView(buf.buffer).setFloat32(1, 2.5, true);
  new DataView(buf.buffer).setFloat32(5, -1, true);
  const view = arrayData({ dtype: 'float32', shape: [2], data: buf.subarray(1) });
  assert.deepEqual([...view], [2.5, -1]);
});

test('half floats: normals, subnormals, infinities, NaN', () => {
  assert.equal(halfToFloat(0x3c00), 1);
  assert.equal(halfToFloat(0xc000), -2);
  assert.equal(halfToFloat(0x7bff), 65504);
  assert.equal(halfToFloat(0x0001), 2 ** -24);
  assert.equal(halfToFloat(0x7c00), Infinity);
  assert.ok(Number.isNaN(halfToFloat(0x7e00)));
});
