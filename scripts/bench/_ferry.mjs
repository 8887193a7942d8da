// Helpers for the agent-queue, log and engine benchmarks: a process registry that stops
// everything a benchmark started (also on failure, timeout or a signal), real
// ferry-delegate processes, an in-process protocol client, read-only access to the
// server's SQLite file, bulk task submission, and the graphile-worker baseline.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { encodeFrame, decodeServerFrame, PROTOCOL_VERSION } from '../../shared/dist/index.js';
import { root, delegateBin, startServer, api, tmpDir, sleep, percentile, nodeArgs } from './_lib.mjs';
import { startPostgres, pgUnavailable, killPostgresSync } from './_pg.mjs';

// ---- process registry ---------------------------------------------------------------

const procs = new Set(); // { proc, group }
const dirs = new Set();
const cleanups = [];
const exitKills = [];

export function track(proc, { group = false } = {}) {
  const e = { proc, group };
  procs.add(e);
  proc.once('exit', () => procs.delete(e));
  return proc;
}
export function trackDir(dir) { dirs.add(dir); return dir; }
/** An async step of the cleanup (run newest first). */
export function onCleanup(fn) { cleanups.push(fn); }

const alive = (p) => p.exitCode === null && p.signalCode === null;
function signal(e, sig) {
  try { if (e.group) process.kill(-e.proc.pid, sig); else e.proc.kill(sig); } catch { /* gone */ }
}

let cleaning = null;
export function cleanupAll() {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    for (const fn of cleanups.reverse()) { try { await fn(); } catch { /* best effort */ } }
    const list = [...procs];
    for (const e of list) if (alive(e.proc)) signal(e, 'SIGTERM');
    const end = Date.now() + 5000;
    while (list.some((e) => alive(e.proc)) && Date.now() < end) await sleep(50);
    for (const e of list) if (alive(e.proc) || e.group) signal(e, 'SIGKILL');
    for (const d of dirs) { try { fs.rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } }
  })();
  return cleaning;
}

process.on('exit', () => {
  for (const e of procs) signal(e, 'SIGKILL');
  for (const k of exitKills) { try { k(); } catch { /* gone */ } }
});
let interrupted = null;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { interrupted = sig; if (procs.size || cleanups.length) process.stderr.write(`bench: ${sig}; stopping what it started\n`); void cleanupAll().finally(() => process.exit(130)); });
}

/** Thrown inside runBench: prints its message as the last line and exits 0 (a skipped benchmark). */
export class BenchSkip extends Error {
  constructor(message) { super(message); this.benchSkip = true; }
}

/**
 * Runs a benchmark body with a time bound; stops everything it started afterwards,
 * whatever happened, and exits 0 (or 1 on failure/timeout with the reason printed).
 */
