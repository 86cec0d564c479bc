import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BufferAttribute } from 'three';
import { BYTES_PER_POINT, GrowingPointCloud, type FramePoints } from '../src/viewer/growingPointCloud.ts';

/** A frame whose every coordinate encodes (frame, point) so tests can tell what landed where. */
function frame(id: number, count: number, conf = 2): FramePoints {
  const positions = new Float32Array(count * 3);
  const confs = new Float32Array(count).fill(conf);
  const colors = new Uint8Array(count * 3).fill(id % 256);
  for (let i = 0; i < count; i++) positions.set([id, i, 0.5 - id], i * 3);
  return { count, positions, conf: confs, colors };
}

const attr = (c: GrowingPointCloud, name: string) => c.geometry.getAttribute(name) as BufferAttribute;

test('frames append without reallocating while capacity lasts, and only their range is uploaded', () => {
  const cloud = new GrowingPointCloud({ initialCapacity: 1000, maxPoints: 10_000 });
  const position = attr(cloud, 'position');
  for (let f = 0; f < 9; f++) {
    position.clearUpdateRanges();
    const r = cloud.writeFrame(f, frame(f, 100));
    assert.equal(r.offset, f * 100);
    assert.equal(r.grew, false);
    assert.equal(r.uploadBytes, 100 * BYTES_PER_POINT);
    assert.deepEqual(position.updateRanges, [{ start: f * 300, count: 300 }]);
  }
  assert.equal(attr(cloud, 'position'), position, 'same attribute object: no reallocation');
  assert.equal(cloud.reallocations, 0);
  assert.equal(cloud.pointCount, 900);
  assert.equal(cloud.geometry.drawRange.count, 900);
});

test('growth doubles: 1,000 frames cost a logarithmic number of reallocations and keep every point', () => {
  const cloud = new GrowingPointCloud({ initialCapacity: 1024, maxPoints: 1 << 24 });
  for (let f = 0; f < 1000; f++) cloud.writeFrame(f, frame(f, 500));
  assert.equal(cloud.pointCount, 500_000);
  assert.ok(cloud.reallocations <= Math.ceil(Math.log2(500_000 / 1024)) + 1, `${cloud.reallocations} reallocations`);
  const pos = attr(cloud, 'position').array as Float32Array;
  // first and last frames survived the copies
  assert.deepEqual([...pos.subarray(0, 3)], [0, 0, 0.5]);
  const last = cloud.slot(999)!;
  assert.deepEqual([...pos.subarray(last.offset * 3 + 3 * 499, last.offset * 3 + 3 * 500)], [999, 499, -998.5]);
});

test('a final overwrites its preview in place; a larger final extends the newest slot', () => {
  const cloud = new GrowingPointCloud({ initialCapacity: 4096 });
  cloud.writeFrame(0, frame(0, 100)); // preview 0
  cloud.writeFrame(0, frame(10, 80)); // final 0, fewer points: same slot, tail hidden
  assert.deepEqual(cloud.slot(0), { offset: 0, capacity: 100, count: 80, shown: 80 });
  const conf = attr(cloud, 'confidence').array as Float32Array;
  assert.equal(conf[79], 2);
  assert.equal(conf[80], 0, 'unused slot space is hidden (confidence 0)');
  cloud.writeFrame(0, frame(11, 150)); // newest slot grows in place
  assert.equal(cloud.slot(0)!.offset, 0);
  assert.equal(cloud.slot(0)!.capacity, 150);
  cloud.writeFrame(1, frame(1, 100));
  assert.equal(cloud.slot(1)!.offset, 150);
  // an older slot that must grow moves; its old range is hidden
  cloud.writeFrame(0, frame(12, 200));
  assert.equal(cloud.slot(0)!.offset, 250);
  assert.ok(conf.subarray(0, 150).every((c) => c === 0));
  assert.equal(cloud.pointCount, 300);
  assert.equal(cloud.frameCount, 2);
});

test('at the point budget the oldest frames are recycled and stop drawing', () => {
  const cloud = new GrowingPointCloud({ initialCapacity: 256, maxPoints: 1000 });
  for (let f = 0; f < 10; f++) cloud.writeFrame(f, frame(f, 100));
  assert.equal(cloud.capacity, 1000);
  const r = cloud.writeFrame(10, frame(10, 150));
  assert.deepEqual(r.recycled, [0, 1]);
  assert.equal(r.offset, 0);
  assert.equal(cloud.slot(0), undefined);
  assert.equal(cloud.slot(2)!.offset, 200);
  const conf = attr(cloud, 'confidence').array as Float32Array;
  assert.ok(conf.subarray(150, 200).every((c) => c === 0), 'leftover of a recycled slot is hidden');
  assert.equal(cloud.pointCount, 8 * 100 + 150);
  assert.equal(cloud.recycledFrames, 2);
  assert.throws(() => cloud.writeFrame(11, frame(11, 1001)), RangeError);
});

test('confidence threshold: points shown are recounted, new frames counted against it', () => {
  const cloud = new GrowingPointCloud();
  const f = frame(0, 10);
  f.conf.set([1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9]);
  cloud.writeFrame(0, f);
  assert.equal(cloud.pointsShown, 10);
  cloud.setConfidenceThreshold(3);
  assert.equal(cloud.pointsShown, 7);
  cloud.writeFrame(1, frame(1, 5, 2.5));
  assert.equal(cloud.pointsShown, 7);
  cloud.writeFrame(2, frame(2, 5, 3));
  assert.equal(cloud.pointsShown, 12);
  cloud.setConfidenceThreshold(0);
  assert.equal(cloud.pointsShown, 20);
  assert.deepEqual(cloud.confidenceRange(), [1, 9]);
});

test('clear keeps the buffers; bounds follow the points', () => {
  const cloud = new GrowingPointCloud({ initialCapacity: 512 });
  cloud.writeFrame(0, frame(3, 10));
  const s = cloud.boundingSphere();
  assert.ok(Math.abs(s.center.x - 3) < 1e-9 && Math.abs(s.center.y - 4.5) < 1e-9);
  const before = attr(cloud, 'position');
  cloud.clear();
  assert.equal(cloud.pointCount, 0);
  assert.equal(cloud.geometry.drawRange.count, 0);
  assert.equal(attr(cloud, 'position'), before);
  assert.equal(cloud.writeFrame(5, frame(5, 10)).offset, 0);
});

test('robust bounds ignore a few far outliers that the plain bounds take in', () => {
  const cloud = new GrowingPointCloud({ initialCapacity: 2048 });
  const count = 1005;
  const positions = new Float32Array(count * 3);
  for (let i = 0; i < 1000; i++) for (let k = 0; k < 3; k++) positions[i * 3 + k] = ((i * (k + 3)) % 97) / 97 - 0.5;
  for (let i = 1000; i < count; i++) positions[i * 3] = 1000 * (i - 999);
  cloud.writeFrame(0, { count, positions, conf: new Float32Array(count).fill(2), colors: null });
  assert.ok(cloud.boundingSphere().radius > 1000);
  const robust = cloud.robustSphere();
  assert.ok(robust.radius > 0.5 && robust.radius < 1, `radius ${robust.radius}`);
  assert.ok(robust.center.length() < 0.1, 'centred on the box');
  // points below the confidence threshold are not in view, so they do not count either
  cloud.setConfidenceThreshold(3);
  assert.equal(cloud.robustSphere().radius, cloud.boundingSphere().radius, 'nothing shown: the plain bounds');
});
