/**
 * The page: wires the controls, the sources, the session and the viewer together.
 */
import { Api, ApiError, ServerUnreachable } from './api.ts';
import { parseIntrinsics, resizedIntrinsics, type Intrinsics } from './intrinsics.ts';
import { controlsFor, isAlive, pillFor, watcherNotice, type SessionLife } from './lifecycle.ts';
import { LiveSession, type Banner } from './session.ts';
import { CameraError, CameraSource } from './sources/camera.ts';
import { ReplaySource } from './sources/replay.ts';
import type { FrameSource } from './sources/source.ts';
import type { ModelInfo } from './protocol.ts';
import { formatBytes, formatCount } from './stats.ts';
import { forgetSession, loadSession, saveSession, type StoredSession } from './storedSession.ts';
import type { ColorMode } from './viewer/pointMaterial.ts';
import { Viewer } from './viewer/viewer.ts';

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

/** Read-only link parsing: a page URL with #watch=ID&token=T (the fragment never reaches a server or its logs),
 * an older link with ?watch=ID&token=T, or "ID:TOKEN". */
export function parseWatchLink(text: string, base: string): { id: string; token: string; server: string | null } | null {
  const t = text.trim();
  if (!t) return null;
  const colon = /^([0-9a-zA-Z_-]+):(\S+)$/.exec(t);
  if (colon && !t.includes('/')) return { id: colon[1], token: colon[2], server: null };
  try {
    const url = new URL(t, base);
    const fragment = new URLSearchParams(url.hash.replace(/^#/, ''));
    const id = fragment.get('watch') ?? url.searchParams.get('watch');
    const token = fragment.get('token') ?? url.searchParams.get('token');
    if (id && token) return { id, token, server: url.searchParams.get('server') };
  } catch {
    /* not a URL */
  }
  return null;
}

function isNarrow(): boolean {
  return window.matchMedia('(max-width: 720px)').matches;
}

export class App {
  readonly params = new URLSearchParams(location.search);
  readonly api: Api;
  readonly viewer: Viewer;
  session: LiveSession | null = null;
  source: FrameSource | null = null;
  sessionId: string | null = null;
  /** the stream token of the session (null while watching) */
  private token: string | null = null;
  /** whether the watched session's streamer is connected (watchers poll the session's stats) */
  private streamerConnected: boolean | null = null;
  private watchPoll: ReturnType<typeof setInterval> | null = null;
  /** the connection states the session went through (the newest 50), for checks that must not miss a short one */
  private stateHistory: string[] = [];
  /** Stop was pressed (or a replay ended): the finish is on its way */
  private finishRequested = false;
  /** export downloads under way: kind → bytes so far / total */
  private downloads = new Map<string, { loaded: number; total: number | null }>();
  /** the latest replay, kept after it ends so its frame count stays readable */
  private lastReplay: ReplaySource | null = null;
  private banners = new Map<string, HTMLElement>();
  private serverLabel: string;

  constructor() {
    const server = this.params.get('server') || location.origin;
    this.serverLabel = server;
    this.api = new Api(server, this.params.get('apiKey'));
    // phones get a smaller point budget: GPU memory is shared with everything else there
    const defaultBudget = isNarrow() || navigator.maxTouchPoints > 1 ? 3_000_000 : 8_000_000;
    this.viewer = new Viewer($('viewport'), { maxPoints: Number(this.params.get('maxPoints')) || defaultBudget });
    this.applyUrlSettings();
    this.bindControls();
    if (isNarrow()) document.body.classList.add('panel-open');
    setInterval(() => this.renderOverlay(), 250);
    void this.checkServer();
    this.renderLife();
    const link = parseWatchLink(location.href, location.href);
    if (link) {
      // an old ?token= link: keep the token out of the address bar (history, screenshots, shared screens)
      if (this.params.has('token')) history.replaceState(null, '', this.shareLink(link.id, link.token));
      void this.startWatch(link.id, link.token);
      return;
    }
    const stored = loadSession(sessionStorage, this.api.base);
    if (stored) void this.resume(stored);
  }

  // ------------------------------------------------------------------ settings

  private applyUrlSettings(): void {
    const map: Record<string, string> = { fps: 'opt-fps', shortSide: 'opt-short-side', quality: 'opt-quality', detail: 'opt-detail', inflight: 'opt-inflight', capture: 'opt-capture', facing: 'opt-facing', intrinsics: 'opt-intrinsics' };
    for (const [param, id] of Object.entries(map)) {
      const v = this.params.get(param);
      if (v !== null) ($(id) as HTMLInputElement).value = v;
    }
    if (this.params.get('loop') === '1') ($('opt-loop') as HTMLInputElement).checked = true;
  }

  private num(id: string, fallback: number): number {
    const v = Number(($(id) as HTMLInputElement).value);
    return Number.isFinite(v) && v > 0 ? v : fallback;
  }

  private captureOptions() {
    const [w, h] = ($('opt-capture') as HTMLSelectElement).value.split('x').map(Number);
    const maxFps = this.session?.hello?.limits.max_fps ?? 30;
    // an empty rate: the camera sends as fast as results come back (credits), never faster than the server allows
    const paced = ($('opt-fps') as HTMLInputElement).value.trim() === '';
    return {
      fps: Math.min(paced ? 4 : this.num('opt-fps', 4), maxFps),
      paced,
      captureWidth: w || 1280,
      captureHeight: h || 720,
      facingMode: ($('opt-facing') as HTMLSelectElement).value as 'environment' | 'user',
      shortSide: this.num('opt-short-side', 224),
      quality: Math.min(1, this.num('opt-quality', 0.8)),
      loop: ($('opt-loop') as HTMLInputElement).checked,
    };
  }

  // ------------------------------------------------------------------ server

  private async checkServer(): Promise<void> {
    const info = await this.api.readyInfo();
    if (info) {
      this.clearBanner('server');
      this.showModelNotice(info.model);
      return;
    }
    // /readyz answers 503 while the model loads; no answer at all means the server is down
    let reachable = false;
    try {
      await fetch(`${this.api.base}/healthz`, { cache: 'no-store' });
      reachable = true;
    } catch {
      reachable = false;
    }
    this.showBanner({
      key: 'server',
      level: reachable ? 'warning' : 'error',
      text: reachable
        ? 'The server is starting (loading the model)…'
        : `Cannot reach the server at ${this.serverLabel}. Is \`spann3r serve\` running? Retrying…`,
    });
    setTimeout(() => void this.checkServer(), 3000);
  }

  /** Untrained weights are said on first load, before anything streams (a session's hello says it again). */
  private showModelNotice(model: ModelInfo): void {
    if (!model.synthetic) return;
    this.showBanner({ key: 'synthetic', level: 'warning', text: model.notice || 'The server runs synthetic (untrained) weights: the geometry is meaningless.' });
  }

  // ------------------------------------------------------------------ starting and stopping

  async startCamera(): Promise<void> {
    await this.endSession();
    const intrinsics = parseIntrinsics(($('opt-intrinsics') as HTMLInputElement).value);
    if (intrinsics instanceof Error) {
      this.showBanner({ key: 'camera', level: 'error', text: `${intrinsics.message}. Fix it in Capture settings, or leave it empty to estimate.` });
      return;
    }
    const camera = await this.openCamera();
    if (!camera) return;
    // the user's intrinsics are in pixels of the camera's frames; the server wants those of the uploaded frames
    const sizes = camera.frameSizes();
    const uploaded = intrinsics && sizes ? resizedIntrinsics(intrinsics, sizes.video, sizes.upload) : null;
    if (!(await this.createSession('camera', uploaded))) {
      camera.stop();
      return;
    }
    await this.feed(camera);
  }

  /** The camera, opened before any session exists: no session is created for a user who refuses it. */
  private async openCamera(): Promise<CameraSource | null> {
    const camera = new CameraSource($('camera-preview') as HTMLVideoElement, this.captureOptions());
    try {
      await camera.open();
    } catch (err) {
      const message = err instanceof CameraError ? err.message : `The camera could not be started: ${(err as Error).message}`;
      this.showBanner({ key: 'camera', level: 'error', text: message });
      camera.stop();
      return null;
    }
    this.clearBanner('camera');
    return camera;
  }

  /** Feed the current session from the camera, unless the session ended meanwhile. */
  private async feed(camera: CameraSource): Promise<void> {
    const session = this.session;
    if (!session || !controlsFor(session.life, session.role).source) {
      camera.stop();
      return;
    }
    if (camera.paced) camera.setPollRate(session.hello?.limits.max_fps ?? 30);
    await camera.start(session);
    ($('camera-preview') as HTMLVideoElement).hidden = false;
    this.source = camera;
    camera.onEnded = () => this.showBanner({ key: 'camera', level: 'warning', text: 'The camera stopped (unplugged or taken by another app).' });
  }

  async startReplay(files: File[]): Promise<void> {
    if (!files.length) return;
    await this.endSession();
    const video = $('camera-preview') as HTMLVideoElement;
    const replay = new ReplaySource(files, video, this.captureOptions());
    this.lastReplay = replay;
    if (!(await this.createSession('replay'))) return;
    const session = this.session!;
    this.source = replay;
    const progress = $('replay-progress') as HTMLProgressElement;
    progress.hidden = false;
    replay.onEnded = () => void this.finishWhenDrained(session);
    await replay.start(session);
  }

  async startWatch(id: string, token: string): Promise<void> {
    await this.endSession();
    this.sessionId = id;
    this.openSession(this.api.wsUrl(id), token, 'watch');
    this.showSessionPanel(id, null, null);
    this.pollStreamer(id, token);
  }

  /** A reload: reconnect to the tab's session, and reopen the camera that fed it. */
  private async resume(stored: StoredSession): Promise<void> {
    this.sessionId = stored.id;
    this.openSession(this.api.wsUrl(stored.id, stored.streamUrl), stored.token, 'stream');
    this.showSessionPanel(stored.id, stored.token, stored.watchToken || null);
    if (stored.source !== 'camera') {
      this.showBanner({ key: 'camera', level: 'info', text: 'Resumed the session after a reload. Choose the files again to continue the replay.' });
      return;
    }
    const camera = await this.openCamera();
    if (camera) await this.feed(camera);
  }

  /** The Stop button: no more frames; the session finishes (its last final arrives, exports stay) and the tab
   * forgets it, so a reload does not resume it. */
  async stop(): Promise<void> {
    this.stopSource();
    forgetSession(sessionStorage);
    if (this.session?.role === 'stream' && !this.session.finished) this.session.finish();
    this.finishRequested = true;
    this.renderLife();
  }

  /** Stop before the stream had the two frames a finish needs: there is nothing to keep, so the session is
   * deleted now rather than held until the server's idle timeout, and the page goes back to idle. */
  private async releaseUnfinished(session: LiveSession): Promise<void> {
    const [id, token] = [this.sessionId, this.token];
    this.session = null;
    this.sessionId = this.token = null;
    session.close();
    this.clearBanner('error-not_finishable');
    $('session-panel').hidden = true;
    let released = true;
    if (id && token) await this.api.deleteSession(id, token).catch(() => (released = false));
    this.showBanner({
      key: 'finished',
      level: released ? 'info' : 'warning',
      text: released
        ? 'Stopped before a second frame: nothing to keep, so the session was released.'
        : 'Stopped before a second frame; the server could not be told, so it releases the session when it times out.',
    });
    this.renderLife();
  }

  /** Before another session starts: the current one is finished and released, never silently left held. */
  private async endSession(): Promise<void> {
    this.stopSource();
    this.stopWatchPoll();
    forgetSession(sessionStorage);
    const session = this.session;
    if (!session) return;
    this.session = null;
    const [id, token] = [this.sessionId, this.token];
    if (session.role === 'stream' && isAlive(session.life)) {
      if (!session.finished) session.finish();
      session.close();
      if (id && token) await this.api.deleteSession(id, token).catch(() => undefined); // frees its slot now
    } else {
      session.close();
    }
  }

  private stopSource(): void {
    this.source?.stop();
    this.source = null;
    ($('camera-preview') as HTMLVideoElement).hidden = true;
    ($('replay-progress') as HTMLElement).hidden = true;
  }

  private async createSession(source: StoredSession['source'], intrinsics: Intrinsics | null = null): Promise<boolean> {
    const stride = Number(($('opt-detail') as HTMLSelectElement).value) || 2;
    let created;
    try {
      // a camera wants the newest frame (older waiting ones are replaced); a replay wants every frame, in order
      const framePolicy = source === 'replay' ? 'queue' : 'latest';
      created = await this.api.createSession({ encoding: 'compact', stride, frame_policy: framePolicy, ...(intrinsics ? { intrinsics } : {}) });
    } catch (err) {
      const text =
        err instanceof ServerUnreachable
          ? `Cannot reach the server at ${this.serverLabel}. Is \`spann3r serve\` running?`
          : err instanceof ApiError && err.code === 'capacity'
            ? `The server is full (too many sessions). Try again in ${err.retryAfterS ?? 30} s.`
            : `The server refused a new session: ${(err as Error).message}`;
      this.showBanner({ key: 'server', level: 'error', text });
      return false;
    }
    this.clearBanner('server');
    this.sessionId = created.id;
    saveSession(sessionStorage, { id: created.id, token: created.token, watchToken: created.watch_token, streamUrl: created.stream_url, server: this.api.base, source });
    this.openSession(this.api.wsUrl(created.id, created.stream_url), created.token, 'stream');
    this.showSessionPanel(created.id, created.token, created.watch_token);
    return true;
  }

  private openSession(url: string, token: string, role: 'stream' | 'watch'): void {
    this.session?.close();
    this.viewer.reset();
    this.token = role === 'stream' ? token : null;
    this.finishRequested = false;
    this.stateHistory = [];
    this.streamerConnected = null;
    const session = new LiveSession(this.viewer, {
      url,
      token,
      role,
      maxInFlight: this.num('opt-inflight', 2),
      decode: { stride: Number(($('opt-detail') as HTMLSelectElement).value) || 2 },
    });
    session.onBanner = (b) => ('clear' in b ? this.clearBanner(b.key) : this.showBanner(b));
    session.onState = (state) => {
      this.stateHistory = [...this.stateHistory.slice(-49), state.kind];
      this.renderLife();
    };
    session.onLife = (life) => this.lifeChanged(life);
    session.onError = (code) => {
      if (code === 'not_finishable' && this.finishRequested && this.session === session) void this.releaseUnfinished(session);
    };
    // the whole scene so far just arrived (a late watcher): show all of it
    session.onBackfilled = () => {
      if (this.viewer.viewMode === 'orbit') this.viewer.frameAll();
    };
    this.session = session;
    session.start();
    this.renderLife();
    if (isNarrow()) document.body.classList.remove('panel-open');
  }

  /** The session's life moved on: a session that ended stops the camera and is forgotten by the tab. */
  private lifeChanged(life: SessionLife): void {
    const session = this.session;
    if (!session) return;
    if (!controlsFor(life, session.role).source) this.stopSource();
    if (!isAlive(life) && session.role === 'stream') forgetSession(sessionStorage);
    if (!isAlive(life)) this.stopWatchPoll();
    this.renderLife();
  }

  /** Watchers learn whether the streamer is connected from the session's stats (the stream says nothing). */
  private pollStreamer(id: string, token: string): void {
    this.stopWatchPoll();
    const poll = async () => {
      try {
        this.streamerConnected = (await this.api.stats(id, token)).stream_connected;
      } catch {
        return; // the connection's close code says what happened to the session
      }
      this.renderLife();
    };
    this.watchPoll = setInterval(() => void poll(), 3000);
    void poll();
  }

  private stopWatchPoll(): void {
    if (this.watchPoll !== null) clearInterval(this.watchPoll);
    this.watchPoll = null;
  }

  /** A replay that reached its end: once every frame is answered, finish so the last final arrives. */
  private async finishWhenDrained(session: LiveSession): Promise<void> {
    for (let i = 0; i < 600 && session.framesInFlight > 0 && this.session === session; i++) await new Promise((r) => setTimeout(r, 100));
    if (this.session === session && !session.finished) session.finish();
    if (this.session === session) this.finishRequested = true;
    this.source = null;
    this.renderLife();
  }

  private showSessionPanel(id: string, token: string | null, watchToken: string | null): void {
    $('session-panel').hidden = false;
    $('session-id').textContent = id.slice(0, 8);
    for (const elId of ['export-ply', 'export-glb']) {
      $(elId).title = token ? 'Download the fused cloud from the server' : 'Exports need the stream token; a watch link is read-only';
    }
    const share = $('share-row');
    share.hidden = !watchToken;
    if (watchToken) ($('share-link') as HTMLInputElement).value = this.shareLink(id, watchToken);
  }

  /** This page's watch link: the token in the fragment, which browsers never send to a server. */
  private shareLink(id: string, watchToken: string): string {
    const url = new URL(location.href);
    url.search = '';
    if (this.params.get('server')) url.searchParams.set('server', this.params.get('server')!);
    url.hash = new URLSearchParams({ watch: id, token: watchToken }).toString();
    return url.toString();
  }

  /** Download an export with the token in a header (never in a URL), showing its progress on the button. */
  private async download(kind: 'cloud.ply' | 'cloud.glb', button: HTMLButtonElement): Promise<void> {
    const [id, token] = [this.sessionId, this.token];
    if (!id || !token || this.downloads.has(kind)) return;
    const label = button.dataset.label ?? button.textContent ?? kind;
    button.dataset.label = label;
    this.downloads.set(kind, { loaded: 0, total: null });
    const show = (loaded: number, total: number | null) => {
      this.downloads.set(kind, { loaded, total });
      button.textContent = total ? `${label} ${Math.floor((100 * loaded) / total)}%` : `${label} ${formatBytes(loaded)}`;
    };
    button.setAttribute('aria-busy', 'true');
    try {
      const blob = await this.api.download(id, token, kind, show);
      saveBlob(blob, `${id.slice(0, 8)}-${kind}`);
      this.clearBanner('export');
    } catch (err) {
      this.showBanner({ key: 'export', level: 'error', text: `The ${kind} export failed: ${(err as Error).message}` });
    } finally {
      this.downloads.delete(kind);
      button.textContent = label;
      button.removeAttribute('aria-busy');
      this.renderLife();
    }
  }

  // ------------------------------------------------------------------ controls

  private bindControls(): void {
    $('start-camera').addEventListener('click', () => void this.startCamera());
    ($('file-input') as HTMLInputElement).addEventListener('change', (ev) => {
      const input = ev.target as HTMLInputElement;
      void this.startReplay([...(input.files ?? [])]);
      input.value = '';
    });
    $('watch-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const parsed = parseWatchLink(($('watch-link') as HTMLInputElement).value, location.href);
      if (!parsed) {
        this.showBanner({ key: 'watch', level: 'error', text: 'Paste a watch link (…#watch=ID&token=TOKEN) or ID:TOKEN.' });
        return;
      }
      this.clearBanner('watch');
      void this.startWatch(parsed.id, parsed.token);
    });
    $('stop').addEventListener('click', () => void this.stop());
    $('export-ply').addEventListener('click', (ev) => void this.download('cloud.ply', ev.currentTarget as HTMLButtonElement));
    $('export-glb').addEventListener('click', (ev) => void this.download('cloud.glb', ev.currentTarget as HTMLButtonElement));
    $('reset').addEventListener('click', () => this.session?.reset());
    $('copy-share').addEventListener('click', () => {
      const input = $('share-link') as HTMLInputElement;
      input.select();
      void navigator.clipboard?.writeText(input.value).catch(() => document.execCommand('copy'));
    });
    $('menu-toggle').addEventListener('click', () => {
      const open = document.body.classList.toggle('panel-open');
      $('menu-toggle').setAttribute('aria-expanded', String(open));
    });

    const slider = $('conf-threshold') as HTMLInputElement;
    const applyThreshold = () => {
      // the slider is the protocol's relative confidence r = (conf-1)/conf in [0, 1): conf >= 1 / (1 - r)
      const r = Number(slider.value);
      const conf = 1 / (1 - Math.min(r, 0.999));
      this.viewer.setConfidenceThreshold(r <= 0 ? 0 : conf);
      $('conf-value').textContent = conf.toFixed(2);
    };
    slider.addEventListener('input', applyThreshold);
    applyThreshold();
    ($('color-mode') as HTMLSelectElement).addEventListener('change', (ev) => this.viewer.setColorMode((ev.target as HTMLSelectElement).value as ColorMode));
    let baseSize = 0;
    ($('point-size') as HTMLInputElement).addEventListener('input', (ev) => {
      baseSize ||= this.viewer.pointSize;
      this.viewer.setPointSize(baseSize * Number((ev.target as HTMLInputElement).value));
    });
    $('view-orbit').addEventListener('click', () => this.viewer.setMode('orbit'));
    $('view-follow').addEventListener('click', () => this.viewer.setMode('follow'));
    $('view-fit').addEventListener('click', () => {
      this.viewer.setMode('orbit');
      this.viewer.frameAll();
      baseSize = 0;
    });
    this.viewer.onModeChange = (mode) => {
      $('view-orbit').setAttribute('aria-pressed', String(mode === 'orbit'));
      $('view-follow').setAttribute('aria-pressed', String(mode === 'follow'));
    };
  }

  // ------------------------------------------------------------------ display

  showBanner(b: Banner): void {
    let el = this.banners.get(b.key);
    if (!el) {
      el = document.createElement('div');
      el.className = 'banner';
      el.dataset.key = b.key;
      el.innerHTML = '<span class="text"></span><button aria-label="Dismiss">×</button>';
      el.querySelector('button')!.addEventListener('click', () => this.clearBanner(b.key));
      $('banners').appendChild(el);
      this.banners.set(b.key, el);
    }
    el.dataset.level = b.level;
    el.querySelector('.text')!.textContent = b.text;
  }

  clearBanner(key: string): void {
    this.banners.get(key)?.remove();
    this.banners.delete(key);
  }

  /** Controls, status pill and the watcher's notice, all derived from the session's life (lifecycle.ts). */
  private renderLife(): void {
    const session = this.session;
    const pill = pillFor(session?.life ?? null, session?.role ?? null, session?.connection.state ?? null);
    const el = $('status');
    el.dataset.state = pill.state;
    el.textContent = pill.text;
    ($('start-panel') as HTMLElement).hidden = session?.role === 'watch' && isAlive(session.life);
    if (!session) return;
    const controls = controlsFor(session.life, session.role);
    if (!isAlive(session.life)) $('share-row').hidden = true; // a watch link to an ended session leads nowhere
    const stop = $('stop') as HTMLButtonElement;
    const reset = $('reset') as HTMLButtonElement;
    stop.hidden = reset.hidden = !controls.showStreamControls;
    stop.disabled = !controls.stop || this.finishRequested;
    reset.disabled = !controls.reset;
    for (const [elId, kind] of [['export-ply', 'cloud.ply'], ['export-glb', 'cloud.glb']] as const) {
      const button = $(elId) as HTMLButtonElement;
      const off = !controls.exports || this.downloads.has(kind);
      button.disabled = off;
      if (controls.exports) button.removeAttribute('aria-disabled');
      else button.setAttribute('aria-disabled', 'true');
    }
    if (session.role === 'watch') {
      const notice = watcherNotice(session.life, this.streamerConnected);
      if (notice) this.showBanner({ key: 'watch-notice', level: isAlive(session.life) ? 'info' : 'warning', text: notice });
      else this.clearBanner('watch-notice');
    }
  }

  private renderOverlay(): void {
    const s = this.session;
    const st = s?.stats;
    $('stat-sent-rate').textContent = (st?.sent.rate() ?? 0).toFixed(1);
    $('stat-sent').textContent = String(st?.sent.total ?? 0);
    $('stat-recv-rate').textContent = (st?.received.rate() ?? 0).toFixed(1);
    $('stat-recv').textContent = String(st?.received.total ?? 0);
    $('stat-latency').textContent = st?.latencyMs.value != null ? `${st.latencyMs.value.toFixed(0)} ms` : '–';
    $('stat-points').textContent = formatCount(this.viewer.pointsShown);
    const server = st ? st.framesDropped - st.droppedClient - st.lostInReconnect : 0;
    $('stat-dropped').textContent = String(st?.framesDropped ?? 0);
    // client: camera frames skipped while the pipeline was full (or lost in a reconnect); server: its frame policy
    $('stat-dropped-split').textContent = st ? `${st.droppedClient + st.lostInReconnect} / ${server}` : '–';
    $('stat-frame').textContent = st && st.lastFrameIndex >= 0 ? String(st.lastFrameIndex) : '–';
    $('stat-bytes').textContent = st?.bytesPerResult.value != null ? formatBytes(Math.round(st.bytesPerResult.value)) : '–';
    $('stat-decode').textContent = st?.decodeUploadMs.value != null ? `${st.decodeUploadMs.value.toFixed(1)} ms` : '–';
    const p = this.source?.progress();
    if (p != null) ($('replay-progress') as HTMLProgressElement).value = p;
  }

  /** Numbers for automated checks (the end-to-end tests read them; nothing in the page depends on this). */
  snapshot() {
    const s = this.session;
    return {
      state: s?.connection.state.kind ?? 'idle',
      life: s?.life ?? null,
      stateHistory: this.stateHistory,
      pill: { state: $('status').dataset.state ?? '', text: $('status').textContent ?? '' },
      controls: Object.fromEntries(['stop', 'reset', 'export-ply', 'export-glb'].map((id) => [id, { hidden: $(id).getClientRects().length === 0, disabled: ($(id) as HTMLButtonElement).disabled }])),
      sourceRunning: this.source !== null,
      cameraLive: (($('camera-preview') as HTMLVideoElement).srcObject as MediaStream | null)?.getVideoTracks().some((t) => t.readyState === 'live') ?? false,
      storedSession: sessionStorage.getItem('spann3r.session') !== null,
      downloads: Object.fromEntries(this.downloads),
      role: s?.role ?? null,
      sessionId: this.sessionId,
      framesSent: s?.framesSent ?? 0,
      resultsReceived: s?.resultsReceived ?? 0,
      framesDropped: s?.stats.framesDropped ?? 0,
      droppedClient: s?.stats.droppedClient ?? 0,
      droppedServer: s?.stats.droppedServer ?? {},
      inFlight: s?.framesInFlight ?? 0,
      lastFrameIndex: s?.stats.lastFrameIndex ?? -1,
      pointsShown: this.viewer.pointsShown,
      pointsHeld: this.viewer.cloud.pointCount,
      frames: this.viewer.cloud.frameCount,
      poses: this.viewer.trajectory.frustumCount,
      reallocations: this.viewer.cloud.reallocations,
      latencyMs: s?.stats.latencyMs.value ?? null,
      decodeUploadMs: s?.stats.decodeUploadMs.value ?? null,
      bytesPerResult: s?.stats.bytesPerResult.value ?? null,
      renderedFrames: this.viewer.renderedFrames,
      synthetic: s?.hello?.model.synthetic ?? null,
      backfill: s?.backfill ?? null,
      finished: s?.finished ?? false,
      replayFrames: this.lastReplay?.frameTotal ?? null,
      banners: [...this.banners.entries()].map(([key, el]) => ({ key, level: el.dataset.level, text: el.querySelector('.text')?.textContent ?? '' })),
    };
  }
}

/** Hand a downloaded blob to the browser as a file. */
function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
