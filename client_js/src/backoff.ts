/**
 * Reconnect delays: exponential with "full jitter" (uniform in [0, cap]), so that many phones dropped by
 * the same network blip do not all come back in the same instant.
 */
export interface BackoffOptions {
  baseMs?: number;
  maxMs?: number;
  factor?: number;
  /** 0..1 share of the delay drawn at random; 0 gives the deterministic exponential schedule */
  jitter?: number;
}

export class Backoff {
  private attempt = 0;
  readonly baseMs: number;
  readonly maxMs: number;
  readonly factor: number;
  readonly jitter: number;

  constructor(options: BackoffOptions = {}, private random: () => number = Math.random) {
    this.baseMs = options.baseMs ?? 500;
    this.maxMs = options.maxMs ?? 15_000;
    this.factor = options.factor ?? 2;
    this.jitter = options.jitter ?? 0.5;
  }

  get attempts(): number {
    return this.attempt;
  }

  /** Delay before the next attempt; each call counts one attempt. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.baseMs * this.factor ** this.attempt);
    this.attempt++;
    return Math.round(ceiling * (1 - this.jitter) + ceiling * this.jitter * this.random());
  }

  /** After a connection that worked: start again from the base delay. */
  reset(): void {
    this.attempt = 0;
  }
}
