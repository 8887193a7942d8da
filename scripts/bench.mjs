#!/usr/bin/env node
// `pnpm bench`: runs every benchmark in scripts/bench/ (or those named on the command
// line) one after another; each prints its figure and the ratio to its baseline
// measured in the same run.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'bench');
const wanted = process.argv.slice(2);
const all = fs.readdirSync(dir).filter((f) => f.endsWith('.mjs') && !f.startsWith('_')).sort();
const list = wanted.length ? all.filter((f) => wanted.some((w) => f.includes(w))) : all;
let failed = 0;
const summary = [];
for (const f of list) {
  process.stdout.write(`\n=== ${f} ===\n`);
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['--expose-gc', path.join(dir, f)], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', timeout: 20 * 60_000 });
  process.stdout.write(r.stdout ?? '');
  const last = (r.stdout ?? '').trim().split('\n').filter((l) => l.trim()).pop() ?? '';
  summary.push(`${f.padEnd(28)} ${r.status === 0 ? 'ok  ' : 'FAIL'} ${((Date.now() - t0) / 1000).toFixed(0)}s  ${last}`);
  if (r.status !== 0) failed++;
}
process.stdout.write(`\n=== summary ===\n${summary.join('\n')}\n`);
process.exit(failed ? 1 : 0);
