#!/usr/bin/env node
/**
 * Builds a delegate release bundle (CONTRACT §8):
 *
 *   pnpm --filter @ferry/delegate bundle [--] --version V [--out DIR] [--fault NAME]
 *
 * esbuild bundles src/worker-main.ts (with execa, ws, pino, @ferry/shared) into one file
 * `worker.mjs` (node20, ESM), the version baked in as the default of
 * FERRY_DELEGATE_VERSION; `manifest.json` = {version, protocol, entry, sha256 (hex of
 * worker.mjs), builtAt}; both at the root of the gzipped tar `ferry-delegate-V.tgz` in
 * --out (default delegate/dist/bundles; a relative --out is taken from where the command
 * was typed). The last line printed is the bundle's path.
 *
 * FAULT INJECTION, FOR TESTS ONLY (never ship such a bundle):
 *   --fault missing-lazy-http-module   the module the http handler loads lazily on the
 *                                      request path (src/tasks/http-report.ts) is left out:
 *                                      self-checks pass, every http task fails with
 *                                      "Cannot find module" (the incident of issue 5)
 *   --fault crash-on-start             the worker exits 1 as soon as it starts
 *   --fault crash-after-probation      the worker passes probation, then exits 1 a second
 *                                      after it ends, and a second after every restart
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as esbuild from 'esbuild';
import * as tar from 'tar';
import { PROTOCOL_VERSION } from '@ferry/shared';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const FAULTS = ['missing-lazy-http-module', 'crash-on-start', 'crash-after-probation'];
const VERSION_RE = /^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$/;
const USAGE = `usage: pnpm --filter @ferry/delegate bundle -- --version V [--out DIR] [--fault ${FAULTS.join('|')}]`;

function usage(msg) {
  process.stderr.write(`error: USAGE: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    // pnpm may hand on the `--` separator: it is not an end of options here
    args: process.argv.slice(2).filter((a) => a !== '--'),
    options: {
      version: { type: 'string' },
      out: { type: 'string' },
      fault: { type: 'string', multiple: true },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const version = values.version;
if (!version) usage('--version is required');
if (!VERSION_RE.test(version)) usage(`--version: ${JSON.stringify(version)} is not a version (letters, digits, . _ + -; at most 64)`);
const faults = values.fault ?? [];
for (const f of faults) if (!FAULTS.includes(f)) usage(`--fault: unknown fault ${JSON.stringify(f)} (one of ${FAULTS.join(', ')})`);
const outDir = values.out ? resolve(process.env.INIT_CWD ?? process.cwd(), values.out) : join(pkgDir, 'dist', 'bundles');

const ENTRY = 'worker.mjs';
const work = mkdtempSync(join(tmpdir(), 'ferry-bundle-'));
try {
  const banner = [
    // CommonJS dependencies (pino, ws) call require() for Node's own modules
    "import { createRequire as __ferryCreateRequire } from 'node:module';",
    'const require = __ferryCreateRequire(import.meta.url);',
    `if (!process.env.FERRY_DELEGATE_VERSION) process.env.FERRY_DELEGATE_VERSION = ${JSON.stringify(version)};`,
  ];
  if (faults.includes('crash-on-start')) {
    banner.push("process.stderr.write('ferry: FAULT INJECTION crash-on-start: this test bundle exits at once\\n'); process.exit(1);");
  }
  if (faults.includes('crash-after-probation')) {
    banner.push(
      "{ const crash = () => setTimeout(() => { process.stderr.write('ferry: FAULT INJECTION crash-after-probation: this test bundle exits now\\n'); process.exit(1); }, 1000);",
      "  if (process.env.FERRY_PROBATION === '1') process.on('message', (m) => { if (m && m.type === 'probation.end') crash(); }); else crash(); }",
    );
  }
  const plugins = [];
  if (faults.includes('missing-lazy-http-module')) {
    plugins.push({
      name: 'ferry-fault-missing-lazy-http-module',
      setup(build) {
        // left as a runtime import of a file that is not in the bundle
        build.onResolve({ filter: /(^|\/)http-report(\.js)?$/ }, () => ({ path: './http-report.js', external: true }));
      },
    });
  }
  const result = await esbuild.build({
    entryPoints: [join(pkgDir, 'src', 'worker-main.ts')],
    outfile: join(work, ENTRY),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    mainFields: ['module', 'main'],
    banner: { js: banner.join('\n') },
    plugins,
    legalComments: 'none',
    logLevel: 'warning',
    metafile: false,
  });
  if (result.errors.length > 0) throw new Error('esbuild failed');

  const worker = readFileSync(join(work, ENTRY));
  const manifest = {
    version,
    protocol: PROTOCOL_VERSION,
    entry: ENTRY,
    sha256: createHash('sha256').update(worker).digest('hex'),
    builtAt: new Date().toISOString(),
    ...(faults.length > 0 ? { faults } : {}),
  };
  writeFileSync(join(work, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `ferry-delegate-${version}.tgz`);
  await tar.c({ gzip: true, cwd: work, file, portable: true, noMtime: false }, ['manifest.json', ENTRY]);
  process.stdout.write(`built ${version}${faults.length ? ` (FAULT INJECTION: ${faults.join(', ')})` : ''}: worker ${(worker.length / 1024).toFixed(0)} KiB, sha256 ${manifest.sha256}\n`);
  process.stdout.write(`${file}\n`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
