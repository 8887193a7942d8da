import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { FerryError, TERMINAL_EXECUTION } from '@ferry/shared';
import { principal, type PluginOpts } from './app.js';
import { requireRole } from './auth.js';
import { actingAccount, NameSchema } from './common.js';
import { engineOf, type Engine, type ExecutionCommand, type ExecutionState, type LogQuery, type LogRun } from '../engine/index.js';

const Id = { type: 'string', minLength: 1, maxLength: 128 } as const;
const IdParams = { type: 'object', properties: { id: Id }, required: ['id'] } as const;
const AccountQuery = { type: 'object', properties: { account: NameSchema } } as const;
const ExecutionOut = {
  type: 'object', additionalProperties: true,
  properties: { id: { type: 'string' }, pipeline: { type: 'string' }, pipelineVersion: { type: 'integer' }, status: { type: 'string' } },
} as const;
const SummaryOut = {
  type: 'object',
  properties: {
    id: { type: 'string' }, pipeline: { type: 'string' }, pipelineVersion: { type: 'integer' }, status: { type: 'string' },
    artifact: { type: ['string', 'null'] }, createdAt: { type: 'string' }, finishedAt: { type: ['string', 'null'] }, createdBy: { type: 'string' },
  },
} as const;
const Target = { stage: NameSchema, step: NameSchema } as const;

interface Q { account?: string }

export const executionRoutes: FastifyPluginAsync<PluginOpts> = async (app, { ctx }) => {
  const engine = () => engineOf(ctx);

  app.get<{ Querystring: Q & { pipeline?: string; status?: string; limit?: number } }>('/executions', {
    schema: {
      summary: 'Executions, newest first, one entry per execution with its latest state',
      querystring: { type: 'object', properties: { account: NameSchema, pipeline: NameSchema, status: { type: 'string', maxLength: 40 }, limit: { type: 'integer', minimum: 1, maximum: 5000 } } },
      response: { 200: { type: 'array', items: SummaryOut } },
    },
  }, async (req) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    return engine().list(p, acc.id, { ...(req.query.pipeline ? { pipeline: req.query.pipeline } : {}), ...(req.query.status ? { status: req.query.status } : {}), ...(req.query.limit ? { limit: req.query.limit } : {}) });
  });

  app.get<{ Params: { id: string }; Querystring: Q & { history?: boolean } }>('/executions/:id', {
    schema: {
      summary: 'The execution document (CONTRACT §6); ?history=true lists the step runs of every attempt',
      params: IdParams,
      querystring: { type: 'object', properties: { account: NameSchema, history: { type: 'boolean' } } },
      response: { 200: ExecutionOut },
    },
  }, async (req) => {
    const p = principal(req);
    const acc = await actingAccount(ctx, p, req.query.account);
    return engine().get(p, acc.id, req.params.id, { history: req.query.history === true });
  });

  // ---- commands ----

  const command = <B>(path: string, summary: string, body: Record<string, unknown>, toCmd: (b: B) => ExecutionCommand) => {
    app.post<{ Params: { id: string }; Querystring: Q; Body: B }>(`/executions/:id/${path}`, {
      schema: {
        summary, params: IdParams, querystring: AccountQuery,
        body: { type: 'object', additionalProperties: false, ...body },
        response: { 200: ExecutionOut },
      },
    }, async (req) => {
      const p = principal(req);
      const acc = await actingAccount(ctx, p, req.query.account);
      return engine().command(p, acc.id, req.params.id, toCmd((req.body ?? {}) as B));
    });
  };

  command<Record<string, never>>('abort', 'Abort: running tasks are cancelled, alwaysRun steps still run; never rolls back', { properties: {} }, () => ({ type: 'abort' }));
  command<{ fromStage: string }>('resume', 'Resume a Failed, Aborted, Expired or Rejected execution from a stage that ran',
    { properties: { fromStage: NameSchema }, required: ['fromStage'] }, (b) => ({ type: 'resume', fromStage: b.fromStage }));
  command<{ stage?: string; step?: string; comment?: string; deferUntil?: string }>('approve', 'Approve the waiting approval (optionally deferred until a time)',
    { properties: { ...Target, comment: { type: 'string', maxLength: 4096 }, deferUntil: { type: 'string', format: 'date-time' } } },
    (b) => {
      const deferUntil = b.deferUntil ? Date.parse(b.deferUntil) : null;
      if (deferUntil !== null && !Number.isFinite(deferUntil)) throw new FerryError('VALIDATION_FAILED', 'deferUntil must be an ISO 8601 time', { field: 'deferUntil' });
      return { type: 'approve', stage: b.stage ?? null, step: b.step ?? null, comment: b.comment ?? null, deferUntil };
    });
  command<{ stage?: string; step?: string; comment?: string }>('reject', 'Reject the waiting approval',
    { properties: { ...Target, comment: { type: 'string', maxLength: 4096 } } },
    (b) => ({ type: 'reject', stage: b.stage ?? null, step: b.step ?? null, comment: b.comment ?? null }));
  command<{ action: 'retry' | 'ignore' | 'abort' | 'rollback'; stage?: string; step?: string }>('intervene', 'Resolve a waiting manual intervention (or a paused canary phase)',
    { properties: { action: { type: 'string', enum: ['retry', 'ignore', 'abort', 'rollback'] }, ...Target }, required: ['action'] },
    (b) => ({ type: 'intervene', action: b.action, stage: b.stage ?? null, step: b.step ?? null }));
  command<{ stage?: string }>('promote', 'A paused canary phase goes on to the next', { properties: { stage: NameSchema } },
    (b) => ({ type: 'promote', stage: b.stage ?? null }));

  // ---- logs ----

  app.get<{ Params: { id: string }; Querystring: Q & LogQuery & { follow?: boolean } }>('/executions/:id/logs', {
    schema: {
      summary: 'Step logs: text/plain (the step\'s exact output with stage and step; prefixed lines otherwise), or text/event-stream with follow=true',
      params: IdParams,
      querystring: {
        type: 'object',
        properties: {
          account: NameSchema, stage: NameSchema, step: NameSchema, attempt: { type: 'integer', minimum: 1 },
          phase: { type: 'integer', minimum: 0 }, follow: { type: 'boolean' },
        },
      },
    },
  }, async (req, reply) => {
    const p = principal(req);
    requireRole(p, 'viewer');
    const acc = await actingAccount(ctx, p, req.query.account);
    const eng = engine();
    const state = await eng.state(acc.id, req.params.id);
    const q: LogQuery = {
      ...(req.query.stage ? { stage: req.query.stage } : {}), ...(req.query.step ? { step: req.query.step } : {}),
      ...(req.query.attempt ? { attempt: req.query.attempt } : {}), ...(req.query.phase !== undefined ? { phase: req.query.phase } : {}),
    };
    if (q.step && !q.stage) throw new FerryError('VALIDATION_FAILED', 'step needs stage', { field: 'stage' });
    const exact = Boolean(q.stage && q.step);
    if (req.query.follow) return follow(eng, req, reply, state, q, exact);
    const lines = await eng.readLines(eng.selectRuns(state, q), !exact);
    const text = lines.map((l) => (exact ? l.line : `${prefix(l)} ${l.line}`)).join('\n');
    return reply.type('text/plain; charset=utf-8').send(lines.length ? `${text}\n` : '');
  });
};

