import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(join(FIXTURES, name)));
}

/** What tests/client_js/protocol_fixtures.py computed with numpy for each fixture. */
export const expected = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8'));

/** Values equal after both sides went through float32. */
export function assertFloatsClose(actual: ArrayLike<number>, wanted: number[], tol = 0, label = 'values'): void {
  if (actual.length !== wanted.length) throw new Error(`${label}: length ${actual.length} != ${wanted.length}`);
  for (let i = 0; i < wanted.length; i++) {
    const a = actual[i];
    const w = wanted[i];
    if (!(Math.abs(a - w) <= tol * Math.max(1, Math.abs(w)))) throw new Error(`${label}[${i}]: ${a} != ${w}`);
  }
}
