// Generates src/protocol.generated.ts from the service's pydantic schemas:
//   python -m spann3r.server.protocol  →  JSON Schema  →  json-schema-to-typescript  →  TypeScript.
// `--check` generates into memory and exits 1 when the committed file differs (the unit tests run it).
// The Python interpreter is $SPANN3R_PYTHON, else the repository's .venv, else `python`, else `python3`.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compile } from 'json-schema-to-typescript';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const GENERATED_PATH = join(root, 'src/protocol.generated.ts');

function pythonCandidates() {
  const list = [];
  if (process.env.SPANN3R_PYTHON) list.push(process.env.SPANN3R_PYTHON);
  list.push(join(root, '../.venv/bin/python'), 'python', 'python3');
  return list;
}

export function protocolJsonSchema() {
  const errors = [];
  for (const python of pythonCandidates()) {
    if (python.includes('/') && !existsSync(python)) continue;
    try {
      const out = execFileSync(python, ['-m', 'spann3r.server.protocol'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      return JSON.parse(out);
    } catch (err) {
      errors.push(`${python}: ${String(err.stderr || err.message).trim().split('\n').pop()}`);
    }
  }
  throw new Error(`no Python that can import spann3r.server.protocol (set SPANN3R_PYTHON):\n  ${errors.join('\n  ')}`);
}

/**
 * Adjusts the schema for TypeScript without changing what it describes:
 * - property titles are dropped, so json2ts names only the models (not one alias per field);
 * - msgpack `bin` fields (`format: binary`) are Uint8Array, which is what @msgpack/msgpack decodes them to;
 * - `const` fields (the `type` and `encoding` discriminators) are required: pydantic always serialises
 *   them, and TypeScript needs them present to narrow the unions;
 * - the REST bodies (every model that is not a WebSocket message) join the root union as `RestBody`:
 *   json2ts emits only types reachable from the root, and the client uses SessionCreated and friends;
 * - a `$ref` property keeps only the reference: json2ts would otherwise mint one copy of the referenced
 *   type per annotated use (Array1, Array2, ...). The dropped per-use descriptions live in docs/protocol.md.
 */
export function prepareSchema(schema) {
  const visit = (node) => {
    if (Array.isArray(node)) return node.forEach(visit);
    if (!node || typeof node !== 'object') return;
    if (node.type === 'string' && node.format === 'binary') {
      node.tsType = 'Uint8Array';
    }
    if (node.properties && typeof node.properties === 'object') {
      const required = new Set(node.required ?? []);
      for (const [name, prop] of Object.entries(node.properties)) {
        delete prop.title;
        if ('const' in prop) required.add(name);
        if (prop.$ref) for (const key of Object.keys(prop)) if (key !== '$ref') delete prop[key];
      }
      if (required.size) node.required = [...required];
    }
    for (const value of Object.values(node)) visit(value);
  };
  visit(schema);
  const restBodies = Object.keys(schema.$defs).filter((name) => /^[A-Z]/.test(name) && !name.endsWith('Msg'));
  const referenced = new Set(JSON.stringify(schema.oneOf).match(/#\/\$defs\/\w+/g) ?? []);
  schema.oneOf.push({
    title: 'RestBody',
    oneOf: restBodies.filter((n) => !referenced.has(`#/$defs/${n}`)).map((n) => ({ $ref: `#/$defs/${n}` })),
  });
  return schema;
}

const CONSTANT_DOCS = {
  PROTOCOL_VERSION: 'Protocol version (hello.protocol).',
  SUBPROTOCOL: 'WebSocket subprotocol name a client offers (the server accepts it).',
  TOKEN_SUBPROTOCOL_PREFIX: 'A client authenticates by offering the subprotocol TOKEN_SUBPROTOCOL_PREFIX + token next to SUBPROTOCOL.',
  MAX_SEQ: 'Largest frame seq (and ping id magnitude) the server accepts: exact in a JS number.',
  MAX_DEPTH: 'Deepest nesting of maps and arrays in a message the server accepts.',
  MAX_SERVER_MESSAGE_BYTES: 'Largest message the server sends (full float32 final + preview maps).',
  CLIENT_MESSAGE_TYPES: '`type` of every client → server message.',
  SERVER_MESSAGE_TYPES: '`type` of every server → client message.',
  ERROR_CODES: '`code` of every error message.',
  DROP_REASONS: '`reason` of every dropped message.',
  CLOSE_CODES: 'WebSocket close codes the server uses (server/protocol.py CLOSE_*).',
};

/** `export const` lines for the schema's `x-constants` (message type lists, error codes, close codes). */
export function constantsSource(constants) {
  const lines = [];
  for (const [name, value] of Object.entries(constants)) {
    if (!(name in CONSTANT_DOCS)) throw new Error(`x-constants.${name} has no entry in CONSTANT_DOCS`);
    lines.push(`/** ${CONSTANT_DOCS[name]} */`, `export const ${name} = ${tsLiteral(value)};`);
  }
  return lines.join('\n') + '\n';
}

/** A value as a TypeScript literal, one item a line for lists and maps (`as const` keeps the literal types). */
function tsLiteral(value) {
  const scalar = (v) => (typeof v === 'string' ? `'${v}'` : String(v));
  if (Array.isArray(value)) return `[\n${value.map((v) => `  ${scalar(v)},\n`).join('')}] as const`;
  if (value && typeof value === 'object') {
    return `{\n${Object.entries(value).map(([k, v]) => `  ${k}: ${scalar(v)},\n`).join('')}} as const`;
  }
  return scalar(value);
}

export async function generate() {
  const schema = prepareSchema(protocolJsonSchema());
  const constants = schema['x-constants'];
  delete schema['x-constants'];
  const body = await compile(schema, 'ProtocolMessage', {
    bannerComment: '',
    additionalProperties: false,
    unreachableDefinitions: true,
    strictIndexSignatures: true,
    format: true,
    style: { singleQuote: true, printWidth: 120 },
  });
  return (
    '/* eslint-disable */\n' +
    `// GENERATED by tools/gen-types.mjs from \`python -m spann3r.server.protocol\` (protocol v${schema.protocol}).\n` +
    '// Do not edit: change server/protocol.py and run `npm run gen:types`.\n\n' +
    body +
    '\n' +
    constantsSource(constants)
  );
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const text = await generate();
  if (process.argv.includes('--check')) {
    const current = existsSync(GENERATED_PATH) ? readFileSync(GENERATED_PATH, 'utf8') : '';
    if (current !== text) {
      console.error('src/protocol.generated.ts is stale: run `npm run gen:types` and commit the result');
      process.exit(1);
    }
    console.log('src/protocol.generated.ts is up to date');
  } else {
    writeFileSync(GENERATED_PATH, text);
    console.log(`wrote ${GENERATED_PATH}`);
  }
}