export async function runBench(name, body, { timeoutMs = Number(process.env.BENCH_TIMEOUT_MS ?? 300_000) } = {}) {
  let code = 0;
  let timer;
  try {
    await Promise.race([
      body(),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${Math.round(timeoutMs / 1000)} s (BENCH_TIMEOUT_MS)`)), timeoutMs); }),
    ]);
  } catch (err) {
    code = 1;
    if (err?.benchSkip && !interrupted) {
      code = 0;
      console.log(err.message);
    } else if (interrupted) {
      console.log(`${name}: FAILED: interrupted by ${interrupted}`);
    } else {
      process.stderr.write(`${name}: ${err?.stack ?? err}\n`);
      console.log(`${name}: FAILED: ${String(err?.message ?? err).split('\n')[0]}`);
    }
  } finally {
    clearTimeout(timer);
    await cleanupAll();
  }
  process.exit(code);
}

// ---- ferry server and delegates -------------------------------------------------------

export async function startFerry(env = {}) {
  const dataDir = trackDir(tmpDir('srv'));
  const srv = await startServer({ dataDir, env: { FERRY_LOG_LEVEL: 'warn', ...env } });
  track(srv.proc);
  let err = '';
  srv.proc.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  srv.stderrTail = () => err;
  srv.call = (method, route, body) => api(srv.url, srv.adminToken, method, route, body);
  return srv;
}

export async function delegateToken(srv, name = 'bench') {
  const t = await srv.call('POST', '/api/v1/tokens', { kind: 'delegate', name: `${name}-${Date.now().toString(36)}` });
  return t.token;
}

/** Starts a real ferry-delegate (supervisor + worker) in a process group of its own. */
export function startDelegate(srv, token, { name, capacity = 4, tags = [], env = {} } = {}) {
  const stateDir = trackDir(tmpDir('dlg'));
  const proc = spawn(process.execPath, [...nodeArgs, delegateBin], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      ...process.env,
      FERRY_URL: srv.url, FERRY_DELEGATE_TOKEN: token, FERRY_STATE_DIR: stateDir, FERRY_DELEGATE_NAME: name,
      FERRY_DELEGATE_CAPACITY: String(capacity), FERRY_DELEGATE_TAGS: tags.join(','), FERRY_LOG_LEVEL: 'warn', ...env,
    },
  });
  track(proc, { group: true });
  let err = '';
  proc.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  return { proc, name, stateDir, stderrTail: () => err };
}

export async function stopDelegate(d, graceMs = 5000) {
  if (!alive(d.proc)) return;
  try { process.kill(-d.proc.pid, 'SIGTERM'); } catch { /* gone */ }
  const end = Date.now() + graceMs;
  while (alive(d.proc) && Date.now() < end) await sleep(25);
  try { process.kill(-d.proc.pid, 'SIGKILL'); } catch { /* gone */ }
}

/** Waits until every named delegate shows as connected in GET /api/v1/delegates. */
export async function waitConnected(srv, names, timeoutMs = 60_000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const list = await srv.call('GET', '/api/v1/delegates');
    const up = new Set(list.filter((d) => d.connected).map((d) => d.name));
    if (names.every((n) => up.has(n))) return;
    await sleep(100);
  }
  throw new Error(`delegates not connected within ${timeoutMs} ms: ${names.join(', ')}`);
}

// ---- protocol client (one clock with the submitter) ---------------------------------------

/**
 * A delegate speaking the real protocol, in this process. `onAssign(frame, t)` is called
 * with performance.now() at the moment the task.assign frame arrived.
 */
export class ProtocolDelegate {
  constructor(srv, token, { name, capacity = 1, capabilities = ['noop'], tags = [] }) {
    Object.assign(this, { srv, token, name, capacity, capabilities, tags });
    this.delegateId = `bench-${name}-${Date.now().toString(36)}`;
    this.onAssign = () => {};
    this.acks = new Map(); // taskId -> resolve(done frame)
    this.hb = null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${this.srv.url.replace(/^http/, 'ws')}/api/v1/delegate/connect`, { headers: { authorization: `Bearer ${this.token}` }, perMessageDeflate: false });
      this.ws = ws;
      ws.on('open', () => ws.send(encodeFrame({
        type: 'hello', protocol: PROTOCOL_VERSION, delegateId: this.delegateId, name: this.name, version: '0.0.0-bench',
        tags: this.tags, capabilities: this.capabilities, capacity: this.capacity, running: [],
      })));
      ws.on('message', (data) => {
        const t = performance.now();
        const r = decodeServerFrame(data);
        if (!r.ok) return;
        const f = r.frame;
        if (f.type === 'welcome') {
          this.hb = setInterval(() => this.send({ type: 'heartbeat', at: Date.now(), running: [], load: 0 }), f.heartbeatMs);
          this.hb.unref();
          resolve(this);
        } else if (f.type === 'task.assign') {
          this.onAssign(f, t);
        } else if (f.type === 'log.ack') {
          const w = this.acks.get(f.taskId);
          if (w && f.done) { this.acks.delete(f.taskId); w(f); }
        }
      });
      ws.on('close', (code, reason) => { clearInterval(this.hb); reject(new Error(`protocol client closed ${code} ${reason}`)); });
      ws.on('error', reject);
    });
  }

  send(f) { this.ws.send(encodeFrame(f)); }

  /** task.accept then task.result Succeeded; resolves when the server acknowledges the result. */
  complete(a, startedAt = Date.now()) {
    const done = new Promise((r) => this.acks.set(a.taskId, r));
    this.send({ type: 'task.accept', taskId: a.taskId, attempt: a.attempt });
    const now = Date.now();
    this.send({ type: 'task.result', taskId: a.taskId, attempt: a.attempt, seq: 1, status: 'Succeeded', exitCode: 0, outputs: {}, startedAt, finishedAt: Math.max(now, startedAt) });
    return done;
  }

  close() {
    clearInterval(this.hb);
    try { this.ws.close(1000, 'bench done'); } catch { /* closed */ }
  }
}

// ---- the server's database, read-only -------------------------------------------------------

const requireCp = createRequire(path.join(root, 'control-plane/package.json'));
export const BetterSqlite3 = requireCp('better-sqlite3');

