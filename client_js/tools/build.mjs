// Bundles the live-view page into ../server/page/: one ES module (three.js and msgpack included) plus the static
// HTML/CSS. It is package data of spann3r.server, so `spann3r serve` finds it in a checkout and in an installed
// wheel alike, and serves it at `/`. --watch rebuilds on change.
import * as esbuild from 'esbuild';
import { cp, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, '..', 'server', 'page');
const watch = process.argv.includes('--watch');

await rm(dist, { recursive: true, force: true });
await mkdir(join(dist, 'assets'), { recursive: true });
for (const file of ['index.html', 'style.css', 'favicon.svg']) {
  await cp(join(root, 'src', file), join(dist, file === 'style.css' ? 'assets/style.css' : file));
}

const options = {
  entryPoints: [join(root, 'src/main.ts')],
  outfile: join(dist, 'assets/app.js'),
  bundle: true,
  format: 'esm',
  // Safari 15 / Chrome 100 era phones are the oldest targets that matter for a camera page.
  target: ['es2020', 'safari15', 'chrome100', 'firefox100'],
  minify: !watch,
  sourcemap: true,
  legalComments: 'linked',
  logLevel: 'warning',
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log('watching src/ → server/page/');
} else {
  const result = await esbuild.build({ ...options, metafile: true });
  const bytes = Object.values(result.metafile.outputs).reduce((sum, o) => sum + o.bytes, 0);
  console.log(`built server/page/ (${(bytes / 1024).toFixed(0)} KiB of assets)`);
}
