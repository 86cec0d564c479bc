/**
 * One live session as the page sees it: the connection, the frames in flight, what results do to the view,
 * and the numbers of the overlay. No DOM here, so the unit tests drive it with a fake socket.
 */
import { Backoff } from './backoff.ts';
import { lifeAfterClose, type SessionLife } from './lifecycle.ts';
import { StreamConnection, type ConnectionState, type SocketFactory } from './connection.ts';
import { backfillConfidence, decodeBackfillFrame, decodeMap, type DecodeOptions } from './protocol.ts';
import type { BackfillMsg, FrameData, HelloMsg, ServerMessage, SessionSettings } from './protocol.ts';
import type { EncodedFrame } from './sources/frameEncoder.ts';
import type { FrameSink } from './sources/source.ts';
import { Ewma, RateMeter, nowSeconds, type Clock } from './stats.ts';
import type { FramePoints, WriteReport } from './viewer/growingPointCloud.ts';

/** What the session needs from the 3D view (the real Viewer, or a bare point cloud in tests). */
export interface ReconstructionView {
  addFrame(frameIndex: number, points: FramePoints): WriteReport;
  setPose(frameIndex: number, cameraToWorld: number[], focal?: number, width?: number, height?: number): void;
  reset(): void;
  /** whether the view holds points of this frame (a backfill never replaces what the live stream drew) */
  hasFrame(frameIndex: number): boolean;
  readonly pointsShown: number;
}

/** How far the scene-so-far backfill of a late watcher has come. */
export interface BackfillProgress {
  chunks: number;
  received: number;
  frames: number;
}

export type BannerLevel = 'info' | 'warning' | 'error';
export interface Banner {
  /** stable key: a newer banner with the same key replaces the older one */
  key: string;
  level: BannerLevel;
  text: string;
}

export interface LiveSessionOptions {
  url: string;
  token: string;
  role: 'stream' | 'watch';
  /** most frames sent and not yet answered; more would only queue up on the server */
  maxInFlight?: number;
  /** upload backpressure: do not queue more than this many bytes in the socket */
  maxBufferedBytes?: number;
  decode?: DecodeOptions;
  socketFactory?: SocketFactory;
  backoff?: Backoff;
  clock?: Clock;
  pingIntervalMs?: number;
  /** timer for reconnect delays and pings (tests run it by hand) */
  schedule?: (fn: () => void, ms: number) => unknown;
}

export class LiveStats {
  readonly sent: RateMeter;
  readonly received: RateMeter;
  readonly latencyMs = new Ewma(0.3);
  readonly decodeUploadMs = new Ewma(0.2);
  readonly bytesPerResult = new Ewma(0.2);
  droppedClient = 0;
  droppedServer: Record<string, number> = {};
  /** frames in flight when a connection dropped: never answered */
  lostInReconnect = 0;
  rejected = 0;
  lastFrameIndex = -1;
  framesReceivedTotal = 0;
  /** frames a restarted server lost (it resumed the session from an older persisted state): seqs first..last */
  resumeGaps: { first: number; last: number }[] = [];

  constructor(clock?: Clock) {
    // 5 s: a CPU server answers well under 1 result/s, and a 2 s window would flicker between 0 and 0.5
    this.sent = new RateMeter(5000, clock);
    this.received = new RateMeter(5000, clock);
  }

  get framesDropped(): number {
    return this.droppedClient + this.lostInReconnect + Object.values(this.droppedServer).reduce((a, b) => a + b, 0);
  }

  reset(): void {
    this.sent.reset();
    this.received.reset();
    this.latencyMs.reset();
    this.decodeUploadMs.reset();
    this.bytesPerResult.reset();
    this.droppedClient = this.lostInReconnect = this.rejected = 0;
    this.droppedServer = {};
    this.lastFrameIndex = -1;
    this.framesReceivedTotal = 0;
    this.resumeGaps = [];
  }
}

/** Results already taken: a reconnect first gets the latest results again (the server's replay), and those must
 * not count twice. Only the latest few matter: a replay is never older than the in-flight window. */
class RecentSeqs {
  private readonly seqs = new Set<number>();
  constructor(private readonly limit = 256) {}
  /** false when ``seq`` was seen already */
  add(seq: number): boolean {
    if (this.seqs.has(seq)) return false;
    this.seqs.add(seq);
    if (this.seqs.size > this.limit) this.seqs.delete(this.seqs.values().next().value as number);
    return true;
  }
  clear(): void {
    this.seqs.clear();
  }
}

export class LiveSession implements FrameSink {
  readonly connection: StreamConnection;
  readonly stats: LiveStats;
  hello: HelloMsg | null = null;
  settings: SessionSettings | null = null;
  finished = false;
  /** created → streaming → finished / evicted / lost (lifecycle.ts derives the page from it) */
  life: SessionLife = 'created';
  onLife: (life: SessionLife) => void = () => {};
  onBanner: (banner: Banner | { key: string; clear: true }) => void = () => {};
  onState: (state: ConnectionState) => void = () => {};
  /** after every message that changed something the overlay shows */
  onUpdate: () => void = () => {};
  /** an error the server answered (after its banner was shown): the page decides what it means for the session */
  onError: (code: string) => void = () => {};
  /** the backfill's last chunk was drawn: the whole scene so far is in the view */
  onBackfilled: () => void = () => {};
  /** null until a backfill starts (only a watcher joining a running session gets one) */
  backfill: BackfillProgress | null = null;
  private nextSeq = 0;
  private readonly resultSeqs = new RecentSeqs();
  /** seq → performance-clock send time */
  private inFlight = new Map<number, number>();
  private clock: Clock;
  private maxInFlight: number;

