/**
 * Point storage for the live view: one set of typed arrays that the GPU buffers mirror, allocated ahead of
 * time and grown by doubling, so a new frame costs one copy into the arrays plus one partial upload
 * (`bufferSubData` of just that frame's range) — never a reallocation per frame.
 *
 * Each frame owns a slot (offset, count). The service first sends a frame's *preview* and, one frame later,
 * its *final* pointmap; the final overwrites the preview's slot in place. When the point budget is reached
 * the oldest frames' slots are recycled (ring order) so memory stays bounded on phones.
 */
import { BufferAttribute, BufferGeometry, DynamicDrawUsage, Sphere, Vector3 } from 'three';

/** One frame's points, decoded from the wire (see protocol.ts). */
export interface FramePoints {
  count: number;
  /** xyz per point, length count*3, in the session's global frame (camera of frame 0, OpenCV axes) */
  positions: Float32Array;
  /** confidence per point (>= 1 from the model), length count */
  conf: Float32Array;
  /** rgb per point (0..255), length count*3; null paints points grey */
  colors: Uint8Array | null;
}

export interface FrameSlot {
  offset: number;
  /** points reserved; a later write of the same frame with at most this many points stays in place */
  capacity: number;
  count: number;
  /** points of this slot whose confidence is at or above the current threshold */
  shown: number;
}

export interface WriteReport {
  offset: number;
  count: number;
  /** true when this write enlarged the buffers (the next render uploads everything once) */
  grew: boolean;
  /** frames whose slots were recycled to make room */
  recycled: number[];
  /** bytes this write asks the GPU to take (partial upload), or the full buffers after a growth */
  uploadBytes: number;
}

/** Bytes per stored point: float32 xyz + uint8 rgb + float32 confidence. */
export const BYTES_PER_POINT = 12 + 3 + 4;

/** Confidence written into unused slot space: the shader hides it whatever the threshold (model conf >= 1). */
const HIDDEN_CONF = 0;

export interface GrowingPointCloudOptions {
  /** points allocated up front */
  initialCapacity?: number;
  /** hard limit; beyond it the oldest frames are recycled */
  maxPoints?: number;
}

export class GrowingPointCloud {
  readonly geometry = new BufferGeometry();
  readonly maxPoints: number;
  private positions: Float32Array;
  private colors: Uint8Array;
  private conf: Float32Array;
  private slots = new Map<number, FrameSlot>();
  /** frame indices in the order their slots were allocated (oldest first) — the recycling order */
  private allocationOrder: number[] = [];
  private cursor = 0;
  private highWater = 0;
  private threshold = 0;
  private shownTotal = 0;
  private heldTotal = 0;
  private confLo = Infinity;
  private confHi = -Infinity;
  private bounds = { min: new Vector3(Infinity, Infinity, Infinity), max: new Vector3(-Infinity, -Infinity, -Infinity) };
  private changes = 0;
  /** how many times the arrays were reallocated (stays logarithmic in the number of points) */
  reallocations = 0;
  /** frames whose points were recycled because the budget was full */
  recycledFrames = 0;

  constructor(options: GrowingPointCloudOptions = {}) {
    this.maxPoints = Math.max(1, Math.floor(options.maxPoints ?? 8_000_000));
    const initial = Math.min(this.maxPoints, Math.max(1, Math.floor(options.initialCapacity ?? 1 << 20)));
    this.positions = new Float32Array(initial * 3);
    this.colors = new Uint8Array(initial * 3);
    this.conf = new Float32Array(initial);
    this.attachAttributes();
    this.geometry.setDrawRange(0, 0);
  }

  /** points the current arrays can hold */
  get capacity(): number {
    return this.conf.length;
  }

  /** points held, whatever their confidence */
  get pointCount(): number {
    return this.heldTotal;
  }

  /** points at or above the confidence threshold: what the user actually sees */
  get pointsShown(): number {
    return this.shownTotal;
  }

  get frameCount(): number {
    return this.slots.size;
  }

