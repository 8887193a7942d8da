/**
 * A private PostgreSQL 15 cluster for the test run: initdb in a temp dir, postgres on a
 * free port of 127.0.0.1 with trust auth, its unix socket inside the temp dir. As root,
 * initdb and postgres run as the `postgres` user (they refuse root).
 *
 * No vitest imports: the global setup (main process) starts the cluster; test files
 * reach it through `postgres.ts`.
 */
import { execFile, spawnSync } from 'node:child_process';
import { chownSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, sleep, spawnTracked, type TrackedProcess } from './spawn.js';

export const PG_BIN_DIR = process.env.FERRY_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';

/** Why PostgreSQL cannot run here, or undefined when it can. */
export function pgUnavailableReason(): string | undefined {
  for (const bin of ['initdb', 'postgres', 'psql']) {
    if (!existsSync(join(PG_BIN_DIR, bin))) {
      return `PostgreSQL 15 not installed (${join(PG_BIN_DIR, bin)} missing; apt-get install -y postgresql-15)`;
    }
  }
  if (isRoot() && !lookupUser('postgres')) return 'running as root but there is no `postgres` user to run PostgreSQL as';
  return undefined;
}

export interface PgCluster {
  /** admin URL (user postgres, database postgres) */
  adminUrl: string;
  port: number;
  dir: string;
  socketDir: string;
  stop(): Promise<void>;
}

const isRoot = (): boolean => typeof process.getuid === 'function' && process.getuid() === 0;

function lookupUser(name: string): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === name && f[2] !== undefined && f[3] !== undefined) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch { /* no passwd */ }
  return undefined;
}

/** Command and args running `bin` as the postgres user when we are root. */
function asPostgres(bin: string, args: string[]): [string, string[]] {
  const path = join(PG_BIN_DIR, bin);
  return isRoot() ? ['runuser', ['-u', 'postgres', '--', path, ...args]] : [path, args];
}

export async function startPgCluster(): Promise<PgCluster> {
  const reason = pgUnavailableReason();
  if (reason) throw new Error(reason);
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pg-'));
  const dataDir = join(dir, 'data');
  if (isRoot()) {
    const pgUser = lookupUser('postgres');
    if (!pgUser) throw new Error('no postgres user');
    chownSync(dir, pgUser.uid, pgUser.gid);
  }
  chmodSync(dir, 0o700);

  const [initCmd, initArgs] = asPostgres('initdb', [
    '-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions',
  ]);
  const init = spawnSync(initCmd, initArgs, { encoding: 'utf8', cwd: dir, timeout: 120_000 });
  if (init.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed (${init.status ?? init.error?.message}):\n${init.stdout}\n${init.stderr}`);
  }

  let lastError = '';
  for (let tries = 0; tries < 3; tries++) {
    const port = await freePort();
    const [cmd, args] = asPostgres('postgres', [
      '-D', dataDir, '-p', String(port), '-k', dir,
      '-c', 'listen_addresses=127.0.0.1',
      '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
      '-c', 'max_connections=300', '-c', 'shared_buffers=64MB',
      '-c', 'dynamic_shared_memory_type=mmap',
      '-c', 'log_min_messages=warning', '-c', 'logging_collector=off',
    ]);
    const proc = spawnTracked(cmd, args, { name: 'postgres', cwd: dir, logFile: join(dir, 'postgres.log') });
    const ready = await Promise.race([
      proc.output.wait(/database system is ready to accept connections/).then(() => true),
      proc.exited.then(() => false),
      sleep(60_000).then(() => false),
    ]);
    if (ready && (await canConnect(port))) {
      const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
      return { adminUrl, port, dir, socketDir: dir, stop: () => stopCluster(proc, dataDir, dir) };
    }
    lastError = proc.output.tail(40);
    await proc.killHard().catch(() => {});
    proc.untrack();
    if (!/already in use|could not bind/i.test(lastError)) break;
  }
  rmSync(dir, { recursive: true, force: true });
  throw new Error(`PostgreSQL did not start:\n${lastError}`);
}

async function canConnect(port: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const r = spawnSync(join(PG_BIN_DIR, 'psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-Atc', 'select 1'],
      { encoding: 'utf8', timeout: 10_000, env: { ...process.env, PGCONNECT_TIMEOUT: '5' } });
    if (r.status === 0 && r.stdout.trim() === '1') return true;
    await sleep(100);
  }
  return false;
}

async function stopCluster(proc: TrackedProcess, dataDir: string, dir: string): Promise<void> {
  // Fast shutdown: SIGINT to the postmaster itself (runuser would turn a group signal into
  // SIGTERM, a "smart" shutdown that waits for every client to leave).
  let postmaster: number | undefined;
  try {
    postmaster = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch { /* not running */ }
  if (postmaster && !proc.hasExited) {
    try { process.kill(postmaster, 'SIGINT'); } catch { /* gone */ }
  }
  const gone = await proc.waitGone(30_000);
  if (!gone) await proc.killHard();
  proc.untrack();
  rmSync(dir, { recursive: true, force: true });
}

// ---- SQL through psql (the test package has no pg driver) -------------------------------

/** Run SQL with psql against `url`; resolves with stdout (unaligned, tuples only). */
export function psql(url: string, sql: string): Promise<string> {
  return new Promise((resolveOut, reject) => {
    execFile(join(PG_BIN_DIR, 'psql'), ['-X', '-v', 'ON_ERROR_STOP=1', '-At', '-d', url, '-c', sql],
      { encoding: 'utf8', timeout: 60_000, env: { ...process.env, PGCONNECT_TIMEOUT: '10' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`psql failed (${err.message.split('\n')[0]}): ${sql}\n${stderr}`));
        else resolveOut(stdout);
      });
  });
}