  constructor(private view: ReconstructionView, private options: LiveSessionOptions) {
    this.clock = options.clock ?? (() => performance.now());
    this.stats = new LiveStats(this.clock);
    this.maxInFlight = Math.max(1, options.maxInFlight ?? 2);
    this.connection = new StreamConnection({
      url: options.url,
      token: options.token,
      socketFactory: options.socketFactory,
      backoff: options.backoff,
      pingIntervalMs: options.pingIntervalMs,
      schedule: options.schedule,
    });
    this.connection.onState = (s) => this.handleState(s);
    this.connection.onMessage = (m, bytes) => this.handleMessage(m, bytes);
  }

  get role(): 'stream' | 'watch' {
    return this.options.role;
  }

  get framesInFlight(): number {
    return this.inFlight.size;
  }

  get framesSent(): number {
    return this.stats.sent.total;
  }

  get resultsReceived(): number {
    return this.stats.received.total;
  }

  start(): void {
    this.connection.connect();
  }

  close(): void {
    this.connection.close();
  }

  setMaxInFlight(n: number): void {
    this.maxInFlight = Math.max(1, Math.floor(n));
  }

  // ------------------------------------------------------------------ FrameSink (sources push here)

  ready(): boolean {
    return (
      this.options.role === 'stream' &&
      !this.finished &&
      this.connection.isOpen &&
      this.inFlight.size < this.maxInFlight &&
      this.connection.bufferedAmount < (this.options.maxBufferedBytes ?? 2 << 20)
    );
  }

  push(frame: EncodedFrame): void {
    if (!this.ready()) {
      this.stats.droppedClient++;
      return;
    }
    const seq = this.nextSeq++;
    if (this.connection.send({ type: 'frame', seq, ts: frame.ts, format: frame.format, data: frame.data })) {
      this.inFlight.set(seq, this.clock());
      this.stats.sent.mark();
    } else {
      this.stats.droppedClient++;
    }
    this.onUpdate();
  }

  skipped(): void {
    this.stats.droppedClient++;
  }

  // ------------------------------------------------------------------ control

  /** New stream in the same session: the server clears its memory and answers `ack`, which clears the view. */
  reset(): void {
    if (this.options.role === 'stream' && this.connection.send({ type: 'control', action: 'reset' })) return;
    this.clearView(); // watchers (or a closed connection) only clear their own view
  }

  finish(): boolean {
    return this.options.role === 'stream' && this.connection.send({ type: 'control', action: 'finish' });
  }

  // ------------------------------------------------------------------ incoming

  private setLife(life: SessionLife): void {
    if (life === this.life) return;
    this.life = life;
    this.onLife(life);
  }

  private handleState(state: ConnectionState): void {
    if (state.kind === 'reconnecting' || state.kind === 'closed') {
      // frames in flight on a dead socket are never answered
      this.stats.lostInReconnect += this.inFlight.size;
      this.inFlight.clear();
    }
    if (state.kind === 'reconnecting') {
      this.onBanner({
        key: 'connection',
        level: 'warning',
        text: `${capitalise(state.reason)}: reconnecting in ${(state.delayMs / 1000).toFixed(1)} s (attempt ${state.attempt}). The session resumes where it stopped.`,
      });
    } else if (state.kind === 'closed') {
      this.onBanner({ key: 'connection', level: 'error', text: state.reason });
      this.setLife(lifeAfterClose(state.code));
    } else if (state.kind === 'open') {
      this.onBanner({ key: 'connection', clear: true });
    }
    this.onState(state);
  }

  /** The server was restarted and resumed the session from its latest persisted state: the frames this page sent
   * after ``lastSeq`` are not in it any more. A camera cannot send them again; say so, and go on. */
  private reportResumeGap(lastSeq: number, framesProcessed: number): void {
    const first = lastSeq + 1;
    const last = this.nextSeq - 1;
    if (last < first) return;
    this.stats.resumeGaps.push({ first, last });
    const n = last - first + 1;
    this.onBanner({
      key: 'resume-gap',
      level: 'warning',
      text: `The server restarted and resumed this session at frame ${framesProcessed}: ${n} frame${n === 1 ? '' : 's'} sent before (seq ${first}–${last}) were lost. The view keeps what it showed; new frames extend the restored stream.`,
    });
  }