  get confidenceThreshold(): number {
    return this.threshold;
  }

  slot(frameIndex: number): Readonly<FrameSlot> | undefined {
    return this.slots.get(frameIndex);
  }

  /** Bumped by every change of the points or the threshold (caches of derived values compare it). */
  get version(): number {
    return this.changes;
  }

  /**
   * Bounds of the points shown, robust to outliers: per axis, the `tail` and 1 − `tail` quantiles of a sample of
   * at most `sampleSize` points, as a sphere around that box. A few far points (the usual failure of a pointmap:
   * sky, reflections, an untrained model) would otherwise set the whole view's scale.
   */
  robustSphere(target = new Sphere(), tail = 0.02, sampleSize = 20_000): Sphere {
    const sample = this.samplePositions(sampleSize);
    const n = sample[0].length;
    if (n === 0) return this.boundingSphere(target);
    const lo = new Vector3();
    const hi = new Vector3();
    for (let axis = 0; axis < 3; axis++) {
      const values = sample[axis].sort();
      lo.setComponent(axis, values[Math.floor(tail * (n - 1))]);
      hi.setComponent(axis, values[Math.ceil((1 - tail) * (n - 1))]);
    }
    target.center.copy(lo).add(hi).multiplyScalar(0.5);
    target.radius = Math.max(1e-6, lo.distanceTo(hi) / 2);
    return target;
  }

  /** Bounds of every point written so far, as a sphere (framing the view, the depth colour range). */
  boundingSphere(target = new Sphere()): Sphere {
    if (!Number.isFinite(this.bounds.min.x)) return target.set(new Vector3(), 1);
    target.center.copy(this.bounds.min).add(this.bounds.max).multiplyScalar(0.5);
    target.radius = Math.max(1e-6, this.bounds.min.distanceTo(this.bounds.max) / 2);
    return target;
  }

  /**
   * Writes (or overwrites) one frame's points and marks just that range for upload. A final output for a
   * frame whose preview is stored lands in the preview's slot: in place when it fits, extended in place
   * when the slot is the newest one (the usual case: the final of frame t-1 arrives before the preview of t).
   */
  writeFrame(frameIndex: number, frame: FramePoints): WriteReport {
    const count = frame.count;
    if (count > this.maxPoints) throw new RangeError(`one frame (${count} points) exceeds the point budget (${this.maxPoints})`);
    let slot = this.slots.get(frameIndex);
    let grew = false;
    let recycled: number[] = [];
    let uploadStart = 0;
    let uploadCount = 0;
    if (slot && count > slot.capacity) {
      const old = slot;
      this.releaseSlot(frameIndex);
      // the newest slot is extended from its own offset; any other one becomes a hidden hole
      if (old.offset + old.capacity === this.cursor) this.cursor = old.offset;
      ({ grew, recycled } = this.reserve(count));
      if (this.cursor !== old.offset) {
        this.hideRange(old.offset, old.capacity);
        uploadStart = old.offset;
        uploadCount = old.capacity;
      }
      slot = undefined;
    } else if (!slot) {
      ({ grew, recycled } = this.reserve(count));
    }
    if (!slot) {
      slot = { offset: this.cursor, capacity: count, count: 0, shown: 0 };
      this.cursor += count;
      this.highWater = Math.max(this.highWater, this.cursor);
      this.slots.set(frameIndex, slot);
      this.allocationOrder.push(frameIndex);
    }
    this.shownTotal -= slot.shown;
    this.heldTotal -= slot.count;
    slot.count = count;
    slot.shown = this.copyFrame(frame, slot.offset);
    if (count < slot.capacity) this.hideRange(slot.offset + count, slot.capacity - count);
    this.shownTotal += slot.shown;
    this.heldTotal += count;
    this.geometry.setDrawRange(0, this.highWater);
    this.changes++;

    let uploadBytes: number;
    if (grew) {
      // fresh attributes: the renderer uploads them whole on the next draw
      uploadBytes = this.highWater * BYTES_PER_POINT;
    } else {
      this.markForUpload(slot.offset, slot.capacity);
      if (uploadCount) this.markForUpload(uploadStart, uploadCount);
      uploadBytes = (slot.capacity + uploadCount) * BYTES_PER_POINT;
    }
    return { offset: slot.offset, count, grew, recycled, uploadBytes };
  }

