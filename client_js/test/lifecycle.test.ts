/** The session's life and what the page derives from it; the tab's stored session. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseWatchLink } from '../src/app.ts';
import type { ConnectionState } from '../src/connection.ts';
import { controlsFor, lifeAfterClose, pillFor, watcherNotice } from '../src/lifecycle.ts';
import { CloseCode } from '../src/protocol.ts';
import { forgetSession, loadSession, saveSession, type KeyValueStore } from '../src/storedSession.ts';

const open = { kind: 'open', hello: { model: { preset: 'tiny', synthetic: true } } } as unknown as ConnectionState;

test('an idle close is an eviction; any other final close loses the session', () => {
  assert.equal(lifeAfterClose(CloseCode.IDLE), 'evicted');
  for (const code of [CloseCode.NOT_FOUND, CloseCode.UNAUTHORIZED, CloseCode.DELETED, CloseCode.REPLACED]) assert.equal(lifeAfterClose(code), 'lost');
});

test('a lost session leaves nothing to press and stops the source', () => {
  for (const life of ['lost', 'evicted'] as const) {
    assert.deepEqual(controlsFor(life, 'stream'), { showStreamControls: true, stop: false, reset: false, exports: false, source: false });
  }
  assert.deepEqual(controlsFor('streaming', 'stream'), { showStreamControls: true, stop: true, reset: true, exports: true, source: true });
  // finished: no more frames, but it can be exported or reset
  assert.deepEqual(controlsFor('finished', 'stream'), { showStreamControls: true, stop: false, reset: true, exports: true, source: false });
});

test('watchers differ only in what they may do', () => {
  for (const life of ['created', 'streaming', 'finished', 'evicted', 'lost'] as const) {
    const c = controlsFor(life, 'watch');
    assert.equal(c.showStreamControls || c.stop || c.reset || c.exports || c.source, false, life);
    assert.equal(pillFor(life, 'watch', open).state, pillFor(life, 'stream', open).state, life);
  }
  assert.match(watcherNotice('finished', true)!, /finished this session:/);
  assert.match(watcherNotice('finished', false)!, /finished this session and left/);
  assert.match(watcherNotice('streaming', false)!, /not connected/);
  assert.equal(watcherNotice('streaming', true), null);
});

test('the pill follows the life first, the connection second', () => {
  assert.deepEqual(pillFor('streaming', 'stream', open), { state: 'open', text: 'streaming · tiny (synthetic)' });
  assert.equal(pillFor('finished', 'stream', open).state, 'finished');
  assert.equal(pillFor('lost', 'stream', open).text, 'session lost');
  assert.equal(pillFor('streaming', 'stream', { kind: 'reconnecting', attempt: 2, delayMs: 1, reason: '' }).text, 'reconnecting (2)');
  assert.equal(pillFor(null, null, null).state, 'idle');
});

test('the stored session belongs to one server and survives only what Stop has not forgotten', () => {
  const map = new Map<string, string>();
  const store: KeyValueStore = { getItem: (k) => map.get(k) ?? null, setItem: (k, v) => void map.set(k, v), removeItem: (k) => void map.delete(k) };
  const s = { id: 'abc', token: 't', watchToken: 'w', streamUrl: 'ws://h/v1/sessions/abc/ws', server: 'http://h', source: 'camera' as const };
  saveSession(store, s);
  assert.deepEqual(loadSession(store, 'http://h'), s);
  assert.equal(loadSession(store, 'http://other'), null);
  forgetSession(store);
  assert.equal(loadSession(store, 'http://h'), null);
  map.set('spann3r.session', '{not json');
  assert.equal(loadSession(store, 'http://h'), null);
});

test('watch links carry the token in the fragment; old query links still work', () => {
  assert.deepEqual(parseWatchLink('http://h/#watch=abc&token=w', 'http://h/'), { id: 'abc', token: 'w', server: null });
  assert.deepEqual(parseWatchLink('http://h/?watch=abc&token=w', 'http://h/'), { id: 'abc', token: 'w', server: null });
  assert.equal(parseWatchLink('http://h/', 'http://h/'), null);
});

test('an export downloads with the token in a header and reports its progress', async () => {
  const { Api } = await import('../src/api.ts');
  const chunks = [new Uint8Array(300), new Uint8Array(700)];
  const seen: { url: string; auth: string | null }[] = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = (async (url: string, init?: RequestInit) => {
    seen.push({ url: String(url), auth: new Headers(init?.headers).get('authorization') });
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const c of chunks) controller.enqueue(c);
        controller.close();
      },
    });
    return new Response(body, { headers: { 'content-length': '1000', 'content-type': 'application/octet-stream' } });
  }) as typeof fetch;
  try {
    const progress: [number, number | null][] = [];
    const blob = await new Api('http://h').download('abc', 's3cret', 'cloud.ply', (loaded, total) => progress.push([loaded, total]));
    assert.equal(blob.size, 1000);
    assert.deepEqual(progress, [[300, 1000], [1000, 1000]]);
    assert.deepEqual(seen, [{ url: 'http://h/v1/sessions/abc/export/cloud.ply', auth: 'Bearer s3cret' }]);
  } finally {
    globalThis.fetch = realFetch;
  }
});
