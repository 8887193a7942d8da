/**
 * Helpers for the engine-*.test.ts files: apply pipelines, run them, read the execution
 * document (CONTRACT §6) and the <status, operationStatus> pairs each stage attempt
 * went through — both as recorded (`attempts[].history`) and as a user polling
 * GET /api/v1/executions/:id saw them.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { apiRequest, makeTempDir, sleep, waitFor, type FerryServer } from './support/processes.js';

export interface StepDoc {
  id: string; type: string; status: string; attempt: number | null; try: number | null; phase: number | null;
  queuedAt: string | null; startedAt: string | null; finishedAt: string | null; exitCode: number | null;
  delegate: string | null; queue: { reason: string; position: number | null } | null;
  error: { kind: string; message: string } | null; runId?: string; rollback?: boolean; retryAt?: string | null;
  outputs?: Record<string, string>;
  approvals?: Array<{ by: string; decision: string; comment: string | null; at: string | null; deferUntil: string | null }>;
  intervention?: { since: string | null; timeoutAt: string | null; onTimeout: string | null } | null;
  interventions?: Array<{ by: string; action: string; at: string | null }>;
}
export interface AttemptDoc {
  attempt: number; status: string; operationStatus: string; startedAt: string | null; finishedAt: string | null;
  history: Array<{ status: string; operationStatus: string; at: string; reason: string }>;
}
export interface StageDoc {
  id: string; type: string; status: string; rollingBack: boolean; rolledBack: boolean; rollbackArtifact: string | null;
  failure: { kind: string; message: string; step: string | null; action: string } | null;
  attempts: AttemptDoc[]; steps: StepDoc[];
}
export interface ExecDoc {
  id: string; pipeline: string; pipelineVersion: number; status: string; artifact: string | null;
  inputs: Record<string, unknown>; createdAt: string; finishedAt: string | null; createdBy: string;
  resumedFrom: { stage: string; at: string; by: string } | null; supersededBy: string | null; abortedBy: string | null;
  stages: StageDoc[];
}

export const TERMINAL = ['Succeeded', 'PartiallySucceeded', 'Failed', 'Aborted', 'Expired', 'Rejected', 'Superseded'];

/** Delegate settings for fast tests (reconnect quickly after a server restart). */
export const FAST_DELEGATE = { FERRY_RECONNECT_BASE: '100ms', FERRY_RECONNECT_MAX: '1s', FERRY_KILL_GRACE: '2s' };

/** A pair as the tests write it: `Status/OperationStatus`. */
export const pairOf = (a: { status: string; operationStatus: string }): string => `${a.status}/${a.operationStatus}`;

export function stage(d: ExecDoc, id: string): StageDoc {
  const s = d.stages.find((x) => x.id === id);
  if (!s) throw new Error(`execution ${d.id} has no stage ${id}`);
  return s;
}

/** The pairs one attempt of a stage went through, as recorded (default: the latest attempt). */
export function pairs(d: ExecDoc, stageId: string, attempt?: number): string[] {
  const s = stage(d, stageId);
  const a = attempt === undefined ? s.attempts[s.attempts.length - 1] : s.attempts.find((x) => x.attempt === attempt);
  if (!a) return [];
  return a.history.map(pairOf);
}

/** Steps of a stage in the document (latest attempt, or every attempt with ?history=true). */
export function steps(d: ExecDoc, stageId: string, stepId?: string): StepDoc[] {
  return stage(d, stageId).steps.filter((s) => stepId === undefined || s.id === stepId);
}

export class EngineClient {
  constructor(readonly server: FerryServer, readonly token?: string) {}

  private tok(): string { return this.token ?? this.server.adminToken; }

  api<T = unknown>(method: string, path: string, body?: unknown, token?: string) {
    return apiRequest<T>(this.server.url, method, path, body, { token: token ?? this.tok() });
  }

  /** PUT the pipeline file (YAML text); returns its version. */
  async apply(yaml: string): Promise<number> {
    const name = /^pipeline:\s*(\S+)/m.exec(yaml)?.[1];
    if (!name) throw new Error('the pipeline file names no pipeline');
    const r = await apiRequest<{ version: number }>(this.server.url, 'PUT', `/api/v1/pipelines/${name}`, yaml, { token: this.tok(), headers: { 'content-type': 'application/yaml' } });
    expect(r.status, r.text).toBe(200);
    return r.body.version;
  }

  async run(pipeline: string, body: { artifact?: string; inputs?: Record<string, unknown> } = {}): Promise<ExecDoc> {
    const r = await this.api<ExecDoc>('POST', `pipelines/${pipeline}/executions`, body);
    expect(r.status, r.text).toBe(201);
    return r.body;
  }

  async get(id: string, history = false): Promise<ExecDoc> {
    const r = await this.api<ExecDoc>('GET', `executions/${id}${history ? '?history=true' : ''}`);
    expect(r.status, r.text).toBe(200);
    return r.body;
  }

  /** POST /executions/:id/VERB; expects 200 unless `status` says otherwise. */
  async command(id: string, verb: string, body: unknown = {}, status = 200, token?: string): Promise<{ status: number; body: unknown; text: string }> {
    const r = await this.api('POST', `executions/${id}/${verb}`, body, token);
    expect(r.status, `${verb}: ${r.text}`).toBe(status);
    return r;
  }

