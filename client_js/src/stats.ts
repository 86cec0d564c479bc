/** The overlay's numbers: event rates over a sliding window, latency, drops. Clock injectable for tests. */

export type Clock = () => number;
const defaultClock: Clock = () => performance.now();

/** Events per second over the last `windowMs`. */
export class RateMeter {
  private times: number[] = [];
  total = 0;

  constructor(private windowMs = 2000, private clock: Clock = defaultClock) {}

  mark(): void {
    this.times.push(this.clock());
    this.total++;
    this.trim();
  }

  rate(): number {
    this.trim();
    if (this.times.length === 0) return 0;
    const now = this.clock();
    // a young meter divides by the time it has really been counting, not by the whole window
    const span = Math.max(Math.min(this.windowMs, now - this.times[0]), 1000 / 60);
    return this.times.length < 2 ? 1000 / this.windowMs : ((this.times.length - 1) * 1000) / span;
  }

  reset(): void {
    this.times = [];
    this.total = 0;
  }

  private trim(): void {
    const cutoff = this.clock() - this.windowMs;
    let i = 0;
    while (i < this.times.length && this.times[i] < cutoff) i++;
    if (i) this.times.splice(0, i);
  }
}

/** Exponentially weighted mean (latency, decode time): steady enough to read, quick to follow changes. */
export class Ewma {
  value: number | null = null;
  last: number | null = null;

  constructor(private alpha = 0.2) {}

  add(x: number): void {
    this.last = x;
    this.value = this.value === null ? x : this.value + this.alpha * (x - this.value);
  }

  reset(): void {
    this.value = this.last = null;
  }
}

/** Client clock in seconds since the epoch, as the protocol's `ts` fields carry it. */
export function nowSeconds(): number {
  return (performance.timeOrigin + performance.now()) / 1000;
}

export interface OverlayNumbers {
  sentPerSecond: number;
  receivedPerSecond: number;
  latencyMs: number | null;
  pointsShown: number;
  framesDropped: number;
  framesSent: number;
  resultsReceived: number;
}

export function formatCount(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 1 : 2)} M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(0)} k`;
  return String(n);
}

export function formatBytes(n: number): string {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(2)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}