const prefix = (r: LogRun): string => `[${r.stage}/${r.step}${r.try > 1 ? `#${r.try}` : ''}${r.phase !== null ? `@${r.phase}` : ''}]`;

/**
 * text/event-stream: `log` events ({stage, step, attempt, try, phase, stream, at, line}),
 * `execution` events (the §6 document, on every change) and one `end` event ({status})
 * once the execution ended and its logs are flushed.
 */
async function follow(eng: Engine, req: FastifyRequest, reply: FastifyReply, initial: ExecutionState, q: LogQuery, exact: boolean): Promise<FastifyReply> {
  const res = reply.raw;
  reply.hijack();
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  let closed = false;
  const send = (event: string, data: unknown) => { if (!closed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`); };
  const sent = new Map<string, number>(); // run id → highest seq sent
  let state = initial;
  let runs = new Map<string, LogRun>();
  const refreshRuns = () => { runs = new Map(eng.selectRuns(state, q).map((r) => [r.runId, r])); };
  refreshRuns();
  let chain = Promise.resolve();
  const serial = (fn: () => Promise<void>) => { chain = chain.then(fn).catch(() => undefined); return chain; };

  const flushRun = async (r: LogRun) => {
    const after = sent.get(r.runId) ?? Number.MIN_SAFE_INTEGER;
    for (const l of await eng.readLines([r], !exact)) {
      if (l.seq <= after) continue;
      send('log', { stage: l.stage, step: l.step, attempt: l.attempt, try: l.try, phase: l.phase, stream: l.stream, at: new Date(l.at).toISOString(), line: l.line });
      sent.set(r.runId, Math.max(sent.get(r.runId) ?? Number.MIN_SAFE_INTEGER, l.seq));
    }
  };
  const flushAll = async () => { for (const r of runs.values()) await flushRun(r); };

  const offLogs = eng.watchLogs(initial.id, (c) => {
    void serial(async () => {
      if (!runs.has(c.taskId)) refreshRuns();
      const r = runs.get(c.taskId);
      if (r) await flushRun(r);
    });
  });
  let ended = false;
  const finish = () => serial(async () => {
    if (ended) return;
    ended = true;
    // notes written after the result (verdicts, queue failures) land a moment later
    await new Promise((r) => setTimeout(r, 300));
    refreshRuns();
    await flushAll();
    send('end', { status: state.status });
    cleanup();
    res.end();
  });
  const offState = eng.watch(initial.id, (s) => {
    state = s;
    void serial(async () => {
      refreshRuns();
      send('execution', await eng.document(s));
    });
    if (TERMINAL_EXECUTION.includes(s.status)) void finish();
  });
  const heartbeat = setInterval(() => { if (!closed) res.write(': keep-alive\n\n'); }, 15_000);
  heartbeat.unref();
  const cleanup = () => {
    closed = true;
    offLogs();
    offState();
    clearInterval(heartbeat);
  };
  req.raw.on('close', cleanup);

  await serial(async () => {
    send('execution', await eng.document(state)); // with the scheduler's queue reasons
    await flushAll();
  });
  // it may have ended before we subscribed
  const now = await eng.state(initial.account, initial.id).catch(() => state);
  if (TERMINAL_EXECUTION.includes(now.status)) {
    state = now;
    void finish();
  }
  return reply;
}
