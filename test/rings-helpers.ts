/**
 * Helpers for the rings-*.test.ts files: build delegate bundles with the bundle script,
 * publish them, read rings, delegates and raw tasks.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, makeTempDir, waitFor, type FerryServer, type DelegateInfo } from './support/processes.js';

export interface RingDoc {
  name: string;
  order: number;
  version: string | null;
  previousVersion: string | null;
  accounts: string[];
  delegates: { total: number; onTarget: number; other: number; upgrading: number; failed: number };
  rollout: null | { version: string; state: string; since: string; reason?: string | null };
}
export interface HistoryDoc { at: string; from: string | null; to: string | null; by: string; reason: string; evidence: unknown }
export interface TaskView {
  id: string; kind: string; status: string; delegate: string | null; delegateVersion: string | null;
  result: null | { status: string; error?: { kind: string; message: string } };
}

/** Delegate settings for fast tests. */
export const FAST_DELEGATE = { FERRY_RECONNECT_BASE: '100ms', FERRY_RECONNECT_MAX: '1s', FERRY_KILL_GRACE: '2s', FERRY_PROBATION_TIMEOUT: '20s' };

let bundleDir: string | undefined;

/**
 * `node delegate/scripts/bundle.mjs --version V [--fault F]` (what
 * `pnpm --filter @ferry/delegate bundle -- …` runs); returns the bundle's path (last line).
 */
export function buildBundle(version: string, opts: { fault?: string; viaPnpm?: boolean } = {}): string {
  bundleDir ??= makeTempDir('ferry-bundles-');
  const args = ['--version', version, '--out', bundleDir, ...(opts.fault ? ['--fault', opts.fault] : [])];
  const r = opts.viaPnpm
    ? spawnSync('pnpm', ['--silent', '--filter', '@ferry/delegate', 'bundle', '--', ...args], { cwd: REPO_ROOT, encoding: 'utf8' })
    : spawnSync(process.execPath, [join(REPO_ROOT, 'delegate', 'scripts', 'bundle.mjs'), ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bundle ${version} failed (${r.status}): ${r.stderr}\n${r.stdout}`);
  const last = r.stdout.trim().split('\n').pop()!.trim();
  if (!last.endsWith(`ferry-delegate-${version}.tgz`)) throw new Error(`bundle: unexpected last line ${JSON.stringify(last)}`);
  return last;
}

export async function publish(server: FerryServer, file: string): Promise<{ version: string; sha256: string }> {
  return (await server.cli(['release', 'publish', file, '--json'])).json();
}

export const delegates = async (server: FerryServer) => (await server.cli(['delegates', '--json'])).json<DelegateInfo[]>();
export const ringStatus = async (server: FerryServer, ring: string) => (await server.cli(['ring', 'status', ring, '--json'])).json<RingDoc[]>()[0]!;
export const ringHistory = async (server: FerryServer, ring: string) => (await server.cli(['ring', 'history', ring, '--json'])).json<HistoryDoc[]>();

/** Waits until every named delegate is connected on `version` with its upgrade to it succeeded (or none). */
export function waitOnVersion(server: FerryServer, names: string[], version: string, timeout = 60_000): Promise<DelegateInfo[]> {
  return waitFor(async () => {
    const l = (await delegates(server)).filter((d) => names.includes(d.name));
    const ok = l.length === names.length && l.every((d) => d.connected && d.version === version && (d.upgrade === null || d.upgrade.version !== version || d.upgrade.state === 'succeeded'));
    return ok ? l : undefined;
  }, { timeout, interval: 250, message: `${names.join(', ')} connected on ${version}` });
}

export async function submitTask(server: FerryServer, spec: Record<string, unknown>, account?: string): Promise<string> {
  const r = await server.api<{ id: string }>('POST', '/api/v1/tasks', { spec, ...(account ? { account } : {}) });
  if (r.status !== 201) throw new Error(`submit: ${r.status} ${r.text}`);
  return r.body.id;
}

export const getTask = async (server: FerryServer, id: string) => (await server.api<TaskView>('GET', `/api/v1/tasks/${id}`)).body;

export function untilDone(server: FerryServer, id: string, timeout = 60_000): Promise<TaskView> {
  return waitFor(async () => {
    const t = await getTask(server, id);
    return ['succeeded', 'failed', 'canceled'].includes(t.status) ? t : undefined;
  }, { timeout, interval: 150, message: `task ${id} to finish` });
}