  /** Polls the execution until `pred` holds; returns that document. */
  async until(id: string, pred: (d: ExecDoc) => boolean, message: string, timeout = 30_000): Promise<ExecDoc> {
    return waitFor(async () => {
      const d = await this.get(id);
      return pred(d) ? d : undefined;
    }, { timeout, interval: 100, message: `${message} (execution ${id})` });
  }

  /** Waits until the execution ended; fails when it ended otherwise than `status`. */
  async ended(id: string, status?: string, timeout = 30_000): Promise<ExecDoc> {
    const d = await this.until(id, (x) => TERMINAL.includes(x.status), 'the execution to end', timeout);
    if (status) expect(d.status, JSON.stringify(d.stages.map((s) => [s.id, s.status, s.failure]))).toBe(status);
    return d;
  }

  /** Waits until a stage's latest attempt reads `pair` (Status/Operation). */
  async atPair(id: string, stageId: string, pair: string, timeout = 30_000): Promise<ExecDoc> {
    return this.until(id, (d) => {
      const s = stage(d, stageId);
      const a = s.attempts[s.attempts.length - 1];
      return Boolean(a && pairOf(a) === pair);
    }, `stage ${stageId} at <${pair.replace('/', ', ')}>`, timeout);
  }

  /** The step's exact output (GET …/logs?stage&step), latest attempt unless `attempt`. */
  async log(id: string, stageId: string, step: string, attempt?: number): Promise<string> {
    const r = await this.api<string>('GET', `executions/${id}/logs?stage=${stageId}&step=${step}${attempt ? `&attempt=${attempt}` : ''}`);
    expect(r.status, r.text).toBe(200);
    return r.text;
  }

  /** Every line of the execution, prefixed with stage/step, with the server's notes. */
  async allLogs(id: string): Promise<string> {
    const r = await this.api<string>('GET', `executions/${id}/logs`);
    expect(r.status, r.text).toBe(200);
    return r.text;
  }

  /**
   * Polls the execution document every `interval` ms in the background, recording the
   * distinct pairs each stage attempt showed, in order (what a user watching sees).
   */
  observe(id: string, interval = 50): Observer {
    return new Observer(this, id, interval);
  }
}

export class Observer {
  /** `stage#attempt` → pairs seen, without repeats */
  readonly seen = new Map<string, string[]>();
  readonly executionStatuses: string[] = [];
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(private readonly c: EngineClient, private readonly id: string, interval: number) {
    this.loop = (async () => {
      while (!this.stopped) {
        try {
          const r = await c.api<ExecDoc>('GET', `executions/${id}`);
          if (r.status === 200) this.record(r.body);
        } catch { /* the server may be down (crash tests) */ }
        await sleep(interval);
      }
    })();
  }

  private record(d: ExecDoc): void {
    if (this.executionStatuses[this.executionStatuses.length - 1] !== d.status) this.executionStatuses.push(d.status);
    for (const s of d.stages) {
      for (const a of s.attempts) {
        const key = `${s.id}#${a.attempt}`;
        const list = this.seen.get(key) ?? [];
        const p = pairOf(a);
        if (list[list.length - 1] !== p) list.push(p);
        this.seen.set(key, list);
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    // one last look, so the end is always seen
    const r = await this.c.api<ExecDoc>('GET', `executions/${this.id}`);
    if (r.status === 200) this.record(r.body);
  }

  /** What was seen of one attempt (default attempt 1). */
  of(stageId: string, attempt = 1): string[] {
    return this.seen.get(`${stageId}#${attempt}`) ?? [];
  }
}

/**
 * The check every scenario makes: the attempt recorded exactly `expected`, and what the
 * poller saw of it is that same sequence with some moments missed (never another order,
 * never a pair that was not recorded), ending at the same pair.
 */
export function expectPairs(d: ExecDoc, obs: Observer | null, stageId: string, expected: string[], attempt?: number): void {
  const s = stage(d, stageId);
  const n = attempt ?? s.attempts[s.attempts.length - 1]?.attempt ?? 1;
  const recorded = pairs(d, stageId, n);
  expect(recorded, `recorded pairs of ${stageId} attempt ${n}`).toEqual(expected);
  if (!obs) return;
  const seen = obs.of(stageId, n);
  expect(seen.length, `the poller saw nothing of ${stageId} attempt ${n}`).toBeGreaterThan(0);
  let i = 0;
  for (const p of seen) {
    while (i < recorded.length && recorded[i] !== p) i++;
    expect(i < recorded.length, `the poller saw ${seen.join(' → ')} of ${stageId} attempt ${n}, not in the recorded order ${recorded.join(' → ')}`).toBe(true);
  }
  expect(seen[seen.length - 1]).toBe(recorded[recorded.length - 1]);
}

/** A gate file a step waits for: `gate.script` blocks until `gate.open()`. */
export class Gate {
  readonly path: string;
  constructor(name: string) {
    this.path = join(makeTempDir('ferry-gate-'), name);
  }
  /** a shell line that waits (up to 60 s) for the gate */
  get wait(): string {
    return `i=0; while [ ! -f '${this.path}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; [ -f '${this.path}' ]`;
  }
  open(): void {
    writeFileSync(this.path, 'open\n');
  }
}

/** A user token (`ferry token create --kind user`), by API. */
export async function userToken(server: FerryServer, name: string, role: string, scopes?: Record<string, string>): Promise<string> {
  const r = await apiRequest<{ token: string }>(server.url, 'POST', '/api/v1/tokens', { kind: 'user', name, role, ...(scopes ? { scopes } : {}) }, { token: server.adminToken });
  expect(r.status, r.text).toBe(201);
  return r.body.token;
}
