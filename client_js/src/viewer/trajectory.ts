/**
 * The camera trajectory: one wire frustum per frame plus a path through the camera centres, in the same
 * preallocated-and-doubling style as the point cloud (a long session adds thousands of frustums).
 */
import { BufferAttribute, BufferGeometry, DynamicDrawUsage, LineBasicMaterial, LineSegments, Matrix4, Vector3 } from 'three';

/** 4×4 camera-to-world matrix, row-major, OpenCV camera axes (x right, y down, z forward). */
export type CameraToWorld = ArrayLike<number>;

export interface FrustumShape {
  /** focal length in pixels and the image size it refers to */
  focal: number;
  width: number;
  height: number;
}

const SEGMENTS_PER_FRUSTUM = 8 + 1; // 4 apex→corner, 4 image rectangle edges, 1 path segment to the previous centre
const VERTS_PER_FRUSTUM = SEGMENTS_PER_FRUSTUM * 2;

export function rowMajorToMatrix4(m: CameraToWorld, target = new Matrix4()): Matrix4 {
  return target.set(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12], m[13], m[14], m[15]);
}

export class TrajectoryView {
  readonly object: LineSegments;
  private positions: Float32Array;
  private colors: Float32Array;
  private geometry = new BufferGeometry();
  private poses = new Map<number, Matrix4>();
  private slotOf = new Map<number, number>();
  private used = 0;
  /** frustum depth in world units; set from the scene scale so frustums stay readable */
  scale = 0.05;
  shape: FrustumShape = { focal: 224 / (2 * Math.tan((60 * Math.PI) / 360)), width: 224, height: 224 };
  latestFrame = -1;

  constructor(initialFrustums = 256) {
    this.positions = new Float32Array(initialFrustums * VERTS_PER_FRUSTUM * 3);
    this.colors = new Float32Array(initialFrustums * VERTS_PER_FRUSTUM * 3);
    this.attach();
    this.object = new LineSegments(this.geometry, new LineBasicMaterial({ vertexColors: true }));
    this.object.frustumCulled = false;
  }

  get frustumCount(): number {
    return this.poses.size;
  }

  pose(frameIndex: number): Matrix4 | undefined {
    return this.poses.get(frameIndex);
  }

  latestPose(): Matrix4 | undefined {
    return this.poses.get(this.latestFrame);
  }

  /** Adds or replaces (preview → final) the pose of one frame. */
  setPose(frameIndex: number, cameraToWorld: CameraToWorld): void {
    const m = rowMajorToMatrix4(cameraToWorld);
    this.poses.set(frameIndex, m);
    let slot = this.slotOf.get(frameIndex);
    if (slot === undefined) {
      slot = this.used++;
      this.slotOf.set(frameIndex, slot);
      if (this.used * VERTS_PER_FRUSTUM * 3 > this.positions.length) this.grow();
    }
    const previousLatest = this.latestFrame;
    this.latestFrame = Math.max(this.latestFrame, frameIndex);
    this.writeFrustum(frameIndex, slot);
    // the previously newest frustum loses its highlight
    if (previousLatest >= 0 && previousLatest !== this.latestFrame) {
      const prevSlot = this.slotOf.get(previousLatest);
      if (prevSlot !== undefined) this.writeFrustum(previousLatest, prevSlot);
    }
    this.geometry.setDrawRange(0, this.used * VERTS_PER_FRUSTUM);
  }

  rewriteAll(): void {
    for (const [frame, slot] of this.slotOf) this.writeFrustum(frame, slot);
  }

  clear(): void {
    this.poses.clear();
    this.slotOf.clear();
    this.used = 0;
    this.latestFrame = -1;
    this.geometry.setDrawRange(0, 0);
  }

  private attach(): void {
    this.geometry.setAttribute('position', new BufferAttribute(this.positions, 3).setUsage(DynamicDrawUsage));
    this.geometry.setAttribute('color', new BufferAttribute(this.colors, 3).setUsage(DynamicDrawUsage));
  }

  private grow(): void {
    const positions = new Float32Array(this.positions.length * 2);
    const colors = new Float32Array(this.colors.length * 2);
    positions.set(this.positions);
    colors.set(this.colors);
    this.positions = positions;
    this.colors = colors;
    this.geometry.dispose();
    this.attach();
  }

  private writeFrustum(frameIndex: number, slot: number): void {
    const m = this.poses.get(frameIndex)!;
    const { focal, width, height } = this.shape;
    const d = this.scale;
    // an untrained model can report a focal near 0; cap the drawn field of view at ~120° so a bad focal
    // does not turn every frustum into a screen-filling fan
    const tanMax = 1.7;
    const hw = Math.min(width / 2 / Math.max(focal, 1e-6), tanMax) * d;
    const hh = Math.min(height / 2 / Math.max(focal, 1e-6), tanMax) * d;
    const apex = new Vector3(0, 0, 0).applyMatrix4(m);
    const corners = [
      new Vector3(-hw, -hh, d),
      new Vector3(hw, -hh, d),
      new Vector3(hw, hh, d),
      new Vector3(-hw, hh, d),
    ].map((c) => c.applyMatrix4(m));
    const prev = this.poses.get(frameIndex - 1);
    const prevCentre = prev ? new Vector3(0, 0, 0).applyMatrix4(prev) : apex;
    const verts: Vector3[] = [];
    for (const c of corners) verts.push(apex, c);
    for (let i = 0; i < 4; i++) verts.push(corners[i], corners[(i + 1) % 4]);
    verts.push(prevCentre, apex);
    const latest = frameIndex === this.latestFrame;
    const rgb = latest ? [1.0, 0.35, 0.2] : [0.3, 0.75, 1.0];
    const base = slot * VERTS_PER_FRUSTUM;
    for (let v = 0; v < VERTS_PER_FRUSTUM; v++) {
      const p = verts[v];
      this.positions[(base + v) * 3] = p.x;
      this.positions[(base + v) * 3 + 1] = p.y;
      this.positions[(base + v) * 3 + 2] = p.z;
      // the path segment is dimmer than the frustum itself
      const k = v >= 16 ? 0.6 : 1.0;
      this.colors[(base + v) * 3] = rgb[0] * k;
      this.colors[(base + v) * 3 + 1] = rgb[1] * k;
      this.colors[(base + v) * 3 + 2] = rgb[2] * k;
    }
    const pos = this.geometry.getAttribute('position') as BufferAttribute;
    const col = this.geometry.getAttribute('color') as BufferAttribute;
    pos.addUpdateRange(base * 3, VERTS_PER_FRUSTUM * 3);
    col.addUpdateRange(base * 3, VERTS_PER_FRUSTUM * 3);
    pos.needsUpdate = col.needsUpdate = true;
  }
}
