/** The session logic with a fake socket: what it sends, what results do to the view, reconnects, close codes. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode, encode } from '@msgpack/msgpack';
import { Backoff } from '../src/backoff.ts';
import type { SocketLike } from '../src/connection.ts';
import { CloseCode } from '../src/protocol.ts';
import { LiveSession, type Banner, type ReconstructionView } from '../src/session.ts';
import { GrowingPointCloud, type FramePoints } from '../src/viewer/growingPointCloud.ts';
import { expected, fixture } from './helpers.ts';

class FakeSocket implements SocketLike {
  binaryType = 'blob';
  readyState = 0;
  bufferedAmount = 0;
  onopen: SocketLike['onopen'] = null;
  onclose: SocketLike['onclose'] = null;
  onerror: SocketLike['onerror'] = null;
  onmessage: SocketLike['onmessage'] = null;
  sent: Record<string, unknown>[] = [];
  constructor(readonly url: string, readonly protocols: string[] = []) {}
  send(data: Uint8Array) {
    this.sent.push(decode(data) as Record<string, unknown>);
  }
  close() {
    this.readyState = 3;
  }
  // --- what the server does
  accept(hello: Record<string, unknown> = fixtureMessage('hello.msgpack', { role: 'stream' })) {
    this.readyState = 1;
    this.onopen?.({});
    this.deliver(hello);
  }
  deliver(msg: Record<string, unknown>) {
    const bytes = encode(msg);
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

function fixtureMessage(name: string, patch: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...(decode(fixture(name)) as Record<string, unknown>), ...patch };
}

class CloudView implements ReconstructionView {
  cloud = new GrowingPointCloud({ initialCapacity: 4096 });
  poses = new Map<number, number[]>();
  resets = 0;
  addFrame(i: number, p: FramePoints) {
    return this.cloud.writeFrame(i, p);
  }
  hasFrame(i: number) {
    return this.cloud.slot(i) !== undefined;
  }
  setPose(i: number, m: number[]) {
    this.poses.set(i, m);
  }
  reset() {
    this.resets++;
    this.cloud.clear();
    this.poses.clear();
  }
  get pointsShown() {
    return this.cloud.pointsShown;
  }
}

function setup(role: 'stream' | 'watch' = 'stream') {
  const sockets: FakeSocket[] = [];
  const timers: { fn: () => void; ms: number }[] = [];
  const view = new CloudView();
  const banners: Banner[] = [];
  const session = new LiveSession(view, {
    url: 'ws://server/v1/sessions/abc/ws',
    token: 't0ken',
    role,
    maxInFlight: 2,
    decode: { stride: 1 },
    socketFactory: (url, protocols) => {
      const s = new FakeSocket(url, protocols);
      sockets.push(s);
      return s;
    },
    backoff: new Backoff({ baseMs: 100, jitter: 0 }),
    pingIntervalMs: 0,
    // the connection's timers run only when the test says so
    schedule: (fn, ms) => timers.push({ fn, ms }),
  });
  session.onBanner = (b) => {
    if (!('clear' in b)) banners.push(b);
  };
  session.start();
  return { session, sockets, timers, view, banners };
}

const jpeg = { data: new Uint8Array([0xff, 0xd8, 0xff, 0xd9]), format: 'jpeg' as const, width: 4, height: 3, ts: 1.5 };

test('frames go out with increasing seq, up to the in-flight limit', () => {
  const { session, sockets, banners } = setup();
  assert.equal(session.ready(), false, 'not ready before hello');
  sockets[0].accept(fixtureMessage('hello.msgpack', { role: 'stream', last_seq: null }));
  assert.ok(banners.some((b) => b.key === 'synthetic' && /synthetic/i.test(b.text)), 'synthetic weights are announced');
  session.push(jpeg);
  session.push(jpeg);
  assert.equal(session.ready(), false, 'two frames in flight');
  session.push(jpeg); // refused: counted as a client drop
  assert.deepEqual(sockets[0].sent.map((m) => [m.type, m.seq, m.format]), [['frame', 0, 'jpeg'], ['frame', 1, 'jpeg']]);
  assert.deepEqual(sockets[0].sent[0].data, jpeg.data);
  assert.equal(session.stats.droppedClient, 1);
  sockets[0].deliver({ type: 'dropped', seq: 0, reason: 'superseded' });
  assert.equal(session.framesInFlight, 1);
  assert.equal(session.stats.framesDropped, 2);
  assert.equal(session.ready(), true);
});

test('results put final and preview points and poses into the view', () => {
  const { session, sockets, view } = setup();
  sockets[0].accept();
  session.push(jpeg);
  const seq = sockets[0].sent[0].seq;
  sockets[0].deliver(fixtureMessage('result_full_f32.msgpack', { seq }));
  assert.equal(session.framesInFlight, 0);
  assert.equal(session.resultsReceived, 1);
  assert.equal(view.cloud.frameCount, 2, 'final of frame 6 and preview of frame 7');
  assert.equal(view.cloud.pointCount, 2 * 48);
  assert.ok(view.poses.has(6), 'valid pose drawn');
  assert.ok(!view.poses.has(7), 'invalid pose (c2w null) not drawn');
  assert.ok(session.stats.latencyMs.value! >= 0);
  sockets[0].deliver(fixtureMessage('result_compact.msgpack'));
  assert.equal(view.cloud.pointCount, 2 * 48 + 37);
  assert.equal(session.stats.lastFrameIndex, 20);
});

test('a dropped connection is reopened with backoff and resumes above the last accepted seq', () => {
  const { session, sockets, timers, banners } = setup();
  sockets[0].accept(fixtureMessage('hello.msgpack', { role: 'stream', last_seq: 3 }));
  session.push(jpeg);
  assert.equal(sockets[0].sent[0].seq, 4);
  sockets[0].drop(1006);
  assert.equal(session.connection.state.kind, 'reconnecting');
  assert.equal(session.stats.lostInReconnect, 1);
  assert.match(banners.at(-1)!.text, /reconnecting in 0\.1 s/);
  assert.equal(timers.length, 1);
  timers.shift()!.fn(); // server still down
  sockets[1].drop(1006);
  assert.equal(timers[0].ms, 200, 'second attempt waits twice as long');
  assert.match(banners.at(-1)!.text, /cannot reach the server/i);
  timers.shift()!.fn();
  assert.equal(sockets[2].url, sockets[0].url, 'same session');
  assert.deepEqual(sockets[2].protocols, sockets[0].protocols, 'same token');
  sockets[2].accept(fixtureMessage('hello.msgpack', { role: 'stream', last_seq: 10, frames_processed: 9 }));
  assert.equal(session.connection.state.kind, 'open');
  session.push(jpeg);
  assert.equal(sockets[2].sent[0].seq, 11);
  // after a good connection the backoff starts again from its base
  sockets[2].drop(CloseCode.SHUTDOWN); // the server restarting
  assert.equal(timers[0].ms, 100);
  assert.match(banners.at(-1)!.text, /restarting/);
});

test('a session resumed by a restarted server shows the frames it lost, and a replayed result counts once', () => {
  const { session, sockets, timers, banners, view } = setup();
  sockets[0].accept(fixtureMessage('hello.msgpack', { role: 'stream', last_seq: null }));
  for (let i = 0; i < 2; i++) session.push(jpeg);
  sockets[0].deliver(fixtureMessage('result_full_f32.msgpack', { seq: 0 }));
  sockets[0].deliver(fixtureMessage('result_full_f32.msgpack', { seq: 1 }));
  for (let i = 0; i < 2; i++) session.push(jpeg); // seqs 2, 3: in flight when the server dies
  sockets[0].drop(1012);
  timers.shift()!.fn();
  // restored from the state persisted after seq 0: seqs 1..3 are not in the stream any more
  sockets[1].accept(
    fixtureMessage('hello.msgpack', { role: 'stream', last_seq: 0, frames_processed: 1, resume: { frames_processed: 1, last_seq: 0 } }),
  );
  assert.deepEqual(session.stats.resumeGaps, [{ first: 1, last: 3 }]);
  const gap = banners.find((b) => b.key === 'resume-gap');
  assert.ok(gap && gap.level === 'warning' && /3 frames .*seq 1–3.* lost/.test(gap.text), gap?.text);
  session.push(jpeg);
  assert.equal(sockets[1].sent[0].seq, 4, 'a live source goes on above what it sent');
  // a plain reconnect (no restore) replays the latest results: drawn and counted once
  const before = { received: session.resultsReceived, points: view.cloud.pointCount };
  sockets[1].drop(1006);
  timers.shift()!.fn();
  sockets[2].accept(fixtureMessage('hello.msgpack', { role: 'stream', last_seq: 4, frames_processed: 2 }));
  sockets[2].deliver(fixtureMessage('result_full_f32.msgpack', { seq: 1 }));
  assert.equal(session.resultsReceived, before.received);
  assert.equal(view.cloud.pointCount, before.points);
  assert.equal(session.stats.resumeGaps.length, 1, 'no gap without a restore');
});

for (const [code, pattern] of [[4408, /evicted/], [4404, /no longer exists/], [4409, /took over/], [4401, /token/]] as const) {
  test(`close code ${code} ends the session with a clear message and no retry`, () => {
    const { session, sockets, timers, banners } = setup();
    sockets[0].accept();
    sockets[0].drop(code);
    assert.equal(session.connection.state.kind, 'closed');
    assert.equal(timers.length, 0);
    const last = banners.at(-1)!;
    assert.equal(last.level, 'error');
    assert.match(last.text, pattern);
  });
}

test('watch-only: never sends frames, still draws what the streamer produces', () => {
  const { session, sockets, view } = setup('watch');
  sockets[0].accept(fixtureMessage('hello.msgpack'));
  assert.equal(session.ready(), false);
  session.push(jpeg);
  assert.equal(sockets[0].sent.length, 0);
  sockets[0].deliver(fixtureMessage('result_full_f16.msgpack'));
  assert.equal(view.cloud.frameCount, 2);
  assert.equal(session.resultsReceived, 1);
});

test('reset asks the server; its ack clears the view and the counters', () => {
  const { session, sockets, view } = setup();
  sockets[0].accept();
  sockets[0].deliver(fixtureMessage('result_compact.msgpack'));
  assert.equal(view.cloud.pointCount, 37);
  session.reset();
  assert.deepEqual(sockets[0].sent.at(-1), { type: 'control', action: 'reset' });
  assert.equal(view.cloud.pointCount, 37, 'nothing cleared before the server confirms');
  sockets[0].deliver(fixtureMessage('ack.msgpack'));
  assert.equal(view.cloud.pointCount, 0);
  assert.equal(session.resultsReceived, 0);
});

test('a server error for a frame frees its in-flight slot and is shown', () => {
  const { session, sockets, banners } = setup();
  sockets[0].accept(fixtureMessage('hello.msgpack', { role: 'stream', last_seq: 16 }));
  session.push(jpeg);
  sockets[0].deliver(fixtureMessage('error.msgpack'));
  assert.equal(session.framesInFlight, 0);
  assert.match(banners.at(-1)!.text, /bad_image/);
});

test('the token travels as a subprotocol, never in the URL', () => {
  const { sockets } = setup();
  assert.equal(sockets[0].url, 'ws://server/v1/sessions/abc/ws');
  assert.deepEqual(sockets[0].protocols, ['spann3r.v1', 'spann3r.token.t0ken']);
});

test('a backfill draws the earlier frames it brings, keeps frames the live stream drew, and ends its banner', () => {
  const { session, sockets, view } = setup('watch');
  sockets[0].accept(fixtureMessage('hello.msgpack'));
  // the live stream already drew frame 1 (3 points): the backfill's 6 points for it must not replace them
  view.addFrame(1, { count: 3, positions: new Float32Array(9), conf: new Float32Array(3).fill(2), colors: null });
  let done = 0;
  session.onBackfilled = () => done++;
  sockets[0].deliver(fixtureMessage('backfill.msgpack'));
  const [f0] = expected.backfill.frames;
  const slot0 = view.cloud.slot(0)!;
  assert.equal(slot0.count, f0.count);
  assert.equal(view.cloud.slot(1)!.count, 3, 'the live points of frame 1 stay');
  // every backfilled point passed the session's filter: drawn at the least confidence that passes it
  const confThresh = session.settings!.conf_thresh!;
  const shown = view.cloud.pointsShown;
  assert.equal(shown, f0.count + 3);
  view.cloud.setConfidenceThreshold(1 / (1 - confThresh) + 1e-3);
  assert.equal(view.cloud.pointsShown, 3, 'a stricter threshold hides the backfilled points');
  assert.deepEqual(view.poses.get(0), f0.pose);
  assert.equal(view.poses.has(1), false, 'an invalid pose draws no frustum');
  assert.deepEqual(session.backfill, { chunks: 1, received: 1, frames: 2 });
  assert.equal(done, 1);
});