  /** Changes the confidence threshold (the shader hides points below it) and recounts the points shown. */
  setConfidenceThreshold(threshold: number): void {
    this.threshold = threshold;
    let total = 0;
    for (const slot of this.slots.values()) {
      slot.shown = this.countShown(slot.offset, slot.count);
      total += slot.shown;
    }
    this.shownTotal = total;
    this.changes++;
  }

  /** Forgets every point; keeps the allocated buffers (a reset must not cost a reallocation). */
  clear(): void {
    this.slots.clear();
    this.allocationOrder = [];
    this.cursor = this.highWater = this.shownTotal = this.heldTotal = this.recycledFrames = 0;
    this.bounds.min.set(Infinity, Infinity, Infinity);
    this.bounds.max.set(-Infinity, -Infinity, -Infinity);
    this.confLo = Infinity;
    this.confHi = -Infinity;
    this.geometry.setDrawRange(0, 0);
    this.changes++;
  }

  /** Range of the confidences written since the last clear (the confidence colour map's range). Kept
   * while writing, because a scan of millions of points per frame would cost more than the frame itself. */
  confidenceRange(): [number, number] {
    return Number.isFinite(this.confLo) ? [this.confLo, this.confHi] : [1, 2];
  }

  dispose(): void {
    this.geometry.dispose();
  }

  // ------------------------------------------------------------------ internals

  /** x, y and z of up to `max` shown points, evenly spaced over the buffer (finite values only). */
  private samplePositions(max: number): [Float32Array, Float32Array, Float32Array] {
    const step = Math.max(1, Math.floor(this.highWater / max));
    const axes: [number[], number[], number[]] = [[], [], []];
    const t = this.threshold;
    for (let i = 0; i < this.highWater; i += step) {
      const c = this.conf[i];
      if (!(c > HIDDEN_CONF && c >= t)) continue;
      const x = this.positions[i * 3];
      const y = this.positions[i * 3 + 1];
      const z = this.positions[i * 3 + 2];
      if (!Number.isFinite(x + y + z)) continue;
      axes[0].push(x);
      axes[1].push(y);
      axes[2].push(z);
    }
    return [Float32Array.from(axes[0]), Float32Array.from(axes[1]), Float32Array.from(axes[2])];
  }

  /** Makes room for `count` points at the cursor: grow by doubling, else wrap and recycle the oldest frames. */
  private reserve(count: number): { grew: boolean; recycled: number[] } {
    let grew = false;
    const recycled: number[] = [];
    if (this.cursor + count > this.capacity && this.capacity < this.maxPoints) {
      this.grow(Math.min(this.maxPoints, Math.max(this.capacity * 2, this.cursor + count)));
      grew = true;
    }
    if (this.cursor + count > this.capacity) this.cursor = 0; // budget full: wrap over the oldest slots
    const start = this.cursor;
    const end = start + count;
    for (const frame of [...this.allocationOrder]) {
      const s = this.slots.get(frame)!;
      if (s.offset < end && s.offset + s.capacity > start) {
        this.releaseSlot(frame);
        recycled.push(frame);
        // the part of a recycled slot that the new frame does not overwrite must stop drawing
        const tail = s.offset + s.capacity - end;
        if (tail > 0) {
          this.hideRange(end, tail);
          this.markForUpload(end, tail);
        }
      }
    }
    this.recycledFrames += recycled.length;
    return { grew, recycled };
  }

  private releaseSlot(frameIndex: number): void {
    const s = this.slots.get(frameIndex);
    if (!s) return;
    this.shownTotal -= s.shown;
    this.heldTotal -= s.count;
    this.slots.delete(frameIndex);
    this.allocationOrder.splice(this.allocationOrder.indexOf(frameIndex), 1);
  }

