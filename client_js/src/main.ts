import { App } from './app.ts';

declare global {
  interface Window {
    /** the running page, for debugging from the console and for the end-to-end tests */
    spann3rLive?: App;
  }
}

function boot(): void {
  try {
    window.spann3rLive = new App();
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
