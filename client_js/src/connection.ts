/**
 * One session's WebSocket, kept alive: a dropped connection is reopened with backoff on the same URL and
 * token (offered as a subprotocol, never in the URL: URLs end up in logs and in console messages), and the session resumes where `hello` says it stands. Close codes that mean "this session is gone"
 * (evicted, deleted, replaced, bad token) end the connection for good with a reason the page can show.
 */
import { Backoff } from './backoff.ts';
import { CloseCode, decodeServerMessage, encodeClientMessage, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX, WireError } from './protocol.ts';
import type { ClientMessage, HelloMsg, ServerMessage } from './protocol.ts';

export type ConnectionState =
  | { kind: 'connecting'; attempt: number }
  | { kind: 'open'; hello: HelloMsg }
  | { kind: 'reconnecting'; attempt: number; delayMs: number; reason: string }
  | { kind: 'closed'; reason: string; code: number; final: true };

/** What a WebSocket constructor must offer (the browser's, or a fake in tests). */
export interface SocketLike {
  binaryType: string;
  readyState: number;
  bufferedAmount: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = (url: string, protocols: string[]) => SocketLike;

/** The subprotocols a client offers: the protocol, and the token (the server answers with the protocol only). */
export function socketProtocols(token: string): string[] {
  return [SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX + token];
}

const OPEN = 1;

/** Close codes after which reconnecting cannot help, with what to tell the user. */
export function finalCloseReason(code: number, reason: string): string | null {
  switch (code) {
    case CloseCode.UNAUTHORIZED:
      return 'The server refused the token for this session (wrong or expired link).';
    case CloseCode.NOT_FOUND:
      return 'This session no longer exists on the server (it was evicted, deleted, or the server restarted without a state dir).';
    case CloseCode.IDLE: // idle timeout, or released after its stream connection went away: the reason says which
      return reason ? `The server ended the session: ${reason}.` : 'The session was evicted after being idle too long.';
    case CloseCode.REPLACED:
      return 'Another stream connection took over this session (opened in another tab or device).';
    case CloseCode.DELETED:
      return 'The session was deleted.';
    case CloseCode.PROTOCOL_VIOLATION:
      return `The server closed the connection after protocol errors${reason ? `: ${reason}` : ''}.`;
    default:
      return null;
  }
}

export interface ConnectionOptions {
  /** the session's WebSocket URL, without a token */
  url: string;
  /** the stream or watch token */
  token: string;
  socketFactory?: SocketFactory;
  backoff?: Backoff;
  /** keep-alive ping period; proxies and phone networks drop silent sockets */
  pingIntervalMs?: number;
  schedule?: (fn: () => void, ms: number) => unknown;
  cancel?: (handle: unknown) => void;
}

export class StreamConnection {
  onMessage: (msg: ServerMessage, bytes: number) => void = () => {};
  onState: (state: ConnectionState) => void = () => {};
  /** the last state reported */
  state: ConnectionState = { kind: 'connecting', attempt: 0 };
  private socket: SocketLike | null = null;
  private stopped = false;
  private backoff: Backoff;
  private factory: SocketFactory;
  private timer: unknown = null;
  private pingTimer: unknown = null;
  private pingId = 0;
  private opened = false;
  private schedule: (fn: () => void, ms: number) => unknown;
  private cancel: (handle: unknown) => void;

  constructor(private options: ConnectionOptions) {
    this.backoff = options.backoff ?? new Backoff();
    this.factory = options.socketFactory ?? ((url, protocols) => new WebSocket(url, protocols) as unknown as SocketLike);
    this.schedule = options.schedule ?? ((fn, ms) => setTimeout(fn, ms));
    this.cancel = options.cancel ?? ((h) => clearTimeout(h as ReturnType<typeof setTimeout>));
  }

  get isOpen(): boolean {
    return this.state.kind === 'open' && this.socket?.readyState === OPEN;
  }

  /** Bytes queued in the socket and not yet on the network (upload backpressure). */
  get bufferedAmount(): number {
    return this.socket?.bufferedAmount ?? 0;
  }

  connect(): void {
    this.stopped = false;
    this.open();
  }

  send(msg: ClientMessage): boolean {
    if (!this.socket || this.socket.readyState !== OPEN) return false;
    this.socket.send(encodeClientMessage(msg));
    return true;
  }

  /** Closes for good (user left, or started another session). */
  close(): void {
    this.stopped = true;
    this.clearTimers();
    const s = this.socket;
    this.socket = null;
    if (s) {
      s.onclose = s.onmessage = s.onerror = s.onopen = null;
      s.close(1000, 'client closed');
    }
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    this.onState(state);
  }

  private open(): void {
    this.clearTimers();
    this.opened = false;
    this.setState({ kind: 'connecting', attempt: this.backoff.attempts });
    let socket: SocketLike;
    try {
      socket = this.factory(this.options.url, socketProtocols(this.options.token));
    } catch (err) {
      this.retry(`cannot open ${this.options.url}: ${(err as Error).message}`);
      return;
    }
    this.socket = socket;
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      this.opened = true;
    };
    socket.onmessage = (ev) => this.handleData(ev.data);
    socket.onerror = () => {
      /* the close event that follows carries what we need */
    };
    socket.onclose = (ev) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.clearTimers();
      if (this.stopped) return;
      const final = finalCloseReason(ev.code, ev.reason);
      if (final) {
        this.stopped = true;
        this.setState({ kind: 'closed', reason: final, code: ev.code, final: true });
        return;
      }
      const why =
        ev.code === CloseCode.SHUTDOWN
          ? 'the server is restarting'
          : this.opened
            ? `connection lost (code ${ev.code})`
            : 'cannot reach the server';
      this.retry(why);
    };
  }

  private retry(reason: string): void {
    const delayMs = this.backoff.next();
    this.setState({ kind: 'reconnecting', attempt: this.backoff.attempts, delayMs, reason });
    this.timer = this.schedule(() => {
      this.timer = null;
      if (!this.stopped) this.open();
    }, delayMs);
  }

  private handleData(data: unknown): void {
    if (!(data instanceof ArrayBuffer) && !(data instanceof Uint8Array)) return; // the protocol is binary-only
    let msg: ServerMessage;
    try {
      msg = decodeServerMessage(data);
    } catch (err) {
      if (err instanceof WireError) console.warn(`ignoring a message the client cannot read: ${err.message}`);
      else throw err;
      return;
    }
    if (msg.type === 'hello') {
      this.backoff.reset();
      this.setState({ kind: 'open', hello: msg });
      this.startPings();
    }
    this.onMessage(msg, data.byteLength);
  }

  private startPings(): void {
    const period = this.options.pingIntervalMs ?? 15_000;
    if (period <= 0) return;
    const tick = () => {
      this.send({ type: 'ping', id: ++this.pingId, ts: Date.now() / 1000 });
      this.pingTimer = this.schedule(tick, period);
    };
    this.pingTimer = this.schedule(tick, period);
  }

  private clearTimers(): void {
    if (this.timer !== null) this.cancel(this.timer);
    if (this.pingTimer !== null) this.cancel(this.pingTimer);
    this.timer = this.pingTimer = null;
  }
}