  private hideRange(offset: number, count: number): void {
    this.conf.fill(HIDDEN_CONF, offset, offset + count);
  }

  private markForUpload(offset: number, count: number): void {
    const pos = this.geometry.getAttribute('position') as BufferAttribute;
    const col = this.geometry.getAttribute('color') as BufferAttribute;
    const cf = this.geometry.getAttribute('confidence') as BufferAttribute;
    pos.addUpdateRange(offset * 3, count * 3);
    col.addUpdateRange(offset * 3, count * 3);
    cf.addUpdateRange(offset, count);
    pos.needsUpdate = col.needsUpdate = cf.needsUpdate = true;
  }

  private grow(newCapacity: number): void {
    const positions = new Float32Array(newCapacity * 3);
    const colors = new Uint8Array(newCapacity * 3);
    const conf = new Float32Array(newCapacity);
    positions.set(this.positions.subarray(0, this.highWater * 3));
    colors.set(this.colors.subarray(0, this.highWater * 3));
    conf.set(this.conf.subarray(0, this.highWater));
    this.positions = positions;
    this.colors = colors;
    this.conf = conf;
    // dispose() makes the renderer free the old GL buffers; the new attributes upload whole on next draw.
    this.geometry.dispose();
    this.attachAttributes();
    this.reallocations++;
  }

  private attachAttributes(): void {
    this.geometry.setAttribute('position', new BufferAttribute(this.positions, 3).setUsage(DynamicDrawUsage));
    this.geometry.setAttribute('color', new BufferAttribute(this.colors, 3, true).setUsage(DynamicDrawUsage));
    this.geometry.setAttribute('confidence', new BufferAttribute(this.conf, 1).setUsage(DynamicDrawUsage));
    // culling is off for the cloud; a preset sphere spares three.js a scan of the partly unused arrays
    this.geometry.boundingSphere = new Sphere(new Vector3(), Infinity);
  }

  private countShown(offset: number, count: number): number {
    const t = this.threshold;
    const conf = this.conf;
    let shown = 0;
    for (let i = offset, end = offset + count; i < end; i++) if (conf[i] >= t && conf[i] > HIDDEN_CONF) shown++;
    return shown;
  }

  /** Points of a just-written frame that pass the threshold; also widens the confidence range. */
  private scanFrame(offset: number, count: number): number {
    const t = this.threshold;
    const conf = this.conf;
    let lo = this.confLo;
    let hi = this.confHi;
    let shown = 0;
    for (let i = offset, end = offset + count; i < end; i++) {
      const c = conf[i];
      if (c >= t && c > HIDDEN_CONF) shown++;
      if (c < lo) lo = c;
      if (c > hi) hi = c;
    }
    this.confLo = lo;
    this.confHi = hi;
    return shown;
  }

  /** Copies one frame into the arrays at `offset`; returns how many of its points pass the threshold. */
  private copyFrame(frame: FramePoints, offset: number): number {
    const { count, positions, conf, colors } = frame;
    this.positions.set(positions.subarray(0, count * 3), offset * 3);
    this.conf.set(conf.subarray(0, count), offset);
    if (colors) this.colors.set(colors.subarray(0, count * 3), offset * 3);
    else this.colors.fill(160, offset * 3, (offset + count) * 3);
    const min = this.bounds.min;
    const max = this.bounds.max;
    for (let i = 0; i < count; i++) {
      const x = positions[i * 3];
      const y = positions[i * 3 + 1];
      const z = positions[i * 3 + 2];
      // NaN fails every comparison, so a bad point cannot poison the bounds
      if (x < min.x) min.x = x;
      if (x > max.x) max.x = x;
      if (y < min.y) min.y = y;
      if (y > max.y) max.y = y;
      if (z < min.z) min.z = z;
      if (z > max.z) max.z = z;
    }
    return this.scanFrame(offset, count);
  }
}
