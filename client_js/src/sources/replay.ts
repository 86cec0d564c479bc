/**
 * Replays a local video file, or a set of images in name order, at a chosen rate. Unlike the camera, a
 * replay never skips: when the in-flight limit is reached it waits, so every chosen frame reaches the model
 * (the server may still drop frames under its own frame policy).
 */
import { FrameEncoder, type EncodeOptions } from './frameEncoder.ts';
import type { FrameSink, FrameSource } from './source.ts';
import { nowSeconds } from '../stats.ts';

export interface ReplayOptions extends EncodeOptions {
  /** frames sent per second; for a video also the sampling rate in video time */
  fps: number;
  loop?: boolean;
}

/** "frame_2.png" before "frame_10.png". */
export function naturalCompare(a: string, b: string): number {
  return a.localeCompare(b, undefined, { numeric: true, sensitivity: 'base' });
}

export function isVideoFile(file: { type: string; name: string }): boolean {
  return file.type.startsWith('video/') || /\.(mp4|webm|mov|m4v|mkv|ogv)$/i.test(file.name);
}

/** Timestamps (video seconds) at which a video of `duration` seconds is sampled at `fps`. */
export function sampleTimes(duration: number, fps: number): number[] {
  if (!(duration > 0) || !(fps > 0)) return [];
  const n = Math.max(1, Math.floor(duration * fps + 1e-6));
  // stay a hair before the end: seeking to exactly `duration` yields no frame in some browsers
  return Array.from({ length: n }, (_, i) => Math.min(i / fps, Math.max(0, duration - 1e-3)));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class ReplaySource implements FrameSource {
  readonly kind = 'replay' as const;
  readonly label: string;
  onEnded: () => void = () => {};
  private stopped = false;
  private done = 0;
  private total = 0;
  private encoder: FrameEncoder;
  private files: File[];

  constructor(files: File[], private video: HTMLVideoElement, private options: ReplayOptions) {
    this.files = [...files].sort((a, b) => naturalCompare(a.name, b.name));
    this.encoder = new FrameEncoder(options);
    const videos = this.files.filter(isVideoFile);
    this.label = videos.length ? videos[0].name : `${this.files.length} images`;
  }

  async start(sink: FrameSink): Promise<void> {
    this.stopped = false;
    const video = this.files.find(isVideoFile);
    const run = video ? () => this.playVideo(video, sink) : () => this.playImages(this.files.filter((f) => f.type.startsWith('image/') || /\.(png|jpe?g|webp|bmp)$/i.test(f.name)), sink);
    // runs in the background; start() returns once the replay is under way
    void (async () => {
      do {
        await run();
      } while (this.options.loop && !this.stopped);
      if (!this.stopped) this.onEnded();
    })().catch((err) => {
      console.error('replay failed', err);
      this.onEnded();
    });
  }

  stop(): void {
    this.stopped = true;
  }

  progress(): number | null {
    return this.total ? this.done / this.total : null;
  }

  /** frames this replay sends (images, or video samples at the chosen rate); 0 until known */
  get frameTotal(): number {
    return this.total;
  }

  private async send(sink: FrameSink, source: CanvasImageSource, w: number, h: number, due: number): Promise<void> {
    // pace to the chosen rate, then wait for room in flight (never skip: this is a recording)
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    while (!sink.ready() && !this.stopped) await sleep(10);
    if (this.stopped) return;
    sink.push(await this.encoder.encode(source, w, h, nowSeconds()));
  }

  private async playImages(images: File[], sink: FrameSink): Promise<void> {
    this.total = images.length;
    this.done = 0;
    const period = 1000 / this.options.fps;
    let due = performance.now();
    for (const file of images) {
      if (this.stopped) return;
      const bitmap = await createImageBitmap(file);
      try {
        await this.send(sink, bitmap, bitmap.width, bitmap.height, due);
      } finally {
        bitmap.close();
      }
      due = Math.max(due + period, performance.now());
      this.done++;
    }
  }

  private async playVideo(file: File, sink: FrameSink): Promise<void> {
    const v = this.video;
    const url = URL.createObjectURL(file);
    try {
      v.srcObject = null;
      v.muted = true;
      v.playsInline = true;
      v.src = url;
      await new Promise<void>((resolve, reject) => {
        v.onloadeddata = () => resolve();
        v.onerror = () => reject(new Error(`cannot play ${file.name} in this browser`));
      });
      const times = sampleTimes(v.duration, this.options.fps);
      this.total = times.length;
      this.done = 0;
      const period = 1000 / this.options.fps;
      let due = performance.now();
      for (const t of times) {
        if (this.stopped) return;
        await seek(v, t);
        await this.send(sink, v, v.videoWidth, v.videoHeight, due);
        due = Math.max(due + period, performance.now());
        this.done++;
      }
    } finally {
      v.removeAttribute('src');
      v.load();
      URL.revokeObjectURL(url);
    }
  }
}

function seek(v: HTMLVideoElement, t: number): Promise<void> {
  return new Promise((resolve) => {
    if (Math.abs(v.currentTime - t) < 1e-4 && v.readyState >= 2) return resolve();
    v.addEventListener('seeked', () => resolve(), { once: true });
    v.currentTime = t;
  });
}
