/**
 * The tab's streaming session, kept in sessionStorage (per tab, gone with the tab) so that a reload resumes it
 * instead of leaving it held on the server. Only the streamer's session is kept; Stop forgets it.
 */

export interface StoredSession {
  id: string;
  token: string;
  watchToken: string;
  streamUrl: string;
  /** the server the page talked to (a ?server= page must not resume another server's session) */
  server: string;
  /** what fed it: a camera is reopened on resume, a replay (local files) cannot be */
  source: 'camera' | 'replay';
}

/** The part of the Web Storage API used here (a Map-backed fake in tests). */
export interface KeyValueStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export const STORED_SESSION_KEY = 'spann3r.session';

export function saveSession(store: KeyValueStore, session: StoredSession): void {
  store.setItem(STORED_SESSION_KEY, JSON.stringify(session));
}

export function forgetSession(store: KeyValueStore): void {
  store.removeItem(STORED_SESSION_KEY);
}

/** The stored session of `server`, if any (anything unreadable counts as none). */
export function loadSession(store: KeyValueStore, server: string): StoredSession | null {
  const raw = store.getItem(STORED_SESSION_KEY);
  if (!raw) return null;
  try {
    const s = JSON.parse(raw) as Partial<StoredSession>;
    const complete = typeof s.id === 'string' && typeof s.token === 'string' && typeof s.streamUrl === 'string';
    if (!complete || s.server !== server) return null;
    return { id: s.id!, token: s.token!, watchToken: s.watchToken ?? '', streamUrl: s.streamUrl!, server, source: s.source === 'replay' ? 'replay' : 'camera' };
  } catch {
    return null;
  }
}
