/**
 * Raw tasks: submit a delegate task outside any pipeline and read its state and log.
 * For diagnostics and benchmarks; admins only. (An extension of the contract.)
 */
import type { FastifyPluginAsync } from 'fastify';
import { FerryError, newId, parseDuration, type TaskSpec } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole } from './auth.js';
import { actingAccountId, NameSchema } from './common.js';
import type { TaskInput } from '../scheduler/types.js';
import { fromJson } from '../store/db.js';

interface SubmitBody {
  spec: TaskSpec;
  selectors?: string[];
  env?: Record<string, string>;
  secrets?: string[];
  timeout?: string | number;
  queueTimeout?: string | number;
  priority?: number;
  account?: string;
}

const SubmitSchema = {
  type: 'object', additionalProperties: false, required: ['spec'],
  properties: {
    spec: { type: 'object', required: ['kind'], properties: { kind: { type: 'string', enum: ['shell', 'http', 'noop', 'verify'] } } },
    selectors: { type: 'array', items: { type: 'string', maxLength: 128 }, maxItems: 64 },
    env: { type: 'object', additionalProperties: { type: 'string' } },
    secrets: { type: 'array', items: { type: 'string', maxLength: 100 }, maxItems: 64 },
    timeout: { anyOf: [{ type: 'string' }, { type: 'integer' }] },
    queueTimeout: { anyOf: [{ type: 'string' }, { type: 'integer' }] },
    priority: { type: 'integer' },
    account: NameSchema,
  },
} as const;

const { account: _account, ...ITEM_PROPERTIES } = SubmitSchema.properties;

function toInput(b: SubmitBody, accountId: string, field = ''): TaskInput {
  const timeoutMs = b.timeout === undefined ? null : parseDuration(b.timeout);
  const queueTimeoutMs = b.queueTimeout === undefined ? undefined : parseDuration(b.queueTimeout);
  if (timeoutMs === undefined) throw new FerryError('VALIDATION_FAILED', `${field}timeout is not a duration`, { field: `${field}timeout` });
  if (b.queueTimeout !== undefined && queueTimeoutMs === undefined) throw new FerryError('VALIDATION_FAILED', `${field}queueTimeout is not a duration`, { field: `${field}queueTimeout` });
  return {
    id: newId(), accountId, executionId: null, kind: b.spec.kind, spec: b.spec, env: b.env ?? {}, secretNames: b.secrets ?? [],
    selectors: b.selectors ?? [], priority: b.priority ?? 0, timeoutMs, ...(queueTimeoutMs !== undefined ? { queueTimeoutMs } : {}),
  };
}

export const taskRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  app.post<{ Body: { tasks: SubmitBody[]; account?: string } }>('/tasks/batch', {
    schema: {
      summary: 'Queue many raw tasks in one commit, in order',
      body: {
        type: 'object', additionalProperties: false, required: ['tasks'],
        properties: { tasks: { type: 'array', minItems: 1, maxItems: 1000, items: { ...SubmitSchema, properties: ITEM_PROPERTIES } }, account: NameSchema },
      },
    },
  }, async (req, reply) => {
    const p = principal(req);
    requireRole(p, 'admin');
    const accountId = await actingAccountId(ctx, p, req.body.account);
    const inputs = req.body.tasks.map((b, i) => toInput(b, accountId, `tasks/${i}/`));
    await ctx.scheduler.submitMany(inputs);
    return reply.code(201).send({ ids: inputs.map((t) => t.id) });
  });

  app.post<{ Body: SubmitBody }>('/tasks', {
    schema: {
      summary: 'Queue a raw delegate task (diagnostics, benchmarks)',
      body: SubmitSchema,
    },
  }, async (req, reply) => {
    const p = principal(req);
    requireRole(p, 'admin');
    const input = toInput(req.body, await actingAccountId(ctx, p, req.body.account));
    await ctx.scheduler.submit(input);
    const id = input.id;
    return reply.code(201).send({ id });
  });

  app.get<{ Params: { id: string } }>('/tasks/:id', {
    schema: { summary: 'A raw task: status, queue reason, result', params: { type: 'object', properties: { id: { type: 'string', maxLength: 128 } }, required: ['id'] } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    const t = await ctx.store.db.selectFrom('tasks').selectAll().where('id', '=', req.params.id).executeTakeFirst();
    if (!t || (!p.system && t.account_id !== p.accountId)) throw new FerryError('NOT_FOUND', `no task ${req.params.id}`);
    const queue = await ctx.scheduler.describeQueue(t.id);
    return {
      id: t.id, kind: t.kind, status: t.status, attempt: t.attempt, delegate: t.delegate_id, delegateVersion: t.delegate_version,
      queuedAt: new Date(Number(t.queued_at)).toISOString(),
      startedAt: t.started_at == null ? null : new Date(Number(t.started_at)).toISOString(),
      finishedAt: t.finished_at == null ? null : new Date(Number(t.finished_at)).toISOString(),
      queue, result: fromJson(t.result, null), lastSeq: t.last_seq,
    };
  });

  app.get<{ Params: { id: string } }>('/tasks/:id/logs', {
    schema: { summary: "A raw task's output, line for line", params: { type: 'object', properties: { id: { type: 'string', maxLength: 128 } }, required: ['id'] } },
  }, async (req, reply) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    const t = await ctx.store.db.selectFrom('tasks').select(['account_id']).where('id', '=', req.params.id).executeTakeFirst();
    if (!t || (!p.system && t.account_id !== p.accountId)) throw new FerryError('NOT_FOUND', `no task ${req.params.id}`);
    const chunks = await ctx.logs.readTask(req.params.id);
    let out = '';
    for (const c of chunks) for (const l of c.lines) if (l[0] !== 2) out += `${l[2]}\n`;
    return reply.type('text/plain; charset=utf-8').send(out);
  });

  app.post<{ Params: { id: string } }>('/tasks/:id/cancel', {
    schema: { summary: 'Cancel a raw task (SIGTERM to its process group, SIGKILL after the grace)', params: { type: 'object', properties: { id: { type: 'string', maxLength: 128 } }, required: ['id'] } },
  }, async (req) => {
    const p = principal(req);
    requireRole(p, 'admin');
    const t = await ctx.store.db.selectFrom('tasks').select(['account_id', 'status', 'execution_id']).where('id', '=', req.params.id).executeTakeFirst();
    if (!t || (!p.system && t.account_id !== p.accountId)) throw new FerryError('NOT_FOUND', `no task ${req.params.id}`);
    if (t.execution_id) throw new FerryError('WRONG_STATE', 'this task belongs to an execution: abort the execution instead');
    if (!['queued', 'assigned', 'running'].includes(t.status)) throw new FerryError('WRONG_STATE', `the task is ${t.status}`);
    await ctx.scheduler.cancel(req.params.id, `canceled by ${p.name}`);
    return { id: req.params.id, cancelRequested: true };
  });
};
