/**
 * The page: wires the controls, the sources, the session and the viewer together.
 */
import { Api, ApiError, ServerUnreachable } from './api.ts';
import type { ConnectionState } from './connection.ts';
import { LiveSession, type Banner } from './session.ts';
import { CameraError, CameraSource } from './sources/camera.ts';
import { ReplaySource } from './sources/replay.ts';
import type { FrameSource } from './sources/source.ts';
import { formatBytes, formatCount } from './stats.ts';
import type { ColorMode } from './viewer/pointMaterial.ts';
import { Viewer } from './viewer/viewer.ts';

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

/** Read-only link parsing: a page URL with ?watch=ID&token=T, or "ID:TOKEN". */
export function parseWatchLink(text: string, base: string): { id: string; token: string; server: string | null } | null {
  const t = text.trim();
  if (!t) return null;
  const colon = /^([0-9a-zA-Z_-]+):(\S+)$/.exec(t);
  if (colon && !t.includes('/')) return { id: colon[1], token: colon[2], server: null };
  try {
    const url = new URL(t, base);
    const id = url.searchParams.get('watch');
    const token = url.searchParams.get('token');
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
    const watch = this.params.get('watch');
    const token = this.params.get('token');
    if (watch && token) void this.startWatch(watch, token);
  }

  // ------------------------------------------------------------------ settings

  private applyUrlSettings(): void {
    const map: Record<string, string> = { fps: 'opt-fps', shortSide: 'opt-short-side', quality: 'opt-quality', detail: 'opt-detail', inflight: 'opt-inflight', capture: 'opt-capture', facing: 'opt-facing' };
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
    return {
      fps: Math.min(this.num('opt-fps', 4), maxFps),
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
    const ok = await this.api.ready();
    if (ok) {
      this.clearBanner('server');
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

  // ------------------------------------------------------------------ starting and stopping

  async startCamera(): Promise<void> {
    await this.stop();
    const video = $('camera-preview') as HTMLVideoElement;
    const opts = this.captureOptions();
    const camera = new CameraSource(video, opts);
    // the camera first: no session is created for a user who refuses it
    try {
      await camera.open();
    } catch (err) {
      const message = err instanceof CameraError ? err.message : `The camera could not be started: ${(err as Error).message}`;
      this.showBanner({ key: 'camera', level: 'error', text: message });
      camera.stop();
      return;
    }
    this.clearBanner('camera');
    if (!(await this.createSession())) {
      camera.stop();
      return;
    }
    await camera.start(this.session!);
    video.hidden = false;
    this.source = camera;
    camera.onEnded = () => this.showBanner({ key: 'camera', level: 'warning', text: 'The camera stopped (unplugged or taken by another app).' });
  }

  async startReplay(files: File[]): Promise<void> {
    if (!files.length) return;
    await this.stop();
    const video = $('camera-preview') as HTMLVideoElement;
    const replay = new ReplaySource(files, video, this.captureOptions());
    this.lastReplay = replay;
    if (!(await this.createSession())) return;
    const session = this.session!;
    this.source = replay;
    const progress = $('replay-progress') as HTMLProgressElement;
    progress.hidden = false;
    replay.onEnded = () => void this.finishWhenDrained(session);
    await replay.start(session);
  }

  async startWatch(id: string, token: string): Promise<void> {
    await this.stop();
    this.sessionId = id;
    this.openSession(this.api.wsUrl(id), token, 'watch');
    this.showSessionPanel(id, null, null);
  }

  async stop(): Promise<void> {
    this.source?.stop();
    this.source = null;
    const video = $('camera-preview') as HTMLVideoElement;
    video.hidden = true;
    ($('replay-progress') as HTMLElement).hidden = true;
    if (this.session?.role === 'stream' && !this.session.finished) this.session.finish();
    if (this.session?.role === 'watch') this.session.close();
    // keep the last session's view and export links; a new start replaces them
    ($('start-panel') as HTMLElement).hidden = false;
    ($('stop') as HTMLButtonElement).disabled = true;
  }

  private async createSession(): Promise<boolean> {
    const stride = Number(($('opt-detail') as HTMLSelectElement).value) || 2;
    let created;
    try {
      created = await this.api.createSession({ encoding: 'compact', stride, frame_policy: 'latest' });
    } catch (err) {
      const text =
        err instanceof ServerUnreachable
          ? `Cannot reach the server at ${this.serverLabel}. Is \`spann3r serve\` running?`
          : err instanceof ApiError && err.code === 'capacity'
            ? 'The server is full (too many sessions). Try again in a minute.'
            : `The server refused a new session: ${(err as Error).message}`;
      this.showBanner({ key: 'server', level: 'error', text });
      return false;
    }
    this.clearBanner('server');
    this.sessionId = created.id;
    this.openSession(this.api.wsUrl(created.id, created.stream_url), created.token, 'stream');
    this.showSessionPanel(created.id, created.token, created.watch_token);
    return true;
  }

  private openSession(url: string, token: string, role: 'stream' | 'watch'): void {
    this.session?.close();
    this.viewer.reset();
    const session = new LiveSession(this.viewer, {
      url,
      token,
      role,
      maxInFlight: this.num('opt-inflight', 2),
      decode: { stride: Number(($('opt-detail') as HTMLSelectElement).value) || 2 },
    });
    session.onBanner = (b) => ('clear' in b ? this.clearBanner(b.key) : this.showBanner(b));
    session.onState = (s) => this.renderState(s);
    this.session = session;
    session.start();
    ($('start-panel') as HTMLElement).hidden = role === 'watch';
    ($('stop') as HTMLButtonElement).disabled = false;
    if (isNarrow()) document.body.classList.remove('panel-open');
  }

  /** A replay that reached its end: once every frame is answered, finish so the last final arrives. */
  private async finishWhenDrained(session: LiveSession): Promise<void> {
    for (let i = 0; i < 600 && session.framesInFlight > 0 && this.session === session; i++) await new Promise((r) => setTimeout(r, 100));
    if (this.session === session && !session.finished) session.finish();
    ($('stop') as HTMLButtonElement).disabled = true;
    this.source = null;
  }

  private showSessionPanel(id: string, token: string | null, watchToken: string | null): void {
    $('session-panel').hidden = false;
    $('session-id').textContent = id.slice(0, 8);
    for (const [elId, kind] of [['export-ply', 'cloud.ply'], ['export-glb', 'cloud.glb']] as const) {
      const a = $(elId) as HTMLAnchorElement;
      if (token) {
        a.href = this.api.exportUrl(id, token, kind);
        a.removeAttribute('aria-disabled');
        a.title = `Download the fused cloud (${kind}) from the server`;
      } else {
        a.removeAttribute('href');
        a.setAttribute('aria-disabled', 'true');
        a.title = 'Exports need the stream token; a watch link is read-only';
      }
    }
    const share = $('share-row');
    share.hidden = !watchToken;
    if (watchToken) {
      const url = new URL(location.href);
      url.search = '';
      url.searchParams.set('watch', id);
      url.searchParams.set('token', watchToken);
      if (this.params.get('server')) url.searchParams.set('server', this.params.get('server')!);
      ($('share-link') as HTMLInputElement).value = url.toString();
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
        this.showBanner({ key: 'watch', level: 'error', text: 'Paste a watch link (…?watch=ID&token=TOKEN) or ID:TOKEN.' });
        return;
      }
      this.clearBanner('watch');
      void this.startWatch(parsed.id, parsed.token);
    });
    $('stop').addEventListener('click', () => void this.stop());
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

  private renderState(s: ConnectionState): void {
    const pill = $('status');
    pill.dataset.state = s.kind;
    pill.textContent =
      s.kind === 'open'
        ? `${s.hello.role === 'watch' ? 'watching' : 'streaming'} · ${s.hello.model.preset}${s.hello.model.synthetic ? ' (synthetic)' : ''}`
        : s.kind === 'reconnecting'
          ? `reconnecting (${s.attempt})`
          : s.kind;
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
      role: s?.role ?? null,
      sessionId: this.sessionId,
      framesSent: s?.framesSent ?? 0,
      resultsReceived: s?.resultsReceived ?? 0,
      framesDropped: s?.stats.framesDropped ?? 0,
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
      finished: s?.finished ?? false,
      replayFrames: this.lastReplay?.frameTotal ?? null,
      banners: [...this.banners.entries()].map(([key, el]) => ({ key, level: el.dataset.level, text: el.querySelector('.text')?.textContent ?? '' })),
    };
  }
}
