import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { pino } from 'pino';
import { openStore, type Store } from '../store/db.js';
import { bootstrap } from '../store/bootstrap.js';
import { createMetrics } from '../metrics.js';
import { SecretBox } from '../store/secrets.js';
import { LogStore } from '../logs/log-store.js';
import { Scheduler } from '../scheduler/scheduler.js';
import type { Principal } from '../http/auth.js';
import { Engine } from './runtime.js';

class FakeClock { constructor(public t = Date.parse('2026-03-01T00:00:00Z')) {} now() { return this.t; } advance(ms: number) { this.t += ms; } }

interface Fx {
  dir: string; store: Store; clock: FakeClock; logs: LogStore; scheduler: Scheduler; engine: Engine; accountId: string;
  admin: Principal; as(name: string, role: 'admin' | 'deployer' | 'viewer', scopes?: Principal['scopes']): Principal;
  newEngine(): Engine;
  finish(taskId: string, status?: 'Succeeded' | 'Failed' | 'Canceled', o?: { kind?: string; outputs?: Record<string, string>; notify?: boolean }): Promise<void>;
  started(taskId: string): Promise<void>;
  queued(executionId: string): Promise<Array<{ id: string; env: Record<string, string> }>>;
}

const fixtures: Fx[] = [];
afterEach(async () => {
  for (const f of fixtures.splice(0)) {
    await f.engine.stop();
    f.scheduler.stop();
    await f.logs.close();
    await f.store.close();
    fs.rmSync(f.dir, { recursive: true, force: true });
  }
});

async function fixture(): Promise<Fx> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-engine-'));
  const store = openStore(`sqlite:${path.join(dir, 'ferry.db')}`);
  await store.migrate();
  const clock = new FakeClock();
  await bootstrap(store, dir, clock.now());
  const logger = pino({ level: 'silent' });
  const metrics = createMetrics();
  const logs = new LogStore(store, clock, logger, metrics);
  const scheduler = new Scheduler(store, clock, logger, metrics, SecretBox.open(dir), logs, { leaseMs: 15_000, delegateGraceMs: 60_000 });
  const acc = await store.db.selectFrom('accounts').select('id').where('name', '=', 'default').executeTakeFirstOrThrow();
  const mk = () => new Engine({ store, scheduler, logs, clock, logger, timerPollMs: 3_600_000 });
  const engine = mk();
  scheduler.setListener(engine);
  const as = (name: string, role: 'admin' | 'deployer' | 'viewer', scopes: Principal['scopes'] = {}): Principal => ({
    tokenId: name, kind: 'user', name, accountId: acc.id, account: 'default', role, scopes, system: role === 'admin',
  });
  const f: Fx = {
    dir, store, clock, logs, scheduler, engine, accountId: acc.id, admin: as('admin', 'admin'), as,
    newEngine: mk,
    async finish(taskId, status = 'Succeeded', o = {}) {
      const row = await store.db.selectFrom('tasks').select(['execution_id', 'started_at']).where('id', '=', taskId).executeTakeFirstOrThrow();
      const error = status === 'Succeeded' ? undefined : { kind: (o.kind ?? (status === 'Canceled' ? 'Canceled' : 'StepFailed')) as 'StepFailed', message: 'boom', retryable: false };
      const result = { status, exitCode: status === 'Succeeded' ? 0 : 1, error, outputs: o.outputs ?? {}, startedAt: clock.now(), finishedAt: clock.now() };
      await store.db.updateTable('tasks').set({ status: status === 'Succeeded' ? 'succeeded' : status === 'Canceled' ? 'canceled' : 'failed', result: JSON.stringify(result), finished_at: clock.now() }).where('id', '=', taskId).execute();
      if (o.notify === false) return;
      f.engine.onTaskFinished({ taskId, executionId: row.execution_id, status, exitCode: result.exitCode, ...(error ? { error } : {}), outputs: result.outputs, startedAt: clock.now(), finishedAt: clock.now(), delegateId: null, delegateVersion: null });
      await f.engine.idle();
    },
    async started(taskId) {
      const row = await store.db.selectFrom('tasks').select(['execution_id']).where('id', '=', taskId).executeTakeFirstOrThrow();
      await store.db.updateTable('tasks').set({ status: 'running', started_at: clock.now() }).where('id', '=', taskId).execute();
      f.engine.onTaskStarted({ taskId, executionId: row.execution_id, delegateId: 'd1', delegateName: 'delegate-1', at: clock.now() });
      await f.engine.idle();
    },
    async queued(executionId) {
      const rows = await store.db.selectFrom('tasks').select(['id', 'env']).where('execution_id', '=', executionId).where('status', '=', 'queued').orderBy('queue_seq').execute();
      return rows.map((r) => ({ id: r.id, env: JSON.parse(r.env) as Record<string, string> }));
    },
  };
  fixtures.push(f);
  return f;
}

