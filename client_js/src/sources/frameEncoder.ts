/**
 * Downscale and JPEG-encode a frame in the browser before it goes on the wire: a phone camera's 1080p frame
 * is ~10× the bytes of the 224-pixel crop the model sees, and upload is the scarce resource on mobile.
 */

export interface EncodedFrame {
  data: Uint8Array;
  format: 'jpeg';
  width: number;
  height: number;
  /** capture time, seconds since the epoch (client clock), sent as the frame's ts */
  ts: number;
}

export interface EncodeOptions {
  /** the shorter image side after downscaling; the server resizes the short side to 224 and centre-crops */
  shortSide: number;
  /** JPEG quality 0..1 */
  quality: number;
}

/** Output size for a source: short side scaled to `shortSide`, never upscaled, aspect kept. */
export function scaledSize(width: number, height: number, shortSide: number): { width: number; height: number } {
  const scale = Math.min(1, shortSide / Math.min(width, height));
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

export class FrameEncoder {
  private canvas: HTMLCanvasElement | OffscreenCanvas;
  private ctx: CanvasRenderingContext2D | OffscreenCanvasRenderingContext2D;

  constructor(public options: EncodeOptions) {
    this.canvas = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(1, 1) : document.createElement('canvas');
    const ctx = this.canvas.getContext('2d', { alpha: false }) as CanvasRenderingContext2D | OffscreenCanvasRenderingContext2D | null;
    if (!ctx) throw new Error('this browser cannot draw to a canvas');
    this.ctx = ctx;
  }

  async encode(source: CanvasImageSource, sourceWidth: number, sourceHeight: number, ts: number): Promise<EncodedFrame> {
    const { width, height } = scaledSize(sourceWidth, sourceHeight, this.options.shortSide);
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
    this.ctx.imageSmoothingQuality = 'high';
    this.ctx.drawImage(source, 0, 0, width, height);
    const blob = await this.toJpeg();
    return { data: new Uint8Array(await blob.arrayBuffer()), format: 'jpeg', width, height, ts };
  }

  private toJpeg(): Promise<Blob> {
    const c = this.canvas;
    if ('convertToBlob' in c) return c.convertToBlob({ type: 'image/jpeg', quality: this.options.quality });
    return new Promise((resolve, reject) =>
      c.toBlob((b) => (b ? resolve(b) : reject(new Error('JPEG encoding failed'))), 'image/jpeg', this.options.quality),
    );
  }
}
