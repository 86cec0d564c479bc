/**
 * A session's life as the page sees it, and everything the page derives from it: which controls work, what the
 * status pill says, which banner explains it. The server's view is the same: a session is created, streams
 * (taking frames), is finished (takes no more frames until a reset), or ends — evicted (idle timeout, or
 * released after its stream connection went away: close 4408) or lost (deleted, restarted away, taken over,
 * refused: any other final close). Streamers and watchers differ only in what they may do.
 */
import type { ConnectionState } from './connection.ts';
import { CloseCode, type SessionStats } from './protocol.ts';

/** The server's enum (SessionStats.life, server/protocol.py SessionLife): one definition for both sides. */
export type SessionLife = SessionStats['life'];
export type Role = 'stream' | 'watch';

/** The session's life after the connection closed for good with `code`. */
export function lifeAfterClose(code: number): SessionLife {
  return code === CloseCode.IDLE ? 'evicted' : 'lost';
}

/** Whether the session still exists on the server (its controls can still act on it). */
export function isAlive(life: SessionLife): boolean {
  return life === 'created' || life === 'streaming' || life === 'finished';
}

export interface SessionControls {
  /** Stop (finish and forget) and Reset are shown at all: streamers only */
  showStreamControls: boolean;
  stop: boolean;
  reset: boolean;
  /** PLY / GLB downloads (they need the stream token) */
  exports: boolean;
  /** the frame source (camera, replay) may keep running */
  source: boolean;
}

export function controlsFor(life: SessionLife, role: Role): SessionControls {
  const alive = isAlive(life);
  const streamer = role === 'stream';
  return {
    showStreamControls: streamer,
    stop: streamer && (life === 'created' || life === 'streaming'),
    reset: streamer && alive,
    exports: streamer && alive,
    source: streamer && (life === 'created' || life === 'streaming'),
  };
}

export interface Pill {
  /** data-state of the pill (its colour) */
  state: 'idle' | 'connecting' | 'reconnecting' | 'open' | 'finished' | 'closed';
  text: string;
}

/** The status pill: the session's life first, the connection's state while the session is alive. */
export function pillFor(life: SessionLife | null, role: Role | null, connection: ConnectionState | null): Pill {
  if (life === null || connection === null) return { state: 'idle', text: 'idle' };
  if (life === 'evicted') return { state: 'closed', text: 'evicted' };
  if (life === 'lost') return { state: 'closed', text: 'session lost' };
  if (connection.kind === 'reconnecting') return { state: 'reconnecting', text: `reconnecting (${connection.attempt})` };
  if (connection.kind === 'connecting' || life === 'created') return { state: 'connecting', text: 'connecting' };
  if (connection.kind === 'closed') return { state: 'closed', text: 'closed' };
  const model = `${connection.hello.model.preset}${connection.hello.model.synthetic ? ' (synthetic)' : ''}`;
  if (life === 'finished') return { state: 'finished', text: `finished · ${model}` };
  return { state: 'open', text: `${role === 'watch' ? 'watching' : 'streaming'} · ${model}` };
}

/** What a watcher is told when the session's life changes under it (the streamer is someone else). */
export function watcherNotice(life: SessionLife, streamerConnected: boolean | null): string | null {
  if (life === 'finished') {
    const left = streamerConnected === false ? ' and left' : '';
    return `The streamer finished this session${left}: no new frames will come.`;
  }
  if (life === 'evicted') return 'The session ended: the streamer left (or it was idle) and the server released it.';
  if (life === 'lost') return 'The session is gone from the server.';
  if (streamerConnected === false) return 'The streamer is not connected: the view resumes when they come back.';
  return null;
}
