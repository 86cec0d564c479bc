import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../src/backoff.ts';
import { Ewma, RateMeter, formatBytes, formatCount } from '../src/stats.ts';

test('backoff grows exponentially to its cap and restarts after reset', () => {
  const b = new Backoff({ baseMs: 100, maxMs: 1000, factor: 2, jitter: 0 });
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next(), b.next()], [100, 200, 400, 800, 1000, 1000]);
  b.reset();
  assert.equal(b.next(), 100);
});

test('backoff jitter stays within [ (1-j)·d, d ]', () => {
  const lo = new Backoff({ baseMs: 1000, jitter: 0.5 }, () => 0);
  const hi = new Backoff({ baseMs: 1000, jitter: 0.5 }, () => 0.999999);
  assert.equal(lo.next(), 500);
  assert.equal(hi.next(), 1000);
});

test('rate meter counts events per second over its window', () => {
  let now = 0;
  const m = new RateMeter(2000, () => now);
  for (let i = 0; i < 11; i++) {
    m.mark();
    now += 200; // 5 per second
  }
  now -= 200;
  assert.ok(Math.abs(m.rate() - 5) < 0.01, String(m.rate()));
  now += 5000;
  assert.equal(m.rate(), 0);
  assert.equal(m.total, 11);
});

test('ewma follows its input', () => {
  const e = new Ewma(0.5);
  e.add(10);
  e.add(20);
  assert.equal(e.value, 15);
  assert.equal(e.last, 20);
});

test('number formatting', () => {
  assert.equal(formatCount(512), '512');
  assert.equal(formatCount(12_544), '13 k');
  assert.equal(formatCount(3_200_000), '3.20 M');
  assert.equal(formatBytes(138_000), '134.8 KiB');
});
