// A private PostgreSQL 15 for the graphile-worker baselines: initdb in a temp dir,
// postgres on a free port of 127.0.0.1 with trust auth, its unix socket in the temp dir.
// Durability is left at PostgreSQL's defaults (fsync on, synchronous_commit on,
// full_page_writes on) so that the comparison with Ferry's durable SQLite is fair.
// As root, initdb and postgres run as the `postgres` user (they refuse root).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, sleep } from './_lib.mjs';

export const PG_BIN = process.env.BENCH_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

function pgUser() {
  try {
    for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === 'postgres') return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch { /* no passwd */ }
  return null;
}

/** Why PostgreSQL cannot run here, or null when it can. */
export function pgUnavailable() {
  for (const b of ['initdb', 'postgres', 'pg_isready']) {
    if (!fs.existsSync(path.join(PG_BIN, b))) return `PostgreSQL 15 not installed (${path.join(PG_BIN, b)} missing)`;
  }
  if (isRoot() && !pgUser()) return 'running as root and there is no `postgres` user to run PostgreSQL as';
  return null;
}

const asPg = (bin, args) => (isRoot() ? ['runuser', ['-u', 'postgres', '--', path.join(PG_BIN, bin), ...args]] : [path.join(PG_BIN, bin), args]);

/**
 * Starts the cluster; resolves with {url, port, dir, stop()}. `onStart(handle)` is told
 * {proc, data, dir} as soon as postgres is spawned, so that the caller can kill it
 * (killPostgresSync) if the benchmark dies before this resolves.
 */
export async function startPostgres({ onStart = () => {} } = {}) {
  const why = pgUnavailable();
  if (why) throw new Error(why);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-pg-'));
  const data = path.join(dir, 'data');
  if (isRoot()) { const u = pgUser(); fs.chownSync(dir, u.uid, u.gid); }
  fs.chmodSync(dir, 0o700);
  const [ic, ia] = asPg('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-instructions']);
  const init = spawnSync(ic, ia, { encoding: 'utf8', cwd: dir, timeout: 120_000 });
  if (init.status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed: ${init.stdout}\n${init.stderr}`);
  }
  let lastErr = '';
  for (let tries = 0; tries < 3; tries++) {
    const port = await freePort();
    const [cmd, args] = asPg('postgres', [
      '-D', data, '-p', String(port), '-k', dir,
      '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=100',
      '-c', 'dynamic_shared_memory_type=mmap', '-c', 'log_min_messages=warning', '-c', 'logging_collector=off',
    ]);
    const proc = spawn(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    onStart({ proc, data, dir });
    let out = '';
    proc.stdout.on('data', (d) => { out += d; });
    proc.stderr.on('data', (d) => { out += d; });
    const deadline = Date.now() + 60_000;
    let ready = false;
    while (Date.now() < deadline && proc.exitCode === null && proc.signalCode === null) {
      const r = spawnSync(path.join(PG_BIN, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-t', '2'], { encoding: 'utf8' });
      if (r.status === 0) { ready = true; break; }
      await sleep(100);
    }
    if (ready) {
      const stop = async () => {
        // fast shutdown: SIGINT to the postmaster itself (runuser would relay SIGTERM, a smart shutdown)
        let pm;
        try { pm = Number(fs.readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]); } catch { /* gone */ }
        if (pm) { try { process.kill(pm, 'SIGINT'); } catch { /* gone */ } }
        const end = Date.now() + 20_000;
        while (proc.exitCode === null && proc.signalCode === null && Date.now() < end) await sleep(50);
        if (proc.exitCode === null && proc.signalCode === null) {
          if (pm) { try { process.kill(pm, 'SIGKILL'); } catch { /* gone */ } }
          try { proc.kill('SIGKILL'); } catch { /* gone */ }
        }
        fs.rmSync(dir, { recursive: true, force: true });
      };
      return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, dir, data, proc, stop };
    }
    lastErr = out.slice(-3000);
    try { proc.kill('SIGKILL'); } catch { /* gone */ }
    if (!/already in use|could not bind/i.test(lastErr)) break;
  }
  fs.rmSync(dir, { recursive: true, force: true });
  throw new Error(`PostgreSQL did not start:\n${lastErr}`);
}

/** Kills a postmaster synchronously and removes its directory (process 'exit' handlers). */
export function killPostgresSync(pg) {
  try {
    const pm = Number(fs.readFileSync(path.join(pg.data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    if (pm) process.kill(pm, 'SIGKILL');
  } catch { /* gone */ }
  try { pg.proc.kill('SIGKILL'); } catch { /* gone */ }
  try { fs.rmSync(pg.dir, { recursive: true, force: true }); } catch { /* best effort */ }
}
