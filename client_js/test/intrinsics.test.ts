/** Known camera intrinsics typed on the page, and their mapping to the frames the page uploads. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseIntrinsics, resizedIntrinsics } from '../src/intrinsics.ts';
import { scaledSize } from '../src/sources/frameEncoder.ts';

test('intrinsics parse from FX,FY,CX,CY; empty means estimate; anything else says what is wrong', () => {
  assert.deepEqual(parseIntrinsics(' 500, 510.5 ,319.5,239.5 '), [500, 510.5, 319.5, 239.5]);
  assert.equal(parseIntrinsics('   '), null);
  for (const bad of ['500,500,320', '500,500,320,240,1', 'a,b,c,d', '500,,320,240', '0,500,320,240', '-1,500,320,240', 'Infinity,500,320,240']) {
    const r = parseIntrinsics(bad);
    assert.ok(r instanceof Error, bad);
    assert.match(r.message, /FX|focal/, bad);
  }
});

test('intrinsics follow the resize to the uploaded size, pixel centres and all', () => {
  const video = { width: 1280, height: 720 };
  const upload = scaledSize(video.width, video.height, 224); // 398 x 224
  const [fx, fy, cx, cy] = resizedIntrinsics([1000, 1000, 639.5, 359.5], video, upload);
  assert.ok(Math.abs(fx - (1000 * 398) / 1280) < 1e-9 && Math.abs(fy - (1000 * 224) / 720) < 1e-9);
  // the centre of the image stays the centre: (W - 1) / 2 in both
  assert.ok(Math.abs(cx - (upload.width - 1) / 2) < 1e-9 && Math.abs(cy - (upload.height - 1) / 2) < 1e-9);
  // the top-left pixel's left edge (-0.5) stays the left edge
  assert.ok(Math.abs(resizedIntrinsics([1, 1, -0.5, -0.5], video, upload)[2] + 0.5) < 1e-12);
  // no resize: unchanged
  assert.deepEqual(resizedIntrinsics([1, 2, 3, 4], video, video), [1, 2, 3, 4]);
});
