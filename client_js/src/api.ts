/** REST side of the service (docs/protocol.md, "Sessions"). */
import type { ErrorBody, ModelInfo, SessionCreated, SessionSettingsPatch, SessionStats } from './protocol.ts';

/** What /readyz says when the model is loaded (the page learns about the weights from it before any session). */
export interface ReadyInfo {
  status: string;
  model: ModelInfo;
}

export class ServerUnreachable extends Error {}

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, detail: string, readonly retryAfterS: number | null = null) {
    super(detail);
  }
}

export type ExportKind = 'cloud.ply' | 'cloud.glb' | 'trajectory.json' | 'transforms.json';

export class Api {
  /** `base` is the server's http(s) origin (plus path prefix), e.g. `https://host:8443`. */
  constructor(readonly base: string, private apiKey: string | null = null) {
    this.base = base.replace(/\/+$/, '');
  }

  /** WebSocket URL of a session on this server (no token: that travels as a subprotocol). The path comes from
   * the server's `stream_url`; scheme and host from the page's view of the server, which stays right behind a
   * TLS-terminating proxy. */
  wsUrl(sessionId: string, streamUrl?: string): string {
    const url = new URL(this.base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const path = streamUrl ? new URL(streamUrl).pathname : `/v1/sessions/${encodeURIComponent(sessionId)}/ws`;
    url.pathname = url.pathname.replace(/\/$/, '') + path;
    url.search = '';
    return url.toString();
  }

  /** An export, with the token in a header (a URL with it would land in logs); `onProgress` sees every chunk. */
  async download(sessionId: string, token: string, kind: ExportKind, onProgress: (loaded: number, total: number | null) => void): Promise<Blob> {
    const url = `${this.base}/v1/sessions/${encodeURIComponent(sessionId)}/export/${kind}`;
    let response: Response;
    try {
      response = await fetch(url, { headers: { authorization: `Bearer ${token}` }, cache: 'no-store' });
    } catch (err) {
      throw new ServerUnreachable(`cannot reach the server at ${this.base} (${(err as Error).message})`);
    }
    if (!response.ok) throw await apiError(response);
    const total = Number(response.headers.get('content-length')) || null;
    const type = response.headers.get('content-type') ?? 'application/octet-stream';
    if (!response.body) return new Blob([await response.arrayBuffer()], { type });
    const chunks: Uint8Array[] = [];
    let loaded = 0;
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      loaded += value.byteLength;
      onProgress(loaded, total);
    }
    return new Blob(chunks as BlobPart[], { type });
  }

  /** The server's model when it is ready; null while it loads or cannot be reached. */
  async readyInfo(): Promise<ReadyInfo | null> {
    try {
      const r = await fetch(`${this.base}/readyz`, { cache: 'no-store' });
      return r.ok ? ((await r.json()) as ReadyInfo) : null;
    } catch {
      return null;
    }
  }

  async createSession(settings: SessionSettingsPatch): Promise<SessionCreated> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (this.apiKey) headers['x-api-key'] = this.apiKey;
    return this.request<SessionCreated>('POST', '/v1/sessions', headers, JSON.stringify(dropNulls(settings)));
  }

  async stats(sessionId: string, token: string): Promise<SessionStats> {
    return this.request<SessionStats>('GET', `/v1/sessions/${encodeURIComponent(sessionId)}`, { authorization: `Bearer ${token}` });
  }

  async deleteSession(sessionId: string, token: string): Promise<void> {
    await this.request<void>('DELETE', `/v1/sessions/${encodeURIComponent(sessionId)}`, { authorization: `Bearer ${token}` });
  }

  private async request<T>(method: string, path: string, headers: Record<string, string>, body?: string): Promise<T> {
    let response: Response;
    try {
      response = await fetch(`${this.base}${path}`, { method, headers, body, cache: 'no-store' });
    } catch (err) {
      throw new ServerUnreachable(`cannot reach the server at ${this.base} (${(err as Error).message})`);
    }
    if (response.status === 204) return undefined as T;
    if (!response.ok) {
      // a proxy in front of a stopped server answers 502/504: that is "unreachable" to the user
      if (response.status === 502 || response.status === 504) throw new ServerUnreachable(`the server behind ${this.base} is not answering (${response.status})`);
      throw await apiError(response);
    }
    return JSON.parse(await response.text()) as T;
  }
}

function dropNulls<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined)) as Partial<T>;
}

/** A refusal as an ApiError: the ErrorBody's code and detail, and Retry-After (503 capacity says when to retry). */
async function apiError(response: Response): Promise<ApiError> {
  const text = await response.text();
  let code = `http_${response.status}`;
  let detail = text || response.statusText;
  try {
    const err = JSON.parse(text) as Partial<ErrorBody> & { detail?: unknown };
    if (typeof err.code === 'string') code = err.code;
    if (typeof err.detail === 'string') detail = err.detail;
  } catch {
    /* not JSON: keep the raw text */
  }
  const retryAfter = Number(response.headers.get('retry-after'));
  return new ApiError(response.status, code, detail, Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null);
}