/** The server's SQLite file opened read-only (the benchmarks only count and read). */
export function openServerDb(srv) {
  const db = new BetterSqlite3(path.join(srv.dataDir, 'ferry.db'), { readonly: true, fileMustExist: true });
  onCleanup(async () => { try { db.close(); } catch { /* closed */ } });
  return db;
}

// ---- submission -----------------------------------------------------------------------

/**
 * POSTs up to `n` tasks made by `body(i)` with `concurrency` requests in flight; stops
 * submitting at `deadline` (with `partial`, resolves with the ids submitted so far; else throws).
 */
export async function submitMany(srv, n, body, concurrency = 64, deadline = Date.now() + 300_000, { partial = false } = {}) {
  const ids = [];
  let next = 0;
  // BENCH_BATCH > 1 submits through POST /api/v1/tasks/batch (that many tasks per request,
  // one commit each); 1 posts tasks one by one.
  const batch = Number(process.env.BENCH_BATCH ?? 100);
  const worker = async () => {
    while (next < n && Date.now() < deadline) {
      if (batch > 1) {
        const from = next;
        const count = Math.min(batch, n - from);
        next += count;
        const tasks = Array.from({ length: count }, (_, k) => body(from + k));
        ids.push(...(await srv.call('POST', '/api/v1/tasks/batch', { tasks })).ids);
        continue;
      }
      const i = next++;
      ids.push((await srv.call('POST', '/api/v1/tasks', body(i))).id);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  if (ids.length < n && !partial) throw new Error(`submission did not finish in time (${ids.length}/${n})`);
  return ids;
}

/** Waits until `test()` is truthy, polling every `everyMs`, at most `timeoutMs`. */
export async function until(test, { everyMs = 50, timeoutMs = 120_000, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await test();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---- statistics and formatting --------------------------------------------------------------

export function stats(values) {
  const s = [...values].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return { n: s.length, p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), max: s[s.length - 1], mean };
}
export const ms = (x, d = 2) => (Number.isFinite(x) ? `${x.toFixed(d)} ms` : 'n/a');
export const int = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a');
export const ratio = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}x` : 'n/a');
/** Wall-clock time in ms with sub-ms precision, comparable across processes on one machine. */
export const wallNow = () => performance.timeOrigin + performance.now();

// ---- graphile-worker baseline ------------------------------------------------------------------

let pgPromise = null;
async function pgOnce() {
  if (!pgPromise) {
    pgPromise = (async () => {
      let started = null;
      // until it is up, a dying benchmark kills the postmaster by its pid file (the spawned
      // runuser cannot relay SIGKILL, and would relay SIGTERM as a smart shutdown)
      const kill = () => { if (started) killPostgresSync(started); };
      exitKills.push(kill);
      onCleanup(async () => kill());
      const pg = await startPostgres({ onStart: (h) => { started = h; } });
      onCleanup(() => pg.stop());
      if (cleaning) { await pg.stop(); throw new Error('interrupted'); }
      return pg;
    })();
  }
  return pgPromise;
}

/**
 * Runs a graphile-worker baseline in a child process on a private PostgreSQL (started
 * once per benchmark). Resolves with its figures, or {unavailable: reason}.
 */
export async function graphile(mode, n) {
  if (process.env.BENCH_SKIP_GRAPHILE === '1') return { unavailable: 'BENCH_SKIP_GRAPHILE=1' };
  const why = pgUnavailable();
  if (why) return { unavailable: why };
  let pg;
  try { pg = await pgOnce(); } catch (err) { return { unavailable: `PostgreSQL did not start: ${String(err.message).split('\n')[0]}` }; }
  const proc = track(spawn(process.execPath, [path.join(root, 'scripts/bench/_graphile.mjs'), mode, pg.url, String(n)], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  const code = await new Promise((r) => proc.on('exit', (c) => r(c)));
  const line = out.trim().split('\n').pop();
  if (code !== 0 || !line) throw new Error(`graphile-worker ${mode} baseline failed (exit ${code}): ${err}`);
  return JSON.parse(line);
}

// ---- CPU accounting ------------------------------------------------------------------------------

/** CPU ms (user+system) of a process and its descendants (Linux /proc). */
export function treeCpuMs(pid) {
  let total = 0;
  const seen = new Set();
  const walk = (p) => {
    if (seen.has(p)) return;
    seen.add(p);
    try {
      const s = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      total += ((Number(f[11]) + Number(f[12])) * 1000) / 100;
      for (const t of fs.readdirSync(`/proc/${p}/task`)) {
        const kids = fs.readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim();
        if (kids) for (const k of kids.split(/\s+/)) walk(Number(k));
      }
    } catch { /* gone */ }
  };
  walk(pid);
  return total;
}
