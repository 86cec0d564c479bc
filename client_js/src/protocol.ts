/**
 * Wire codec of the streaming protocol (docs/protocol.md): msgpack maps in binary WebSocket frames, arrays as
 * {dtype, shape, data}. The message types come from protocol.generated.ts (generated from server/protocol.py).
 */
import { Decoder, Encoder } from '@msgpack/msgpack';
import type {
  Array as WireArray,
  BackfillFrame,
  ClientMessage,
  CompactMap,
  FrameData,
  FullMap,
  ServerMessage,
} from './protocol.generated.ts';
import type { FramePoints } from './viewer/growingPointCloud.ts';

import { CLOSE_CODES, SERVER_MESSAGE_TYPES } from './protocol.generated.ts';

export type * from './protocol.generated.ts';
// the protocol's constants are generated too (never copied by hand): a change in server/protocol.py reaches
// them through `npm run gen:types`, and the staleness test fails until it has
export {
  CLIENT_MESSAGE_TYPES,
  DROP_REASONS,
  ERROR_CODES,
  MAX_SEQ,
  MAX_SERVER_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  SERVER_MESSAGE_TYPES,
  SUBPROTOCOL,
  TOKEN_SUBPROTOCOL_PREFIX,
} from './protocol.generated.ts';

/** WebSocket close codes (server/protocol.py CLOSE_*). */
export const CloseCode = CLOSE_CODES;

// undefined fields are left out: the server refuses unknown keys but accepts missing optional ones
const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

export function encodeClientMessage(msg: ClientMessage): Uint8Array {
  return encoder.encode(msg);
}

export class WireError extends Error {}

/** Bytes of one WebSocket message → a server message. Checks the envelope; the fields are the server's. */
export function decodeServerMessage(data: ArrayBuffer | Uint8Array): ServerMessage {
  let obj: unknown;
  try {
    obj = decoder.decode(data instanceof Uint8Array ? data : new Uint8Array(data));
  } catch (err) {
    throw new WireError(`not a msgpack message: ${(err as Error).message}`);
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new WireError('a message must be a msgpack map');
  const type = (obj as { type?: unknown }).type;
  if (!(SERVER_MESSAGE_TYPES as readonly unknown[]).includes(type)) throw new WireError(`unknown message type ${JSON.stringify(type)}`);
  return obj as ServerMessage;
}

// ---------------------------------------------------------------------------------------------- arrays

/** IEEE half → float32 for all 65,536 bit patterns: one table lookup per value beats bit twiddling in JS. */
const HALF_TO_FLOAT = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) table[h] = sign * 2 ** -14 * (frac / 1024);
    else if (exp === 31) table[h] = frac ? NaN : sign * Infinity;
    else table[h] = sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return table;
})();

export function halfToFloat(bits: number): number {
  return HALF_TO_FLOAT[bits & 0xffff];
}

const ITEM_SIZE = { float32: 4, float16: 2, int16: 2, uint16: 2, uint8: 1 } as const;

/**
 * A typed view of an array's bytes (no copy when aligned). float16 comes back as its raw Uint16 bits.
 * Little-endian data read as host order: every browser platform is little-endian.
 */
export function arrayData(a: WireArray): Float32Array | Int16Array | Uint16Array | Uint8Array {
  const n = a.shape.reduce((p, d) => p * d, 1);
  const size = ITEM_SIZE[a.dtype];
  if (a.data.byteLength !== n * size) {
    throw new WireError(`array data holds ${a.data.byteLength} bytes, shape [${a.shape}] ${a.dtype} needs ${n * size}`);
  }
  // msgpack hands out views into the message buffer; typed arrays need offsets aligned to their item size
  const bytes = a.data.byteOffset % size === 0 ? a.data : a.data.slice();
  switch (a.dtype) {
    case 'float32':
      return new Float32Array(bytes.buffer, bytes.byteOffset, n);
    case 'int16':
      return new Int16Array(bytes.buffer, bytes.byteOffset, n);
    case 'float16':
    case 'uint16':
      return new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    case 'uint8':
      return bytes;
  }
}

