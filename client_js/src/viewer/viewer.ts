/**
 * The 3D view: a three.js scene with the growing point cloud and the trajectory, orbit controls (mouse and
 * touch) and a follow-the-camera mode that trails the newest pose.
 */
import {
  AxesHelper,
  Color,
  Group,
  Matrix4,
  PerspectiveCamera,
  Points,
  Scene,
  Sphere,
  Vector3,
  WebGLRenderer,
} from 'three';
import { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
import { GrowingPointCloud, type FramePoints, type WriteReport } from './growingPointCloud.ts';
import { colorModeIndex, createPointMaterial, type ColorMode } from './pointMaterial.ts';
import { TrajectoryView, type CameraToWorld } from './trajectory.ts';

export type ViewMode = 'orbit' | 'follow';

export interface ViewerOptions {
  maxPoints: number;
}

export class Viewer {
  readonly cloud: GrowingPointCloud;
  readonly trajectory = new TrajectoryView();
  readonly renderer: WebGLRenderer;
  readonly camera = new PerspectiveCamera(60, 1, 0.001, 1000);
  readonly controls: OrbitControls;
  private scene = new Scene();
  /** The service's frame is OpenCV's (y down, z forward); three.js looks down -z with y up. */
  private world = new Group();
  private material = createPointMaterial();
  private points: Points;
  private mode: ViewMode = 'orbit';
  private framedOnce = false;
  /** the cloud's robust bounds (world frame) and the cloud version they were computed for */
  private robust = { sphere: new Sphere(), version: -1 };
  private frameRequested = false;
  private disposed = false;
  /** frames rendered; the e2e test reads it to know the canvas is alive */
  renderedFrames = 0;

  constructor(private container: HTMLElement, options: ViewerOptions) {
    this.cloud = new GrowingPointCloud({ maxPoints: options.maxPoints, initialCapacity: 1 << 19 });
    this.renderer = new WebGLRenderer({ antialias: false, powerPreference: 'high-performance', preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
    this.renderer.setClearColor(new Color(0x0d1117));
    container.appendChild(this.renderer.domElement);
    this.renderer.domElement.classList.add('viewer-canvas');

    this.world.rotation.x = Math.PI;
    this.scene.add(this.world);
    this.points = new Points(this.cloud.geometry, this.material);
    this.points.frustumCulled = false;
    this.world.add(this.points);
    this.world.add(this.trajectory.object);
    const axes = new AxesHelper(0.1);
    this.world.add(axes);

    this.camera.position.set(0, 0.3, 1.2);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.enableDamping = true;
    this.controls.screenSpacePanning = true;
    this.controls.addEventListener('change', () => this.requestRender());
    // grabbing the view while following hands control back to the user
    this.controls.addEventListener('start', () => {
      if (this.mode === 'follow') this.setMode('orbit');
    });
    this.material.uniforms.pixelRatio.value = this.renderer.getPixelRatio();

    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
    this.loop();
  }

  onModeChange: (mode: ViewMode) => void = () => {};

  get pointsShown(): number {
    return this.cloud.pointsShown;
  }

  get pointSize(): number {
    return this.material.uniforms.pointSize.value as number;
  }

  get viewMode(): ViewMode {
    return this.mode;
  }

  setMode(mode: ViewMode): void {
    if (mode === this.mode) return;
    this.mode = mode;
    this.onModeChange(mode);
    this.requestRender();
  }

  addFrame(frameIndex: number, points: FramePoints): WriteReport {
    const report = this.cloud.writeFrame(frameIndex, points);
    if (!this.framedOnce && this.cloud.frameCount >= 1) {
      this.frameAll();
      this.framedOnce = true;
    }
    this.updateRanges();
    this.requestRender();
    return report;
  }

  hasFrame(frameIndex: number): boolean {
    return this.cloud.slot(frameIndex) !== undefined;
  }

  setPose(frameIndex: number, cameraToWorld: CameraToWorld, focal?: number, width?: number, height?: number): void {
    if (focal && width && height) this.trajectory.shape = { focal, width, height };
    this.trajectory.setPose(frameIndex, cameraToWorld);
    this.requestRender();
  }

  setConfidenceThreshold(t: number): void {
    this.cloud.setConfidenceThreshold(t);
    this.material.uniforms.confThreshold.value = t;
    this.requestRender();
  }

  setColorMode(mode: ColorMode): void {
    this.material.uniforms.colorMode.value = colorModeIndex(mode);
    this.updateRanges();
    this.requestRender();
  }

  setPointSize(worldSize: number): void {
    this.material.uniforms.pointSize.value = worldSize;
    this.requestRender();
  }

  reset(): void {
    this.cloud.clear();
    this.trajectory.clear();
    this.framedOnce = false;
    this.requestRender();
  }

  /** The cloud's extent without its outliers (robust quantiles), in the scene's frame; cached per cloud change. */
  private robustBounds(): Sphere {
    if (this.robust.version !== this.cloud.version) {
      this.world.updateMatrixWorld();
      this.cloud.robustSphere(this.robust.sphere).applyMatrix4(this.world.matrixWorld);
      this.robust.version = this.cloud.version;
    }
    return this.robust.sphere;
  }

  /** Puts the cloud in view: its robust bounds, so a few far outliers do not shrink the scene to a dot; the
   * frustums and the point size follow the same scale. */
  frameAll(): void {
    const s = this.robustBounds().clone();
    const centre = s.center;
    const dist = s.radius / Math.sin((this.camera.fov * Math.PI) / 360) * 1.1;
    // look from behind the first camera, slightly above: the way the scene was filmed
    this.camera.position.copy(centre).add(new Vector3(0, s.radius * 0.4, dist));
    this.camera.near = Math.max(1e-4, dist / 1000);
    this.camera.far = dist * 100;
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(centre);
    this.controls.update();
    this.trajectory.scale = Math.max(1e-3, s.radius * 0.08);
    this.trajectory.rewriteAll();
    this.material.uniforms.pointSize.value = Math.max(1e-4, s.radius * 0.004);
    this.requestRender();
  }

  /** Sends pending buffer ranges to the GPU now, without drawing, and waits for it (benchmarks). three.js
   * updates an object's attributes before it looks at material visibility, so a hidden material uploads. */
  uploadNow(): void {
    this.material.visible = false;
    this.renderer.render(this.scene, this.camera);
    this.material.visible = true;
    this.renderer.getContext().finish();
    this.requestRender();
  }

  requestRender(): void {
    this.frameRequested = true;
  }

  dispose(): void {
    this.disposed = true;
    this.controls.dispose();
    this.cloud.dispose();
    this.renderer.dispose();
  }

  private updateRanges(): void {
    const [lo, hi] = this.cloud.confidenceRange();
    this.material.uniforms.confRange.value.set(Math.max(lo, 1e-6), Math.max(hi, lo * 1.0001 + 1e-6));
  }

  private updateDepthRange(): void {
    const s = this.robustBounds();
    const d = this.camera.position.distanceTo(s.center);
    this.material.uniforms.depthRange.value.set(Math.max(0, d - s.radius), d + s.radius);
  }

  private followStep(): void {
    const pose = this.trajectory.latestPose();
    if (!pose) return;
    const m = new Matrix4().multiplyMatrices(this.world.matrixWorld, pose);
    const centre = new Vector3().setFromMatrixPosition(m);
    const forward = new Vector3(0, 0, 1).transformDirection(m);
    const down = new Vector3(0, 1, 0).transformDirection(m);
    const back = this.trajectory.scale * 6;
    const wanted = centre.clone().addScaledVector(forward, -back).addScaledVector(down, -back * 0.5);
    const target = centre.clone().addScaledVector(forward, back * 2);
    // exponential smoothing: a jittery pose stream would otherwise shake the view
    this.camera.position.lerp(wanted, 0.15);
    this.controls.target.lerp(target, 0.15);
    this.camera.up.copy(down).negate();
    this.camera.lookAt(this.controls.target);
    this.frameRequested = true;
  }

  private resize(): void {
    const w = Math.max(1, this.container.clientWidth);
    const h = Math.max(1, this.container.clientHeight);
    this.renderer.setSize(w, h, false);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  private loop = (): void => {
    if (this.disposed) return;
    requestAnimationFrame(this.loop);
    if (this.mode === 'follow') this.followStep();
    else {
      this.camera.up.set(0, 1, 0);
      if (this.controls.update()) this.frameRequested = true;
    }
    if (!this.frameRequested) return;
    this.frameRequested = false;
    this.updateDepthRange();
    this.renderer.render(this.scene, this.camera);
    this.renderedFrames++;
  };
}