  private handleMessage(msg: ServerMessage, bytes: number): void {
    switch (msg.type) {
      case 'hello':
        this.hello = msg;
        this.settings = msg.settings;
        this.finished = msg.finished;
        // resume: seq must stay above everything the session accepted, across reconnects
        if (msg.resume && this.options.role === 'stream') this.reportResumeGap(msg.resume.last_seq ?? -1, msg.resume.frames_processed);
        if (msg.last_seq !== null && msg.last_seq !== undefined) this.nextSeq = Math.max(this.nextSeq, msg.last_seq + 1);
        if (msg.model.synthetic) {
          this.onBanner({
            key: 'synthetic',
            level: 'warning',
            text: msg.model.notice || 'The server runs synthetic (untrained) weights: the geometry is meaningless.',
          });
        }
        if (msg.finished && this.options.role === 'stream') this.onBanner({ key: 'finished', level: 'info', text: 'This stream is finished. Reset to start a new one.' });
        this.setLife(msg.finished ? 'finished' : 'streaming');
        break;
      case 'result': {
        if (!this.resultSeqs.add(msg.seq)) break; // a replayed result this page has already drawn
        const sentAt = this.inFlight.get(msg.seq);
        this.inFlight.delete(msg.seq);
        this.stats.received.mark();
        this.stats.framesReceivedTotal++;
        if (sentAt !== undefined) this.stats.latencyMs.add(this.clock() - sentAt);
        else if (typeof msg.ts === 'number') this.stats.latencyMs.add(Math.max(0, (nowSeconds() - msg.ts) * 1000)); // watch: sender's clock
        this.stats.bytesPerResult.add(bytes);
        this.stats.lastFrameIndex = msg.frame_index;
        const t0 = this.clock();
        // the final of frame t-1 first: it extends t-1's (newest) slot in place before t's preview takes a new one
        if (msg.final) this.applyFrame(msg.final);
        if (msg.preview) this.applyFrame(msg.preview);
        if (msg.final || msg.preview) this.stats.decodeUploadMs.add(this.clock() - t0);
        break;
      }
      case 'dropped':
        this.inFlight.delete(msg.seq);
        this.stats.droppedServer[msg.reason] = (this.stats.droppedServer[msg.reason] ?? 0) + 1;
        if (msg.reason === 'evicted') this.onBanner({ key: 'connection', level: 'error', text: 'The session was evicted by the server.' });
        if (msg.reason === 'evicted') this.setLife('evicted');
        break;
      case 'finished':
        this.finished = true;
        if (msg.final) this.applyFrame(msg.final);
        // watchers can neither export nor reset: the page tells them what the finish means for them
        if (this.options.role === 'stream') this.onBanner({ key: 'finished', level: 'info', text: `Stream finished after ${msg.frames} frames. Export it, or reset to start a new one.` });
        this.setLife('finished');
        break;
      case 'ack':
        this.settings = msg.settings;
        if (msg.action === 'reset') {
          this.finished = false;
          this.inFlight.clear();
          this.clearView();
          this.onBanner({ key: 'finished', clear: true });
          this.setLife('streaming');
        }
        break;
      case 'error':
        if (msg.seq !== null && msg.seq !== undefined) this.inFlight.delete(msg.seq);
        this.stats.rejected++;
        if (msg.code === 'bad_seq' && this.hello) this.nextSeq = Math.max(this.nextSeq, (this.hello.last_seq ?? -1) + 1);
        this.onBanner({ key: `error-${msg.code}`, level: 'error', text: `Server: ${msg.message} (${msg.code})` });
        this.onError(msg.code);
        break;
      case 'backfill':
        this.applyBackfill(msg);
        break;
      case 'pong':
        break;
    }
    this.onUpdate();
  }

  private applyFrame(frame: FrameData): void {
    const points = decodeMap(frame.map, this.options.decode);
    this.view.addFrame(frame.index, points);
    if (frame.pose.valid && frame.pose.c2w) {
      this.view.setPose(frame.index, frame.pose.c2w, frame.focal ?? undefined, 224, 224);
    }
  }

  /** The scene so far, drawn chunk by chunk as it arrives. A frame the live stream already drew keeps its live
   * points (they are denser and carry real confidences). */
  private applyBackfill(msg: BackfillMsg): void {
    const conf = backfillConfidence(this.settings?.conf_thresh ?? 0);
    for (const frame of msg.frames) {
      if (this.view.hasFrame(frame.index)) continue;
      this.view.addFrame(frame.index, decodeBackfillFrame(frame, conf));
      if (frame.pose.valid && frame.pose.c2w) this.view.setPose(frame.index, frame.pose.c2w, msg.focal ?? undefined, 224, 224);
    }
    const frames = (this.backfill?.frames ?? 0) + msg.frames.length;
    this.backfill = { chunks: msg.chunks, received: msg.chunk + 1, frames };
    if (msg.chunk + 1 < msg.chunks) {
      this.onBanner({ key: 'backfill', level: 'info', text: `Loading the scene so far: ${frames} frames (${msg.chunk + 1}/${msg.chunks})…` });
      return;
    }
    this.onBanner({ key: 'backfill', clear: true });
    this.onBackfilled();
  }

  private clearView(): void {
    this.view.reset();
    this.stats.reset();
    this.resultSeqs.clear();
  }
}

function capitalise(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}
