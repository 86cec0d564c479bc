/** REST side of the service (docs/protocol.md, "Sessions"). */
import type { ErrorBody, SessionCreated, SessionSettingsPatch, SessionStats } from './protocol.ts';

export class ServerUnreachable extends Error {}

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, detail: string) {
    super(detail);
  }
}

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

  exportUrl(sessionId: string, token: string, kind: 'cloud.ply' | 'cloud.glb' | 'trajectory.json' | 'transforms.json'): string {
    return `${this.base}/v1/sessions/${encodeURIComponent(sessionId)}/export/${kind}?token=${encodeURIComponent(token)}`;
  }

  async ready(): Promise<boolean> {
    try {
      const r = await fetch(`${this.base}/readyz`, { cache: 'no-store' });
      return r.ok;
    } catch {
      return false;
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
    const text = await response.text();
    if (!response.ok) {
      let code = `http_${response.status}`;
      let detail = text || response.statusText;
      try {
        const err = JSON.parse(text) as Partial<ErrorBody> & { detail?: unknown };
        if (typeof err.code === 'string') code = err.code;
        if (typeof err.detail === 'string') detail = err.detail;
      } catch {
        /* not JSON: keep the raw text */
      }
      // a proxy in front of a stopped server answers 502/504: that is "unreachable" to the user
      if (response.status === 502 || response.status === 504) throw new ServerUnreachable(`the server behind ${this.base} is not answering (${response.status})`);
      throw new ApiError(response.status, code, detail);
    }
    return JSON.parse(text) as T;
  }
}

function dropNulls<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined)) as Partial<T>;
}
