/**
 * The device camera: rear camera on phones (facingMode "environment"), requested resolution and rate, frames
 * grabbed on a timer at the chosen rate, or (no rate chosen) whenever a result came back and freed room. When the in-flight limit is reached the frame is skipped before it
 * is encoded: a live camera should show the newest view, not a backlog.
 */
import { FrameEncoder, scaledSize, type EncodeOptions } from './frameEncoder.ts';
import type { FrameSink, FrameSource } from './source.ts';
import { nowSeconds } from '../stats.ts';

export interface CameraOptions extends EncodeOptions {
  fps: number;
  /** no rate fixed by the user: send a frame whenever the in-flight limit allows one (each result back frees
   * a credit), polling at `fps` (the server's limit); a frame not taken is not a skip */
  paced?: boolean;
  /** requested capture size (the browser picks the nearest the camera offers) */
  captureWidth: number;
  captureHeight: number;
  facingMode: 'environment' | 'user';
}

/** A camera problem worded for the user. */
export class CameraError extends Error {
  constructor(readonly reason: 'denied' | 'missing' | 'busy' | 'insecure' | 'unsupported' | 'other', message: string) {
    super(message);
  }
}

export function describeCameraError(err: unknown): CameraError {
  const name = (err as { name?: string })?.name ?? '';
  const text = (err as Error)?.message ?? String(err);
  switch (name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return new CameraError('denied', 'Camera access was refused. Allow the camera for this site in the browser settings, then try again.');
    case 'NotFoundError':
    case 'OverconstrainedError':
      return new CameraError('missing', 'No camera was found that matches the request.');
    case 'NotReadableError':
    case 'AbortError':
      return new CameraError('busy', 'The camera is in use by another application or could not be started.');
    default:
      return new CameraError('other', `The camera could not be opened: ${text}`);
  }
}

export class CameraSource implements FrameSource {
  readonly kind = 'camera' as const;
  label = 'camera';
  onEnded: () => void = () => {};
  private stream: MediaStream | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  private encoder: FrameEncoder;
  private busy = false;
  private pollFps = 30;

  constructor(private video: HTMLVideoElement, private options: CameraOptions) {
    this.encoder = new FrameEncoder(options);
  }

  /** Asks for the camera (the permission prompt) and starts the preview; no frames are sent yet. */
  async open(): Promise<void> {
    if (this.stream) return;
    if (!window.isSecureContext) {
      throw new CameraError('insecure', 'Browsers only give pages served over HTTPS (or from localhost) access to the camera. See client_js/README.md for HTTPS.');
    }
    if (!navigator.mediaDevices?.getUserMedia) throw new CameraError('unsupported', 'This browser has no camera API (getUserMedia).');
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: {
          facingMode: { ideal: this.options.facingMode },
          width: { ideal: this.options.captureWidth },
          height: { ideal: this.options.captureHeight },
          frameRate: { ideal: Math.max(this.options.fps, 15) },
        },
      });
    } catch (err) {
      throw describeCameraError(err);
    }
    const track = this.stream.getVideoTracks()[0];
    this.label = track?.label || 'camera';
    track?.addEventListener('ended', () => this.onEnded());
    this.video.srcObject = this.stream;
    this.video.muted = true;
    this.video.playsInline = true;
    await this.video.play();
  }

  /** The camera's frame size and the size the page uploads it at (known once the camera is open). */
  frameSizes(): { video: { width: number; height: number }; upload: { width: number; height: number } } | null {
    const v = this.video;
    if (!v.videoWidth || !v.videoHeight) return null;
    const video = { width: v.videoWidth, height: v.videoHeight };
    return { video, upload: scaledSize(video.width, video.height, this.options.shortSide) };
  }

  get paced(): boolean {
    return this.options.paced === true;
  }

  /** Paced: how often to look for room for a frame (the server's max_fps; more would be refused). */
  setPollRate(fps: number): void {
    this.pollFps = Math.max(1, Math.min(fps, 30));
  }

  async start(sink: FrameSink): Promise<void> {
    await this.open();
    const rate = this.options.paced ? this.pollFps : this.options.fps;
    this.timer = setInterval(() => void this.tick(sink), 1000 / rate);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.video.srcObject = null;
  }

  progress(): null {
    return null;
  }

  private async tick(sink: FrameSink): Promise<void> {
    const v = this.video;
    if (this.busy || v.readyState < 2 || !v.videoWidth) return;
    if (!sink.ready()) {
      if (!this.options.paced) sink.skipped(); // paced: no frame was due, the server is simply busy
      return;
    }
    this.busy = true;
    try {
      const ts = nowSeconds();
      sink.push(await this.encoder.encode(v, v.videoWidth, v.videoHeight, ts));
    } finally {
      this.busy = false;
    }
  }
}
