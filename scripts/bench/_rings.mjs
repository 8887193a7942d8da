// Helpers for the ring benchmarks: bundles, publishing, real delegate supervisors.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { root, ferryBin, delegateBin, tmpDir, api, sleep } from './_lib.mjs';

/** Builds ferry-delegate-V.tgz with the bundle script; returns its path (the last line). */
export function buildBundle(version, outDir, fault) {
  const r = spawnSync(process.execPath, [path.join(root, 'delegate/scripts/bundle.mjs'), '--version', version, '--out', outDir, ...(fault ? ['--fault', fault] : [])], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bundle ${version}: ${r.stderr}`);
  return r.stdout.trim().split('\n').pop().trim();
}

/** Runs the ferry CLI; resolves with stdout (throws on a non-zero exit). */
export function cli(srv, args) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [ferryBin, ...args], {
      env: { ...process.env, FERRY_URL: srv.url, FERRY_TOKEN: srv.adminToken },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`ferry ${args.join(' ')}: exit ${code}: ${err}`))));
  });
}

/** One real `ferry-delegate` supervisor; output goes to delegate.log in its state dir. */
export function startDelegate(srv, { token, name, stateDir = tmpDir(`dlg-${name}`), env = {} }) {
  const log = fs.openSync(path.join(stateDir, 'delegate.log'), 'a');
  const proc = spawn(process.execPath, [delegateBin], {
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FERRY_'))),
      FERRY_URL: srv.url, FERRY_DELEGATE_TOKEN: token, FERRY_DELEGATE_NAME: name, FERRY_STATE_DIR: stateDir,
      FERRY_LOG_LEVEL: process.env.BENCH_DELEGATE_LOG_LEVEL ?? 'warn', ...env,
    },
    stdio: ['ignore', log, log],
  });
  fs.closeSync(log);
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  return { proc, name, stateDir, exited };
}

export async function stopDelegate(d, sig = 'SIGTERM', timeoutMs = 30_000) {
  if (d.proc.exitCode !== null || d.proc.signalCode !== null) return d.exited;
  d.proc.kill(sig);
  const t = setTimeout(() => d.proc.kill('SIGKILL'), timeoutMs);
  const r = await d.exited;
  clearTimeout(t);
  return r;
}

export const delegates = (srv) => api(srv.url, srv.adminToken, 'GET', '/api/v1/delegates');

/**
 * Polls until `pred(list)` holds; resolves with the time it held (Date.now()).
 */
export async function until(srv, pred, { timeoutMs = 120_000, intervalMs = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await delegates(srv);
    if (pred(last)) return Date.now();
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last.map((d) => ({ n: d.name, v: d.version, c: d.connected, u: d.upgrade })))}`);
    await sleep(intervalMs);
  }
}

/** Every named delegate connected on `version` in a normal session (capacity > 0) opened at or after `since`. */
export const allOn = (names, version, since = 0) => (list) => names.every((n) => {
  const d = list.find((x) => x.name === n);
  return d && d.connected && d.version === version && d.capacity > 0 && (!since || Date.parse(d.connectedAt) >= since);
});
