/**
 * Measures the client's cost per result message: msgpack decode + map decode (decode), and copying into the
 * GPU-mirrored arrays plus, in a browser, the render that uploads the new range (upload). Used by
 * `npm run bench` in Node and, through `?bench=1`, in the page itself (real WebGL).
 *
 * Messages are built here in the wire layout of server/protocol.py (the layout the fixture tests pin):
 * a result carries the final of frame t-1 and the preview of frame t, like the real stream.
 */
import { Encoder } from '@msgpack/msgpack';
import { decodeMap, decodeServerMessage, type ResultMsg } from '../protocol.ts';
import type { FramePoints, WriteReport } from '../viewer/growingPointCloud.ts';

export interface BenchConfig {
  name: string;
  encoding: 'compact' | 'full';
  /** compact: server-side stride; full: client-side stride */
  stride: number;
  dtype?: 'float32' | 'float16';
}

export const BENCH_CONFIGS: BenchConfig[] = [
  { name: 'compact stride 2 (browser default)', encoding: 'compact', stride: 2 },
  { name: 'compact stride 1', encoding: 'compact', stride: 1 },
  { name: 'compact stride 4', encoding: 'compact', stride: 4 },
  { name: 'full float16, client stride 2', encoding: 'full', stride: 2, dtype: 'float16' },
  { name: 'full float32, client stride 1', encoding: 'full', stride: 1, dtype: 'float32' },
];

const RES = 224;

/** Deterministic pseudo-random numbers (mulberry32): the same messages on every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function floatToHalf(v: number): number {
  const f32 = new Float32Array([v]);
  const x = new Uint32Array(f32.buffer)[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  const frac = (x >>> 13) & 0x3ff;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | frac;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** One frame's map as the server would send it: a tilted plane with noise in front of the camera. */
function makeMap(cfg: BenchConfig, frame: number, random: () => number): Record<string, unknown> {
  const step = cfg.encoding === 'compact' ? cfg.stride : 1;
  const side = Math.ceil(RES / step);
  const n = side * side;
  const xyz = new Float32Array(n * 3);
  const conf = new Float32Array(n);
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const u = ((i % side) * step) / RES - 0.5;
    const v = (Math.floor(i / side) * step) / RES - 0.5;
    const z = 2 + 0.3 * v + 0.02 * (random() - 0.5);
    xyz[i * 3] = u * z + frame * 0.01;
    xyz[i * 3 + 1] = v * z;
    xyz[i * 3 + 2] = z;
    conf[i] = 1 + 10 * random();
    rgb[i * 3] = (u + 0.5) * 255;
    rgb[i * 3 + 1] = (v + 0.5) * 255;
    rgb[i * 3 + 2] = 128;
  }
  if (cfg.encoding === 'compact') {
    const scale = 4 / 32767; // 4x headroom over a ~1 m extent, as the server picks it
    const q = new Int16Array(n * 3);
    for (let i = 0; i < n * 3; i++) q[i] = Math.round(xyz[i] / scale);
    const half = new Uint16Array(n);
    for (let i = 0; i < n; i++) half[i] = floatToHalf(conf[i]);
    return {
      encoding: 'compact', scale, stride: cfg.stride, clipped: 0,
      positions: { dtype: 'int16', shape: [n, 3], data: bytesOf(q) },
      colors: { dtype: 'uint8', shape: [n, 3], data: rgb },
      conf: { dtype: 'float16', shape: [n], data: bytesOf(half) },
    };
  }
  const half = cfg.dtype === 'float16';
  const toDtype = (a: Float32Array) => (half ? bytesOf(Uint16Array.from(a, floatToHalf)) : bytesOf(a));
  return {
    encoding: 'full',
    pts3d: { dtype: cfg.dtype, shape: [RES, RES, 3], data: toDtype(xyz) },
    conf: { dtype: cfg.dtype, shape: [RES, RES], data: toDtype(conf) },
    colors: { dtype: 'uint8', shape: [RES, RES, 3], data: rgb },
  };
}

const POSE = { c2w: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], valid: true };

/** `count` distinct result messages (final t-1 + preview t), encoded. */
export function makeResultMessages(cfg: BenchConfig, count: number, seed = 1): Uint8Array[] {
  const random = rng(seed);
  const enc = new Encoder();
  const out: Uint8Array[] = [];
  for (let t = 1; t <= count; t++) {
    const frame = (index: number, kind: string) => ({ index, seq: index, kind, map: makeMap(cfg, index, random), pose: POSE, focal: 211.5 });
    const msg = {
      type: 'result', seq: t, frame_index: t, ts: 0,
      final: frame(t - 1, 'final'), preview: frame(t, 'preview'),
      memory: null, timings: { server_s: 0.1 },
    };
    out.push(enc.encode(msg).slice());
  }
  return out;
}

export interface BenchView {
  addFrame(frameIndex: number, points: FramePoints): WriteReport;
  /** draw once, forcing the upload of what changed (browser only) */
  renderNow?(): void;
  readonly pointCount: number;
  readonly reallocations: number;
}

export interface Stats {
  median: number;
  p95: number;
  mean: number;
}

function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { median: q(0.5), p95: q(0.95), mean: xs.reduce((a, b) => a + b, 0) / xs.length };
}

export interface BenchResult {
  config: BenchConfig;
  messages: number;
  bytesPerMessage: number;
  pointsPerMessage: number;
  decodeMs: Stats;
  uploadMs: Stats;
  totalMs: Stats;
  pointsHeld: number;
  reallocations: number;
}

/** Runs `frames` results through decode → view, timing each part. Messages are reused cyclically. */
export function measure(cfg: BenchConfig, view: BenchView, messages: Uint8Array[], frames: number, now: () => number): BenchResult {
  const decodeMs: number[] = [];
  const uploadMs: number[] = [];
  const totalMs: number[] = [];
  let points = 0;
  const reallocationsBefore = view.reallocations;
  for (let t = 1; t <= frames; t++) {
    const bytes = messages[(t - 1) % messages.length];
    const t0 = now();
    const msg = decodeServerMessage(bytes) as ResultMsg;
    const fin = decodeMap(msg.final!.map, { stride: cfg.stride });
    const pre = decodeMap(msg.preview!.map, { stride: cfg.stride });
    const t1 = now();
    // frame indices come from the loop, not the (cycled) message, so the cloud grows like a real stream
    view.addFrame(t - 1, fin);
    view.addFrame(t, pre);
    view.renderNow?.();
    const t2 = now();
    decodeMs.push(t1 - t0);
    uploadMs.push(t2 - t1);
    totalMs.push(t2 - t0);
    points = pre.count;
  }
  const bytesPerMessage = messages.reduce((a, m) => a + m.byteLength, 0) / messages.length;
  return {
    config: cfg, messages: frames, bytesPerMessage, pointsPerMessage: points * 2,
    decodeMs: stats(decodeMs), uploadMs: stats(uploadMs), totalMs: stats(totalMs),
    pointsHeld: view.pointCount, reallocations: view.reallocations - reallocationsBefore,
  };
}
