/** src/protocol.generated.ts must be what `npm run gen:types` makes from the current server/protocol.py. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

test('generated protocol types are up to date with server/protocol.py', () => {
  const run = spawnSync(process.execPath, [join(root, 'tools/gen-types.mjs'), '--check'], { encoding: 'utf8', cwd: root });
  assert.equal(run.status, 0, `${run.stderr}${run.stdout}`);
});
