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

test('the protocol constants protocol.ts exports are those of the server schema, not copies', async () => {
  // @ts-expect-error: a plain .mjs tool without type declarations
  const { protocolJsonSchema } = await import('../tools/gen-types.mjs');
  const constants = protocolJsonSchema()['x-constants'];
  const exported = await import('../src/protocol.ts');
  assert.deepEqual(exported.CloseCode, constants.CLOSE_CODES);
  assert.deepEqual(exported.SERVER_MESSAGE_TYPES, constants.SERVER_MESSAGE_TYPES);
  assert.deepEqual(exported.CLIENT_MESSAGE_TYPES, constants.CLIENT_MESSAGE_TYPES);
  assert.deepEqual(exported.ERROR_CODES, constants.ERROR_CODES);
  assert.equal(exported.PROTOCOL_VERSION, constants.PROTOCOL_VERSION);
  assert.equal(exported.CloseCode.SHUTDOWN, 1012); // what uvicorn sends at shutdown (docs/protocol.md)
});
