import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { buildServer } from '../http/app.js';
import { TokenCache } from '../http/auth.js';
import { loadServerConfig } from '../config.js';
import { createMetrics } from '../metrics.js';
import { SecretBox } from '../store/secrets.js';
import { createToken } from '../store/accounts.js';
import { openStore, type Store } from '../store/db.js';
import { bootstrap } from '../store/bootstrap.js';
import { LogStore } from '../logs/log-store.js';
import { Scheduler } from '../scheduler/scheduler.js';
import type { AppContext } from '../context.js';
import { engineOf } from './index.js';

const PIPE = `pipeline: web
stages:
  - id: dev
    type: deploy
    service: web
    environment: dev
    infrastructure: local
    steps:
      - parallel:
          - { id: a, type: shell, script: x }
          - { id: b, type: shell, script: y }
    failureStrategies: [{ on: [AllErrors], action: { type: manualIntervention } }]
  - { id: gate, type: approval }
  - { id: prod, type: deploy, service: web, environment: prod, infrastructure: c, steps: [{ id: d, type: shell, script: z }] }
environments:
  prod: { type: production }
`;

describe('pipeline and execution routes', () => {
  let dir: string;
  let store: Store;
  let app: FastifyInstance;
  let logs: LogStore;
  let scheduler: Scheduler;
  let ctx: AppContext;
  const auth: Record<string, string> = {};

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-engine-routes-'));
    store = openStore(`sqlite:${path.join(dir, 'ferry.db')}`);
    await store.migrate();
    await bootstrap(store, dir, Date.now());
    const acc = await store.db.selectFrom('accounts').select('id').where('name', '=', 'default').executeTakeFirstOrThrow();
    const now = Date.now();
    const tok = async (name: string, role: 'admin' | 'deployer' | 'viewer', scopes = {}) => `Bearer ${(await createToken(store.db, { accountId: acc.id, kind: 'user', name, role, scopes, now })).token}`;
    auth.admin = await tok('root', 'admin');
    auth.viewer = await tok('vic', 'viewer');
    auth.pre = await tok('pat', 'deployer', { environmentType: 'preproduction' });
    const config = loadServerConfig({ FERRY_DATA_DIR: dir, FERRY_DATABASE_URL: 'sqlite::memory:', FERRY_LOG_LEVEL: 'silent' });
    const logger = pino({ level: 'silent' });
    const metrics = createMetrics();
    const clock = { now: () => Date.now() };
    logs = new LogStore(store, clock, logger, metrics);
    scheduler = new Scheduler(store, clock, logger, metrics, SecretBox.open(dir), logs, { leaseMs: 15_000, delegateGraceMs: 60_000 });
    ctx = {
      config, store, clock, logger, metrics, tokens: new TokenCache(store.db, 0), secretBox: SecretBox.open(dir),
      gateway: { sessions: () => [] }, scheduler, logs, engine: null, rings: null, shuttingDown: false,
    } as unknown as AppContext;
    scheduler.setListener(engineOf(ctx));
    app = await buildServer(ctx);
  });
  afterEach(async () => {
    await app.close();
    scheduler.stop();
    await logs.close();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const call = (method: 'GET' | 'POST' | 'PUT', url: string, who: string, body?: unknown, contentType?: string) =>
    app.inject({ method, url, headers: { authorization: auth[who]!, ...(contentType ? { 'content-type': contentType } : {}) }, ...(body === undefined ? {} : { payload: body as string }) });

  test('apply (YAML and JSON), list, show, schema, errors with line and field', async () => {
    const put = await call('PUT', '/api/v1/pipelines/web', 'admin', PIPE, 'application/yaml');
    expect(put.statusCode).toBe(200);
    expect(put.json()).toMatchObject({ name: 'web', version: 1 });
    const json = await call('PUT', '/api/v1/pipelines/gate', 'admin', { pipeline: 'gate', stages: [{ id: 'ok', type: 'approval' }] });
    expect(json.json()).toMatchObject({ name: 'gate', version: 1 });
    const bad = await call('PUT', '/api/v1/pipelines/web', 'admin', PIPE.replace('infrastructure: local', 'infrastructure: Local'), 'application/yaml');
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error).toMatchObject({ code: 'INVALID_PIPELINE', details: { errors: [{ line: 7, path: 'stages[0].infrastructure' }] } });
    expect(bad.json().error.message).toMatch(/^line 7: stages\[0\]\.infrastructure: expected a name/);
    expect((await call('PUT', '/api/v1/pipelines/web', 'viewer', PIPE, 'application/yaml')).statusCode).toBe(403);
    const pre = await call('PUT', '/api/v1/pipelines/web', 'pre', PIPE, 'application/yaml');
    expect(pre.statusCode).toBe(403);
    expect(pre.json().error.message).toMatch(/stage prod/);
    expect((await call('GET', '/api/v1/pipelines', 'viewer')).json()).toEqual([
      { name: 'gate', version: 1, updatedAt: expect.any(String) }, { name: 'web', version: 1, updatedAt: expect.any(String) },
    ]);
    const show = (await call('GET', '/api/v1/pipelines/web', 'viewer')).json();
    expect(show).toMatchObject({ name: 'web', version: 1, definition: { pipeline: 'web' } });
    expect((await call('GET', '/api/v1/pipelines/nope', 'viewer')).statusCode).toBe(404);
    expect((await call('GET', '/api/v1/schema/pipeline', 'viewer')).json()).toHaveProperty('properties.stages');
    expect((await call('GET', '/api/v1/infrastructures', 'viewer')).json()).toHaveLength(2);
  });

  test('run, list, show, commands, refusals, logs', async () => {
    await call('PUT', '/api/v1/pipelines/web', 'admin', PIPE, 'application/yaml');
    expect((await call('POST', '/api/v1/pipelines/web/executions', 'viewer', {})).statusCode).toBe(403);
    const run = await call('POST', '/api/v1/pipelines/web/executions', 'admin', { artifact: '1.0', inputs: {} });
    expect(run.statusCode).toBe(201);
    const doc = run.json();
    expect(doc).toMatchObject({ pipeline: 'web', pipelineVersion: 1, status: 'Running', artifact: '1.0', resumedFrom: null });
    expect(doc.stages[0].steps.map((s: { id: string; status: string }) => [s.id, s.status])).toEqual([['a', 'QueuedForAgent'], ['b', 'QueuedForAgent']]);
    const list = (await call('GET', '/api/v1/executions?pipeline=web', 'viewer')).json();
    expect(list).toEqual([expect.objectContaining({ id: doc.id, pipeline: 'web', status: 'Running', artifact: '1.0', finishedAt: null })]);
    expect((await call('GET', `/api/v1/executions/${doc.id}`, 'viewer')).json().id).toBe(doc.id);
    expect((await call('GET', '/api/v1/executions/nope', 'viewer')).statusCode).toBe(404);

    // both parallel steps fail → two interventions wait → AMBIGUOUS lists them
    const engine = engineOf(ctx);
    const tasks = await store.db.selectFrom('tasks').select(['id']).where('execution_id', '=', doc.id).execute();
    await store.db.insertInto('log_chunks').values([
      { task_id: tasks[0]!.id, seq: 1, attempt: 1, lines: JSON.stringify([[0, 1, 'out one'], [1, 2, 'err two'], [2, 3, 'a note']]), line_count: 3, created_at: 1 },
    ]).execute();
    for (const t of tasks) engine.onTaskFinished({ taskId: t.id, executionId: doc.id, status: 'Failed', exitCode: 2, error: { kind: 'StepFailed', message: 'x', retryable: false }, outputs: {}, startedAt: 1, finishedAt: 2, delegateId: null, delegateVersion: null });
    await engine.idle();
    const amb = await call('POST', `/api/v1/executions/${doc.id}/intervene`, 'admin', { action: 'ignore' });
    expect(amb.statusCode).toBe(409);
    expect(amb.json().error).toMatchObject({ code: 'AMBIGUOUS', details: { waiting: [{ stage: 'dev', step: 'a' }, { stage: 'dev', step: 'b' }] } });
    expect((await call('POST', `/api/v1/executions/${doc.id}/intervene`, 'admin', { action: 'explode' })).statusCode).toBe(400);
    expect((await call('POST', `/api/v1/executions/${doc.id}/intervene`, 'admin', { action: 'ignore', step: 'a' })).json().status).toBe('Paused');
    expect((await call('POST', `/api/v1/executions/${doc.id}/intervene`, 'pre', { action: 'ignore', step: 'b' })).json().status).toBe('Running');
    // the gate leads to prod: a preproduction deployer may not approve it
    const refused = await call('POST', `/api/v1/executions/${doc.id}/approve`, 'pre', {});
    expect(refused.statusCode).toBe(403);
    expect(refused.json().error.message).toMatch(/cannot approve stage gate \(it leads to prod\): the token is scoped to preproduction/);
    expect((await call('POST', `/api/v1/executions/${doc.id}/resume`, 'admin', { fromStage: 'dev' })).statusCode).toBe(409);
    const rej = await call('POST', `/api/v1/executions/${doc.id}/reject`, 'admin', { comment: 'no' });
    expect(rej.json()).toMatchObject({ status: 'Rejected', stages: [{ status: 'PartiallySucceeded' }, { status: 'Rejected' }, { status: 'NotStarted' }] });

    // logs: exact output with stage and step; prefixed lines (and notes) otherwise
    const exact = await call('GET', `/api/v1/executions/${doc.id}/logs?stage=dev&step=a`, 'viewer');
    expect(exact.headers['content-type']).toMatch(/^text\/plain/);
    expect(exact.body).toBe('out one\nerr two\n');
    const all = await call('GET', `/api/v1/executions/${doc.id}/logs`, 'viewer');
    expect(all.body).toBe('[dev/a] out one\n[dev/a] err two\n[dev/a] a note\n');
    expect((await call('GET', `/api/v1/executions/${doc.id}/logs?stage=nope`, 'viewer')).statusCode).toBe(404);

    const resumed = await call('POST', `/api/v1/executions/${doc.id}/resume`, 'admin', { fromStage: 'gate' });
    expect(resumed.json()).toMatchObject({ status: 'Running', resumedFrom: { stage: 'gate', by: 'root' } });
    expect(resumed.json().stages[1].attempts).toHaveLength(2);
  });
});
