import { App } from './app.ts';

declare global {
  interface Window {
    /** the running page, for debugging from the console and for the end-to-end tests */
    spann3rLive?: App;
    /** with ?bench=1: measures decode + GPU upload per result message in this page (npm run bench) */
    spann3rBench?: (frames: number) => Promise<unknown>;
  }
}

function boot(): void {
  try {
    const app = new App();
    window.spann3rLive = app;
    if (app.params.get('bench') === '1') {
      window.spann3rBench = async (frames: number) => {
        const { BENCH_CONFIGS, makeResultMessages, measure } = await import('./bench/decodeUpload.ts');
        const viewer = app.viewer;
        const results = [];
        for (const cfg of BENCH_CONFIGS) {
          viewer.reset();
          const messages = makeResultMessages(cfg, 40);
          const view = {
            addFrame: viewer.addFrame.bind(viewer),
            renderNow: () => viewer.uploadNow(),
            get pointCount() { return viewer.cloud.pointCount; },
            get reallocations() { return viewer.cloud.reallocations; },
          };
          results.push(measure(cfg, view, messages, frames, () => performance.now()));
          viewer.frameAll();
        }
        return { maxPoints: viewer.cloud.maxPoints, results };
      };
    }
  } catch (err) {
    // WebGL missing or disabled is the usual cause; say so instead of leaving a blank page
    const div = document.createElement('div');
    div.className = 'banner';
    div.dataset.level = 'error';
    div.textContent = `The live view could not start: ${(err as Error).message}. This page needs WebGL.`;
    document.getElementById('banners')?.appendChild(div);
    throw err;
  }
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
