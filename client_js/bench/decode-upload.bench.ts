/**
 * `npm run bench`: bytes per result message, milliseconds to decode it and put it into the GPU buffers, and
 * the points held after 1,000 frames, for each output encoding.
 *
 * 1. Node: decode + copy into the typed arrays the GPU buffers mirror (no WebGL).
 * 2. Chromium (Debian's, headless; skipped when absent or when dist/ is not built): the same in the real
 *    page with WebGL, where "upload" includes the bufferSubData of the new range and a gl.finish().
 *    Headless Chromium has no GPU here: WebGL runs on SwiftShader (CPU), a pessimistic stand-in.
 *
 * Writes ../bench/results/client_decode_upload.json and .md. `--frames N` (default 1000).
 */
import { createServer } from 'node:http';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BENCH_CONFIGS, makeResultMessages, measure, type BenchResult } from '../src/bench/decodeUpload.ts';
import { GrowingPointCloud } from '../src/viewer/growingPointCloud.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const resultsDir = join(root, '..', 'bench', 'results');
const framesArg = process.argv.indexOf('--frames');
const FRAMES = framesArg > 0 ? Number(process.argv[framesArg + 1]) : 1000;
const MAX_POINTS = 8_000_000; // the page's desktop budget
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function nodeRun(): BenchResult[] {
  return BENCH_CONFIGS.map((cfg) => {
    const messages = makeResultMessages(cfg, 40);
    const cloud = new GrowingPointCloud({ maxPoints: MAX_POINTS, initialCapacity: 1 << 19 });
    const view = {
      addFrame: cloud.writeFrame.bind(cloud),
      get pointCount() { return cloud.pointCount; },
      get reallocations() { return cloud.reallocations; },
    };
    measure(cfg, view, messages, 30, () => performance.now()); // warm-up (JIT)
    cloud.clear();
    return measure(cfg, view, messages, FRAMES, () => performance.now());
  });
}

const MIME: Record<string, string> = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.map': 'application/json' };

async function browserRun(): Promise<{ results: BenchResult[]; maxPoints: number } | string> {
  const dist = join(root, 'dist');
  if (!existsSync(join(dist, 'index.html'))) return 'dist/ not built (npm run build)';
  if (!existsSync(CHROMIUM)) return `no Chromium at ${CHROMIUM}`;
  const { chromium } = await import('playwright-core');
  const server = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(dist, path === '/' ? 'index.html' : path);
    if (!file.startsWith(dist) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': MIME[extname(file)] ?? 'application/octet-stream' }).end(readFileSync(file));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const userDataDir = mkdtempSync(join(tmpdir(), 'spann3r-bench-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--use-angle=swiftshader', '--enable-unsafe-swiftshader'],
    viewport: { width: 1280, height: 800 },
  });
  try {
    const page = await context.newPage();
    // the page's own checks (server reachable etc.) fail here by design: only the bench matters
    await page.goto(`http://127.0.0.1:${port}/?bench=1&server=http://127.0.0.1:9&maxPoints=${MAX_POINTS}`);
    await page.waitForFunction(() => typeof window.spann3rBench === 'function');
    const out = (await page.evaluate((n) => window.spann3rBench!(n), FRAMES)) as { results: BenchResult[]; maxPoints: number };
    mkdirSync(join(root, '..', 'test-artifacts', 'bench'), { recursive: true });
    await page.screenshot({ path: join(root, '..', 'test-artifacts', 'bench', 'after-bench.png') });
    return out;
  } finally {
    await context.close();
    server.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

const fmt = (x: number) => x.toFixed(2);
function table(results: BenchResult[]): string {
  const rows = results.map((r) =>
    `| ${r.config.name} | ${(r.bytesPerMessage / 1024).toFixed(1)} KiB | ${r.pointsPerMessage.toLocaleString('en')} | ${fmt(r.decodeMs.median)} / ${fmt(r.decodeMs.p95)} | ${fmt(r.uploadMs.median)} / ${fmt(r.uploadMs.p95)} | ${fmt(r.totalMs.median)} / ${fmt(r.totalMs.p95)} | ${r.pointsHeld.toLocaleString('en')} | ${r.reallocations} |`);
  return [
    '| encoding | bytes / result | points / result | decode ms (median / p95) | upload ms (median / p95) | total ms (median / p95) | points held after ' + FRAMES + ' frames | reallocations |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

const nodeResults = nodeRun();
const browser = await browserRun();
const machine = `${cpus()[0]?.model ?? 'unknown CPU'} (${cpus().length} cores visible), Node ${process.version}`;
const json = { frames: FRAMES, maxPoints: MAX_POINTS, machine, date: new Date().toISOString(), node: nodeResults, browser: typeof browser === 'string' ? { skipped: browser } : browser };
mkdirSync(resultsDir, { recursive: true });
writeFileSync(join(resultsDir, 'client_decode_upload.json'), JSON.stringify(json, null, 1) + '\n');

const md = `# Browser client: decode and GPU upload per result message

Generated by \`cd client_js && npm run bench\` (client_js/bench/decode-upload.bench.ts) on ${machine}, ${json.date.slice(0, 10)}.

Each result message carries two maps (the final of frame t-1 and the preview of frame t), built in the wire
layout of server/protocol.py with every point confident (the worst case for \`compact\`). "decode" is msgpack +
map decoding (int16/float16 → float32); "upload" is copying into the preallocated arrays and, in the browser,
the \`bufferSubData\` of just the new ranges plus \`gl.finish()\`. The point budget is ${(MAX_POINTS / 1e6).toFixed(0)} M
(the page's desktop default; 3 M on phones); past it the oldest frames are recycled, so "points held after
${FRAMES} frames" is min(budget, frames × points per frame). Reallocations: buffer doublings during the
measured ${FRAMES} frames, from a 0.5 M-point start (the page keeps its buffers across rows, so in the browser only
the first row grows them; Node starts each row after a 30-frame warm-up).

Bytes per result measured against a real \`spann3r serve\` in the browser tests (tiny model, compact stride 2,
tests/browser): 180–270 KiB, in line with the first row.

A frame at 30 fps lasts 33 ms; the live stream runs at a few results per second.

## Node (no WebGL)

${table(nodeResults)}

## Headless Chromium, WebGL on SwiftShader (CPU, no GPU)

${typeof browser === 'string' ? `skipped: ${browser}` : table(browser.results)}
`;
writeFileSync(join(resultsDir, 'client_decode_upload.md'), md);
console.log(md);
