/**
 * Helpers for the canary-*.test.ts files: the example in examples/canary/ with short
 * windows, a server with one delegate, the execution document's shapes, and cleaning up the
 * service instances the example's deploy scripts start (they run in their own sessions,
 * outside every process group the test support tracks, so they are stopped explicitly).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  REPO_ROOT, createDelegateToken, makeTempDir, startDelegate, startServer, waitForDelegates,
  type FerryDelegate, type FerryServer,
} from './support/processes.js';

export const EXAMPLE = join(REPO_ROOT, 'examples', 'canary');

export interface MetricEvidence {
  name: string;
  classification: 'Pass' | 'High' | 'Low' | 'NoData';
  baseline: { points: number; median: number | null };
  canary: { points: number; median: number | null };
  pValue: number | null;
  statistic?: number | null;
  effectSize?: number | null;
  reason: string;
  critical?: boolean;
  failed?: boolean;
}
export interface Verification { verdict: string; score: number; reason?: string; metrics: MetricEvidence[] }
export interface StepDoc {
  id: string; type: string; status: string; attempt: number | null; try: number | null; phase: number | null;
  error: { kind: string; message: string } | null; verification?: Verification | null; rollback?: boolean;
  color?: string | null; weight?: number | null; startedAt: string | null;
}
export interface AttemptDoc {
  attempt: number; status: string; operationStatus: string;
  history: Array<{ status: string; operationStatus: string; reason: string }>;
}
export interface StageDoc {
  id: string; status: string; rolledBack: boolean; rollingBack: boolean; rollbackArtifact: string | null;
  failure: { kind: string; message: string; step: string | null; action: string } | null;
  paused: { phase: number; since: string | null; until: string | null } | null;
  liveColor?: string | null; attempts: AttemptDoc[]; steps: StepDoc[];
}
export interface ExecutionDoc { id: string; status: string; artifact: string | null; finishedAt: string | null; stages: StageDoc[] }

/** The example's pipeline file with test windows: 8 s per verification, a point a second, 4 s rate windows. */
export function fastPipeline(file: string, opts: { duration?: string } = {}): string {
  const text = readFileSync(join(EXAMPLE, file), 'utf8');
  const fast = text
    .replace(/duration: 5m/g, `duration: ${opts.duration ?? '8s'}`)
    .replace(/interval: 15s/g, 'interval: 1s')
    .replace(/\[1m\]/g, '[4s]');
  if (fast === text) throw new Error(`${file}: nothing to shorten`);
  return fast;
}

/** Writes `text` to a temp file and applies it with `ferry pipeline apply -f`. */
export async function applyPipeline(server: FerryServer, text: string): Promise<void> {
  const file = join(makeTempDir('ferry-canary-pipeline-'), 'pipeline.yaml');
  writeFileSync(file, text);
  (await server.cli(['pipeline', 'apply', '-f', file])).ok();
}

export async function startStack(): Promise<{ server: FerryServer; delegate: FerryDelegate }> {
  const server = await startServer();
  const delegate = startDelegate({
    url: server.url, token: await createDelegateToken(server), capacity: 4,
    env: { FERRY_RECONNECT_BASE: '100ms', FERRY_RECONNECT_MAX: '1s', FERRY_KILL_GRACE: '2s' },
  });
  await waitForDelegates(server, { count: 1, timeout: 60_000 }); // a loaded machine starts slowly
  return { server, delegate };
}

/** Stops every service instance the example started in `state` (examples/canary/stop.sh). */
export function stopExample(state: string): void {
  const r = spawnSync('bash', [join(EXAMPLE, 'stop.sh'), state], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`stop.sh ${state} failed: ${r.stderr}${r.stdout}`);
}

export const execution = async (server: FerryServer, id: string): Promise<ExecutionDoc> =>
  (await server.cli(['execution', id, '--json'])).json<ExecutionDoc>();

/** `ferry run PIPELINE --artifact A --input … --follow`: the execution's id and the exit code. */
export async function runFollow(server: FerryServer, pipeline: string, artifact: string, inputs: Record<string, string | number>): Promise<{ id: string; code: number | null; stdout: string }> {
  const args = ['run', pipeline, '--artifact', artifact, ...Object.entries(inputs).flatMap(([k, v]) => ['--input', `${k}=${v}`]), '--follow'];
  const r = await server.cli(args, { timeout: 100_000 });
  // newest first: the run just made (each test runs an artifact once per pipeline)
  const list = (await server.cli(['executions', '--pipeline', pipeline, '--json'])).json<Array<{ id: string; artifact: string }>>();
  const mine = list.find((e) => e.artifact === artifact);
  if (!mine) throw new Error(`no execution of ${pipeline} with ${artifact}: ${r.stdout}${r.stderr}`);
  return { id: mine.id, code: r.code, stdout: r.stdout + r.stderr };
}

/** GET /version of a port: the version an instance serves, or null when nothing answers. */
export async function servedVersion(port: number): Promise<string | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/version`, { signal: AbortSignal.timeout(2000) });
    return (await res.text()).trim();
  } catch {
    return null;
  }
}

export const pairs = (a: AttemptDoc): string[] => a.history.map((h) => `${h.status}/${h.operationStatus}`);
