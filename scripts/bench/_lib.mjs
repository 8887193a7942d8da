// Helpers shared by the benchmarks (files starting with _ are not run as benchmarks).
import { spawn } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ferryBin = path.join(root, 'control-plane/bin/ferry.js');
export const delegateBin = path.join(root, 'delegate/bin/ferry-delegate.js');

export function tmpDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ferry-bench-${prefix}-`));
}

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

/** Extra node flags for the Ferry processes a benchmark starts (e.g. BENCH_NODE_ARGS=--cpu-prof). */
export const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);

/** Starts `ferry server`; resolves with {proc, url, adminToken, dataDir}. */
export async function startServer({ dataDir = tmpDir('srv'), port = 0, env = {} } = {}) {
  const proc = spawn(process.execPath, [...nodeArgs, ferryBin, 'server'], {
    env: { ...process.env, FERRY_DATA_DIR: dataDir, FERRY_LISTEN: `127.0.0.1:${port}`, FERRY_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const url = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 60_000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
    proc.stderr.on('data', (d) => { out += d; });
    proc.on('exit', (c) => { clearTimeout(t); reject(new Error(`server exited ${c}: ${out}`)); });
  });
  proc.stdout.resume();
  const adminToken = fs.readFileSync(path.join(dataDir, 'admin-token'), 'utf8').trim();
  return { proc, url, adminToken, dataDir };
}

/**
 * Keep-alive HTTP client for the API. node:http rather than fetch: undici's fetch adds
 * about a millisecond per request on Node 20, which is the client's cost, not Ferry's.
 */
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

export function api(url, token, method, route, body) {
  const payload = body ? JSON.stringify(body) : undefined;
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}${route}`, {
      method,
      agent,
      headers: { authorization: `Bearer ${token}`, ...(payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {}) },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        if ((res.statusCode ?? 0) >= 400) reject(new Error(`${method} ${route}: ${res.statusCode} ${text}`));
        else resolve(text ? JSON.parse(text) : undefined);
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Resident set size of a process in bytes (Linux /proc). */
export function rss(pid) {
  const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(s);
  return m ? Number(m[1]) * 1024 : 0;
}

/** CPU time (user+system) of a process in milliseconds (Linux /proc). */
export function cpuMs(pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]);
  return (ticks * 1000) / 100; // CLK_TCK is 100 on Linux
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function kill(proc, sig = 'SIGKILL') {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once('exit', () => resolve());
    proc.kill(sig);
  });
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** Spawns a helper script; resolves with a line-reader for its JSON stdout messages. */
export function spawnHelper(file, args, env = {}) {
  const proc = spawn(process.execPath, [path.join(path.dirname(fileURLToPath(import.meta.url)), file), ...args], {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'],
  });
  const listeners = [];
  let buf = '';
  proc.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let msg;
      try { msg = JSON.parse(line); } catch { continue; }
      for (const l of [...listeners]) l(msg);
    }
  });
  return {
    proc,
    next(pred = () => true, timeout = 300_000) {
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${file}: timed out waiting`)), timeout);
        const l = (m) => { if (pred(m)) { clearTimeout(t); listeners.splice(listeners.indexOf(l), 1); resolve(m); } };
        listeners.push(l);
      });
    },
  };
}