const PIPE = `pipeline: web
stages:
  - id: dev
    type: deploy
    service: web
    environment: dev
    infrastructure: local
    steps:
      - { id: deploy, type: shell, script: ./deploy.sh }
    rollbackSteps:
      - { id: undo, type: shell, script: './deploy.sh "$FERRY_ROLLBACK_ARTIFACT"' }
    failureStrategies: [{ on: [AllErrors], action: { type: stageRollback } }]
`;

async function runOnce(f: Fx, artifact: string, ok: boolean, pipeline = 'web') {
  const doc = await f.engine.run(f.admin, f.accountId, pipeline, { artifact });
  const [t] = await f.queued(doc.id);
  await f.started(t!.id);
  await f.finish(t!.id, ok ? 'Succeeded' : 'Failed');
  if (!ok) {
    const [undo] = await f.queued(doc.id);
    await f.started(undo!.id);
    await f.finish(undo!.id);
  }
  return f.engine.get(f.admin, f.accountId, doc.id);
}

describe('engine runtime', () => {
  test('apply, run, task events, document, deployments recorded', async () => {
    const f = await fixture();
    expect(await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE)).toMatchObject({ name: 'web', version: 1 });
    expect((await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE)).version).toBe(2);
    expect(await f.engine.listPipelines(f.admin, f.accountId)).toEqual([{ name: 'web', version: 2, updatedAt: expect.any(String) }]);
    const doc = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1.0.0' });
    expect(doc).toMatchObject({ pipeline: 'web', pipelineVersion: 2, status: 'Running', artifact: '1.0.0' });
    expect(doc.stages[0]!.steps[0]).toMatchObject({ id: 'deploy', status: 'QueuedForAgent', queue: { reason: 'no delegate of account default is connected', position: 1 } });
    const [task] = await f.queued(doc.id);
    expect(task!.env).toMatchObject({ FERRY_EXECUTION_ID: doc.id, FERRY_ARTIFACT: '1.0.0', FERRY_STAGE_ID: 'dev', FERRY_STEP_ID: 'deploy' });
    await f.started(task!.id);
    await f.finish(task!.id);
    const end = await f.engine.get(f.admin, f.accountId, doc.id);
    expect(end.status).toBe('Succeeded');
    expect(end.stages[0]!.steps[0]).toMatchObject({ status: 'Succeeded', delegate: 'delegate-1', exitCode: 0 });
    const deps = await f.store.db.selectFrom('deployments').selectAll().execute();
    expect(deps.map((d) => [d.artifact, d.status])).toEqual([['1.0.0', 'succeeded']]);
    expect(await f.engine.list(f.admin, f.accountId)).toEqual([expect.objectContaining({ id: doc.id, status: 'Succeeded', pipeline: 'web' })]);
    expect(await f.engine.listMappings(f.admin, f.accountId)).toEqual([expect.objectContaining({ service: 'web', environment: 'dev', infrastructure: 'local', environmentType: 'preproduction' })]);
  });

  test('rollback picks the last good artifact across executions and skips a bad one', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE);
    await runOnce(f, '1.0.0', true);
    await runOnce(f, '1.1.0', true);
    const bad = await runOnce(f, '1.2.0', false); // rolled back to 1.1.0
    expect(bad.stages[0]).toMatchObject({ status: 'Failed', rolledBack: true, rollbackArtifact: '1.1.0' });
    await runOnce(f, '1.1.0', false); // 1.1.0 now failed there: bad
    const again = await runOnce(f, '1.3.0', false);
    expect(again.stages[0]!.rollbackArtifact).toBe('1.0.0');
  });

  test('a run queued behind a running one (concurrency 1) starts when it ends', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE);
    const a = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1' });
    const b = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '2' });
    expect(b.stages[0]).toMatchObject({ status: 'Queued', attempts: [{ status: 'NotDeployed', operationStatus: 'Queued' }] });
    expect(await f.queued(b.id)).toEqual([]);
    const [ta] = await f.queued(a.id);
    await f.started(ta!.id);
    await f.finish(ta!.id);
    const b2 = await f.engine.get(f.admin, f.accountId, b.id);
    expect(b2.stages[0]!.attempts[0]!.history.map((h) => h.operationStatus)).toEqual(['Queued', 'QueuedForAgent']);
    expect(await f.queued(b.id)).toHaveLength(1);
  });

  test('deployLatestOnly supersedes waiting runs', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE.replace('stages:', 'environments:\n  dev: { deployLatestOnly: true }\nstages:'));
    const a = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1' });
    const b = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '2' });
    const c = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '3' });
    const b2 = await f.engine.get(f.admin, f.accountId, b.id);
    expect(b2).toMatchObject({ status: 'Superseded', supersededBy: c.id });
    expect(b2.stages[0]).toMatchObject({ status: 'Canceled', attempts: [{ status: 'NotDeployed', operationStatus: 'Canceled' }] });
    expect(b2.stages[0]!.steps[0]!.status).toBe('Canceled');
    expect((await f.engine.get(f.admin, f.accountId, a.id)).status).toBe('Running');
    expect((await f.engine.get(f.admin, f.accountId, c.id)).stages[0]!.status).toBe('Queued');
  });

  test("the account's running limit: QueuedForPipeline until a run ends", async () => {
    const f = await fixture();
    await f.store.db.updateTable('accounts').set({ running_limit: 1 }).where('id', '=', f.accountId).execute();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE.replace(/dev/g, 'qa'));
    await f.engine.applyPipeline(f.admin, f.accountId, 'other', PIPE.replace('pipeline: web', 'pipeline: other'));
    const a = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1' });
    const b = await f.engine.run(f.admin, f.accountId, 'other', { artifact: '1' });
    expect(b).toMatchObject({ status: 'Queued', stages: [{ status: 'Queued', attempts: [{ status: 'NotDeployed', operationStatus: 'QueuedForPipeline' }] }] });
    await f.engine.command(f.admin, f.accountId, a.id, { type: 'abort' });
    const b2 = await f.engine.get(f.admin, f.accountId, b.id);
    expect(b2.status).toBe('Running');
    expect(b2.stages[0]!.attempts[0]!.operationStatus).toBe('QueuedForAgent');
  });

  test('timers: an approval times out → Expired', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'gate', 'pipeline: gate\nstages:\n  - { id: ok, type: approval, timeout: 1h }\n');
    const doc = await f.engine.run(f.admin, f.accountId, 'gate', {});
    await f.engine.tick();
    expect((await f.engine.get(f.admin, f.accountId, doc.id)).status).toBe('Running');
    f.clock.advance(3_600_000);
    await f.engine.tick();
    const end = await f.engine.get(f.admin, f.accountId, doc.id);
    expect(end).toMatchObject({ status: 'Expired', stages: [{ status: 'Expired', attempts: [{ status: 'NotDeployed', operationStatus: 'Rejected' }] }] });
    expect(await f.store.db.selectFrom('timers').selectAll().execute()).toEqual([]);
  });

  test('crash safety: a result stored while the engine was down is applied at start', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE);
    const doc = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1' });
    const [t] = await f.queued(doc.id);
    await f.started(t!.id);
    await f.finish(t!.id, 'Succeeded', { notify: false }); // stored, but the engine "died" before hearing it
    expect((await f.engine.get(f.admin, f.accountId, doc.id)).status).toBe('Running');
    const fresh = f.newEngine();
    await fresh.start();
    await fresh.stop();
    expect((await fresh.get(f.admin, f.accountId, doc.id)).status).toBe('Succeeded');
  });

  test('crash safety: a cancel lost after the commit is sent again at start; a missed start is applied', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE);
    const doc = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1' });
    const [t] = await f.queued(doc.id);
    // started on a delegate, but the engine never heard it
    await f.store.db.updateTable('tasks').set({ status: 'running', started_at: f.clock.now(), delegate_id: null }).where('id', '=', t!.id).execute();
    // an engine whose cancels are lost (killed right after its commit)
    const lossy = new Engine({ store: f.store, scheduler: { ...f.scheduler, enqueue: f.scheduler.enqueue.bind(f.scheduler), wake: () => undefined, describeQueue: async () => null, cancel: async () => undefined }, logs: f.logs, clock: f.clock, logger: pino({ level: 'silent' }) });
    await lossy.command(f.admin, f.accountId, doc.id, { type: 'abort' });
    const mid = await f.engine.get(f.admin, f.accountId, doc.id);
    expect(mid.stages[0]!.attempts[0]!.operationStatus).toBe('Canceled'); // the run looked queued to it
    const fresh = f.newEngine();
    await fresh.start();
    await fresh.stop();
    const row = await f.store.db.selectFrom('tasks').select(['cancel_requested', 'status']).where('id', '=', t!.id).executeTakeFirstOrThrow();
    expect(row.cancel_requested).toBe(1);
  });

  test('crash safety: a slot freed but never handed on is granted at start', async () => {
    const f = await fixture();
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', PIPE);
    const a = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '1' });
    const b = await f.engine.run(f.admin, f.accountId, 'web', { artifact: '2' });
    // a's holder row went away (its release committed) but the grant never ran
    await f.store.db.withTables<{ engine_slots: { execution_id: string; key: string } }>().deleteFrom('engine_slots').where('execution_id', '=', a.id).where('key', '!=', 'account').execute();
    expect((await f.engine.get(f.admin, f.accountId, b.id)).stages[0]!.status).toBe('Queued');
    const fresh = f.newEngine();
    await fresh.start();
    await fresh.stop();
    expect((await fresh.get(f.admin, f.accountId, b.id)).stages[0]!.attempts[0]!.operationStatus).toBe('QueuedForAgent');
  });

  test('permissions: viewers read; deployers act only within their scopes', async () => {
    const f = await fixture();
    const prodPipe = `pipeline: web
stages:
  - { id: dev, type: deploy, service: web, environment: dev, infrastructure: local, steps: [{ id: d, type: shell, script: x }] }
  - { id: gate, type: approval }
  - { id: prod, type: deploy, service: web, environment: prod, infrastructure: c, steps: [{ id: d, type: shell, script: x }] }
environments:
  prod: { type: production }
`;
    await f.engine.applyPipeline(f.admin, f.accountId, 'web', prodPipe);
    const viewer = f.as('vic', 'viewer');
    const pre = f.as('pat', 'deployer', { environmentType: 'preproduction' });
    const other = f.as('sam', 'deployer', { service: 'api' });
    await expect(f.engine.run(viewer, f.accountId, 'web', {})).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(f.engine.run(pre, f.accountId, 'web', {})).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('cannot run stage prod: the token is scoped to preproduction environments') });
    await expect(f.engine.run(other, f.accountId, 'web', {})).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('scoped to service api') });
    const doc = await f.engine.run(f.admin, f.accountId, 'web', {});
    expect((await f.engine.get(viewer, f.accountId, doc.id)).id).toBe(doc.id);
    const [t] = await f.queued(doc.id);
    await f.started(t!.id);
    await f.finish(t!.id);
    await expect(f.engine.command(pre, f.accountId, doc.id, { type: 'approve' })).rejects.toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('cannot approve stage gate (it leads to prod)') });
    await expect(f.engine.command(viewer, f.accountId, doc.id, { type: 'approve' })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await f.engine.command(f.as('ops', 'deployer', { environmentType: 'production' }), f.accountId, doc.id, { type: 'approve' });
    expect((await f.engine.get(viewer, f.accountId, doc.id)).stages[1]!.status).toBe('Succeeded');
    await expect(f.engine.get(viewer, f.accountId, 'nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