/** float32 values of a float32 or float16 array (float16 expanded through the table). */
export function floatData(a: WireArray): Float32Array {
  const d = arrayData(a);
  if (a.dtype === 'float32') return d as Float32Array;
  if (a.dtype !== 'float16') throw new WireError(`expected float32 or float16, got ${a.dtype}`);
  const bits = d as Uint16Array;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = HALF_TO_FLOAT[bits[i]];
  return out;
}

// ---------------------------------------------------------------------------------------------- pointmaps

export interface DecodeOptions {
  /** 'full' maps only: keep every stride-th row and column (compact maps are strided by the server) */
  stride?: number;
}

/** One frame's map → points for the viewer. */
export function decodeMap(map: FullMap | CompactMap, options: DecodeOptions = {}): FramePoints {
  return map.encoding === 'compact' ? decodeCompact(map) : decodeFull(map, Math.max(1, options.stride ?? 1));
}

function decodeCompact(map: CompactMap): FramePoints {
  const q = arrayData(map.positions);
  if (map.positions.dtype !== 'int16') throw new WireError(`compact positions must be int16, got ${map.positions.dtype}`);
  const count = map.positions.shape[0] ?? 0;
  const positions = new Float32Array(count * 3);
  const scale = map.scale;
  for (let i = 0; i < count * 3; i++) positions[i] = q[i] * scale;
  const conf = floatData(map.conf);
  const colors = arrayData(map.colors) as Uint8Array;
  if (conf.length !== count || colors.length !== count * 3) throw new WireError('compact map arrays disagree on the point count');
  return { count, positions, conf, colors };
}

function decodeFull(map: FullMap, stride: number): FramePoints {
  const [height, width] = map.pts3d.shape;
  const pts = arrayData(map.pts3d);
  const half = map.pts3d.dtype === 'float16';
  const confRaw = arrayData(map.conf);
  const confHalf = map.conf.dtype === 'float16';
  const rgb = arrayData(map.colors) as Uint8Array;
  if (confRaw.length !== width * height || rgb.length !== width * height * 3) throw new WireError('full map arrays disagree on the image size');
  const cols = Math.ceil(width / stride);
  const rows = Math.ceil(height / stride);
  const count = cols * rows;
  const positions = new Float32Array(count * 3);
  const conf = new Float32Array(count);
  const colors = new Uint8Array(count * 3);
  let o = 0;
  for (let y = 0; y < height; y += stride) {
    for (let x = 0; x < width; x += stride) {
      const i = y * width + x;
      for (let k = 0; k < 3; k++) {
        positions[o * 3 + k] = half ? HALF_TO_FLOAT[pts[i * 3 + k]] : pts[i * 3 + k];
        colors[o * 3 + k] = rgb[i * 3 + k];
      }
      conf[o] = confHalf ? HALF_TO_FLOAT[confRaw[i]] : confRaw[i];
      o++;
    }
  }
  return { count, positions, conf, colors };
}

/** The confidence drawn for backfilled points, which carry none: the least a point must have had to pass the
 * session's filter, (conf - 1) / conf > conf_thresh. A slider above the session's threshold hides them. */
export function backfillConfidence(confThresh: number): number {
  return 1 / (1 - Math.min(Math.max(confThresh, 0), 0.999));
}

/** One backfilled frame → points for the viewer, every point at confidence `conf`. */
export function decodeBackfillFrame(frame: BackfillFrame, conf: number): FramePoints {
  const positions = floatData(frame.positions);
  const colors = arrayData(frame.colors) as Uint8Array;
  const count = frame.positions.shape[0] ?? 0;
  if (positions.length !== count * 3 || colors.length !== count * 3) throw new WireError('backfill arrays disagree on the point count');
  return { count, positions, conf: new Float32Array(count).fill(conf), colors };
}

/** Size of the map's payload on the wire (for the overlay's bytes-per-frame). */
export function mapBytes(frame: FrameData): number {
  const m = frame.map;
  return m.encoding === 'compact'
    ? m.positions.data.byteLength + m.colors.data.byteLength + m.conf.data.byteLength
    : m.pts3d.data.byteLength + m.conf.data.byteLength + m.colors.data.byteLength;
}
