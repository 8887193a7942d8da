/**
 * The engine at run time: binds the pure machine (machine.ts) to the database.
 *
 * Every change of an execution is one transaction (the outbox principle): load the state
 * document, build the machine's context (deployments, slots, live colours) from the same
 * transaction, apply the event, write the new document and everything it causes — task
 * rows (scheduler.enqueue), timers, deployments, slots — and commit. Only then do the
 * things outside the database happen: wake the scheduler, cancel tasks, write log notes,
 * grant freed slots, supersede waiting runs. A process killed at any instant restarts
 * consistent: `start()` reconciles every execution under way with its task rows (results
 * that arrived while the engine was down, cancels that were not sent), fires overdue
 * timers and grants slots left free.
 *
 * On PostgreSQL, engine transactions of one account are serialised by an advisory lock
 * (slots are per account); on SQLite every transaction is serialised anyway. The
 * executions.revision column guards the document against any other writer.
 */
import { EventEmitter } from 'node:events';
import { sql } from 'kysely';
import { FerryError, RESUMABLE_EXECUTION, TERMINAL_EXECUTION, newId, type ExecutionStatus, type TaskFailure } from '@ferry/shared';
import type { Store, Trx } from '../store/db.js';
import { fromJson, nextSequence, toJson } from '../store/db.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { QueueInfo, TaskInput, TaskListener, TaskOutcome as SchedulerOutcome } from '../scheduler/types.js';
import type { StoredChunk } from '../logs/log-store.js';
import type { Principal } from '../http/auth.js';
import { judge, formatVerdict, type Verdict } from '../verification/index.js';
import { apply, describeRun, mappingKey, start } from './machine.js';
import { toExecutionDocument, type ExecutionDocument } from './document.js';
import { definitionMappings, parsePipeline, parsePipelineValue } from './pipeline/index.js';
import type { InfrastructureMapping, PipelineDefinition, VerifyConfig } from './pipeline/types.js';
import type {
  DeploymentRecord, Effect, ExecutionState, MachineContext, MachineEvent, Slot, Transition, VerificationVerdict,
} from './state.js';
import { authorize, requireReader, type EngineAction } from './permissions.js';
import { engineDb, ensureEngineTables, type EngineSlotsTable } from './tables.js';

/** What the engine needs of the scheduler (scheduler/scheduler.ts implements it). */
export interface SchedulerPort {
  enqueue(trx: Trx, t: TaskInput): Promise<void>;
  wake(): void;
  cancel(taskId: string, reason: string): Promise<void>;
  describeQueue(taskId: string): Promise<QueueInfo | null>;
}

/** What the engine needs of the log store (logs/log-store.ts implements it). */
export interface LogsPort {
  appendNote(taskId: string, text: string, where?: 'before' | 'after'): Promise<number>;
  readTask(taskId: string, afterSeq?: number): Promise<StoredChunk[]>;
  subscribe(channel: string, fn: (c: StoredChunk) => void): () => void;
}

export interface EngineDeps {
  store: Store;
  scheduler: SchedulerPort;
  logs: LogsPort;
  clock: Clock;
  logger: Logger;
  /** how often due timers are looked for; default 250ms */
  timerPollMs?: number;
  /**
   * running executions per account when the account sets no limit of its own
   * (FERRY_ACCOUNT_RUNNING_LIMIT); 0 or absent: no limit
   */
  accountRunningLimit?: number;
}

export type ExecutionCommand =
  | { type: 'approve'; stage?: string | null; step?: string | null; comment?: string | null; deferUntil?: number | null }
  | { type: 'reject'; stage?: string | null; step?: string | null; comment?: string | null }
  | { type: 'intervene'; action: 'retry' | 'ignore' | 'abort' | 'rollback'; stage?: string | null; step?: string | null }
  | { type: 'promote'; stage?: string | null }
  | { type: 'abort' }
  | { type: 'resume'; fromStage: string };

export interface ExecutionSummary {
  id: string;
  pipeline: string;
  pipelineVersion: number;
  status: ExecutionStatus;
  artifact: string | null;
  createdAt: string;
  finishedAt: string | null;
  createdBy: string;
}

export interface LogQuery { stage?: string; step?: string; attempt?: number; phase?: number }
export interface LogRun { runId: string; stage: string; step: string; attempt: number; try: number; phase: number | null }
export interface LogLineOut extends LogRun { seq: number; stream: 0 | 1 | 2; at: number; line: string }

export interface PipelineSummary { name: string; version: number; updatedAt: string }
export interface PipelineView extends PipelineSummary { definition: PipelineDefinition; source: string; createdBy: string }

/** Work to do once a transaction committed. */
interface Post {
  wake: boolean;
  cancels: Array<{ taskId: string; reason: string }>;
  notes: Array<{ taskId: string; text: string; where: 'before' | 'after' }>;
  grants: Set<string>;
  supersede: Array<{ account: string; key: string; by: string }>;
  changed: ExecutionState[];
}
const newPost = (): Post => ({ wake: false, cancels: [], notes: [], grants: new Set(), supersede: [], changed: [] });

class Conflict extends Error {}

const iso = (ms: number | null | undefined): string | null => (ms == null ? null : new Date(ms).toISOString());
const slotKey = (s: Slot): string => (s.kind === 'account' ? 'account' : `mapping:${s.key}`);
const ACTIVE: ExecutionStatus[] = ['Queued', 'Running', 'Paused'];

export class Engine implements TaskListener {
  private readonly events = new EventEmitter();
  private timer: NodeJS.Timeout | null = null;
  private ticking = false;
  private stopped = false;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly log: Logger;
  private ready: Promise<void> | null = null;

  constructor(private readonly deps: EngineDeps) {
    this.events.setMaxListeners(0);
    this.log = deps.logger.child({ mod: 'engine' });
  }

  private get db() { return this.deps.store.db; }
  private now(): number { return this.deps.clock.now(); }

  // ---- life cycle ------------------------------------------------------------------------

  /** Creates the engine's table, reconciles what a crash left, starts the timer loop. */
  async start(): Promise<void> {
    await this.ensureReady();
    await this.recover();
    this.stopped = false;
    const every = this.deps.timerPollMs ?? 250;
    this.timer = setInterval(() => { void this.tick(); }, every);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await Promise.allSettled([...this.inflight]);
  }

  /** The engine's table exists (created on first use, so route tests need no start()). */
  private ensureReady(): Promise<void> {
    this.ready ??= ensureEngineTables(this.deps.store).catch((err: unknown) => { this.ready = null; throw err; });
    return this.ready;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p)).catch(() => undefined);
    return p;
  }

  /** Resolves when every event handed in so far (listener calls) has been applied. */
  async idle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  /** Reconciles every execution under way with its tasks, then serves waiting slots. */
  async recover(): Promise<void> {
    const rows = await this.db.selectFrom('executions').select(['id']).where('status', 'in', ACTIVE).execute();
    for (const r of rows) {
      try {
        await this.reconcile(r.id);
      } catch (err) {
        this.log.error({ err, executionId: r.id }, 'reconcile failed');
      }
    }
    // a task still queued or running for an execution that ended: its cancel was lost
    const orphans = await this.db.selectFrom('tasks').innerJoin('executions', 'executions.id', 'tasks.execution_id')
      .select(['tasks.id as id']).where('tasks.status', 'in', ['queued', 'assigned', 'running'])
      .where('executions.status', 'not in', ACTIVE).execute();
    for (const o of orphans) await this.deps.scheduler.cancel(o.id, 'the execution ended').catch((err) => this.log.warn({ err, taskId: o.id }, 'cancel failed'));
    await this.grantAll();
  }

  /** Brings one execution's runs in line with the task rows (results missed while down). */
  async reconcile(executionId: string): Promise<void> {
    const row = await this.db.selectFrom('executions').select(['state']).where('id', '=', executionId).executeTakeFirst();
    if (!row) return;
    const state = JSON.parse(row.state) as ExecutionState;
    const runs = state.stages.flatMap((s) => s.attempts.flatMap((a) => a.runs)).filter((r) => r.task && (r.status === 'QueuedForAgent' || r.status === 'Running' || r.status === 'Canceled' || r.cancelRequested));
    if (runs.length === 0) return;
    const tasks = await this.db.selectFrom('tasks').leftJoin('delegates', 'delegates.id', 'tasks.delegate_id')
      .select(['tasks.id as id', 'tasks.status as status', 'tasks.result as result', 'tasks.started_at as started_at', 'tasks.delegate_id as delegate_id', 'delegates.name as delegate_name', 'tasks.delegate_version as delegate_version'])
      .where('tasks.id', 'in', runs.map((r) => r.id)).execute();
    const byId = new Map(tasks.map((t) => [t.id, t]));
    for (const run of runs) {
      const t = byId.get(run.id);
      if (!t) continue;
      const terminal = t.status === 'succeeded' || t.status === 'failed' || t.status === 'canceled';
      if ((run.status === 'Canceled' || run.cancelRequested) && !terminal) {
        await this.deps.scheduler.cancel(run.id, 'canceled').catch((err) => this.log.warn({ err, taskId: run.id }, 'cancel failed'));
        if (run.status === 'Canceled') continue;
      }
      if (run.status !== 'QueuedForAgent' && run.status !== 'Running') continue;
      if (terminal) {
        const res = fromJson<{ status?: 'Succeeded' | 'Failed' | 'Canceled'; exitCode?: number | null; error?: TaskFailure; outputs?: Record<string, string>; startedAt?: number | null; finishedAt?: number; data?: unknown } | null>(t.result, null);
        const status = res?.status ?? (t.status === 'succeeded' ? 'Succeeded' : t.status === 'canceled' ? 'Canceled' : 'Failed');
        await this.handleTaskFinished({
          taskId: run.id, executionId, status, exitCode: res?.exitCode ?? null, ...(res?.error ? { error: res.error } : {}),
          outputs: res?.outputs ?? {}, startedAt: t.started_at == null ? res?.startedAt ?? null : Number(t.started_at),
          finishedAt: res?.finishedAt ?? this.now(), delegateId: t.delegate_id, delegateVersion: t.delegate_version, data: res?.data,
        }, t.delegate_name ?? null);
      } else if (t.status === 'running' && run.status === 'QueuedForAgent') {
        await this.applyEvent(executionId, { type: 'taskStarted', stepRunId: run.id, delegate: t.delegate_name ?? t.delegate_id ?? null, at: t.started_at == null ? undefined : Number(t.started_at) });
      }
    }
  }

  // ---- the scheduler's listener ---------------------------------------------------------

  onTaskStarted(e: { taskId: string; executionId: string | null; delegateId: string; delegateName: string; at: number }): void {
    if (!e.executionId) return;
    const executionId = e.executionId;
    void this.track(this.applyEvent(executionId, { type: 'taskStarted', stepRunId: e.taskId, delegate: e.delegateName, at: e.at })
      .catch((err) => this.log.error({ err, executionId, taskId: e.taskId }, 'task start not applied')));
  }

  onTaskFinished(o: SchedulerOutcome): void {
    if (!o.executionId) return;
    void this.track(this.handleTaskFinished(o, null)
      .catch((err) => this.log.error({ err, executionId: o.executionId, taskId: o.taskId }, 'task result not applied')));
  }

  private async handleTaskFinished(o: SchedulerOutcome, delegateName: string | null): Promise<void> {
    const executionId = o.executionId!;
    // A verify task's verdict is judged first and its lines go into the step's log before the
    // result is applied, so that they come before the next phase's output (also with --follow).
    // Only for a run still waiting for its result: a repeated outcome writes no second verdict.
    let verdict: Verdict | null = null;
    if (o.status === 'Succeeded') {
      const row = await this.db.selectFrom('executions').select(['state']).where('id', '=', executionId).executeTakeFirst();
      const pending = row ? describeRun(JSON.parse(row.state) as ExecutionState, o.taskId) : null;
      if (pending?.run.type === 'verify' && pending.step.verify && (pending.run.status === 'Running' || pending.run.status === 'QueuedForAgent')) {
        verdict = judgeData(pending.step.verify, o.data);
        for (const line of formatVerdict(verdict)) await this.deps.logs.appendNote(o.taskId, line, 'after').catch(() => undefined);
      }
    }
    await this.transact(executionId, (state, ctx) => {
      const found = describeRun(state, o.taskId);
      let verification: VerificationVerdict | null = null;
      if (found?.run.type === 'verify' && o.status === 'Succeeded' && found.step.verify) {
        verification = toVerification(verdict ?? judgeData(found.step.verify, o.data));
      }
      const event: MachineEvent = {
        type: 'taskFinished', stepRunId: o.taskId, verification,
        result: {
          status: o.status, exitCode: o.exitCode, error: o.error ? { kind: o.error.kind, message: o.error.message } : null,
          outputs: o.outputs, startedAt: o.startedAt, finishedAt: o.finishedAt, delegate: delegateName, data: o.data,
        },
      };
      return apply(state, event, this.now(), ctx);
    });
  }

  // ---- timers ----------------------------------------------------------------------------

  /** Fires every timer that is due (the loop calls it; tests may too). */
  async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      const now = this.now();
      const due = await this.db.selectFrom('timers').selectAll().where('due_at', '<=', now).orderBy('due_at').limit(200).execute();
      for (const t of due) {
        try {
          await this.runTrx(async (trx, post) => {
            const still = await trx.selectFrom('timers').select('id').where('id', '=', t.id).where('due_at', '=', t.due_at).executeTakeFirst();
            if (!still) return;
            await trx.deleteFrom('timers').where('id', '=', t.id).execute();
            await this.applyIn(trx, t.execution_id, (s, ctx) => apply(s, { type: 'timer', key: t.key }, now, ctx), post);
          });
        } catch (err) {
          this.log.error({ err, executionId: t.execution_id, timer: t.key }, 'timer failed; dropped');
          await this.db.deleteFrom('timers').where('id', '=', t.id).where('due_at', '=', t.due_at).execute().catch(() => undefined);
        }
      }
    } catch (err) {
      this.log.error({ err }, 'timer loop failed');
    } finally {
      this.ticking = false;
    }
  }

  // ---- pipelines ---------------------------------------------------------------------------

  /** Every apply is a new immutable version. `body` is the file's text, or a parsed JSON body. */
  async applyPipeline(p: Principal, accountId: string, name: string, body: unknown): Promise<PipelineSummary> {
    const def = typeof body === 'string' ? parsePipeline(body, { expectedName: name }) : parsePipelineValue(body, { expectedName: name });
    authorize(p, 'apply', def);
    const source = typeof body === 'string' ? body : JSON.stringify(body, null, 2);
    const now = this.now();
    const version = await this.db.transaction().execute(async (trx) => {
      await this.lockAccount(trx, accountId);
      const last = await trx.selectFrom('pipelines').select((eb) => eb.fn.max('version').as('v')).where('account_id', '=', accountId).where('name', '=', name).executeTakeFirst();
      const v = Number(last?.v ?? 0) + 1;
      await trx.insertInto('pipelines').values({ account_id: accountId, name, version: v, definition: toJson(def), source, created_at: now, created_by: p.name }).execute();
      // services, environments and infrastructures exist from first use
      for (const m of definitionMappings(def)) {
        await trx.insertInto('infrastructure_mappings').values({
          account_id: accountId, service: m.service, environment: m.environment, environment_type: m.environmentType,
          infrastructure: m.infrastructure, live_color: null, created_at: now,
        }).onConflict((oc) => oc.columns(['account_id', 'service', 'environment', 'infrastructure']).doUpdateSet({ environment_type: m.environmentType })).execute();
      }
      return v;
    });
    return { name, version, updatedAt: iso(now)! };
  }

  async listPipelines(p: Principal, accountId: string): Promise<PipelineSummary[]> {
    requireReader(p);
    const rows = await this.db.selectFrom('pipelines').select(['name', 'version', 'created_at']).where('account_id', '=', accountId)
      .orderBy('name').orderBy('version', 'desc').execute();
    const out: PipelineSummary[] = [];
    for (const r of rows) if (out[out.length - 1]?.name !== r.name) out.push({ name: r.name, version: r.version, updatedAt: iso(r.created_at)! });
    return out;
  }

  async getPipeline(p: Principal, accountId: string, name: string, version?: number): Promise<PipelineView> {
    requireReader(p);
    let q = this.db.selectFrom('pipelines').selectAll().where('account_id', '=', accountId).where('name', '=', name);
    q = version === undefined ? q.orderBy('version', 'desc').limit(1) : q.where('version', '=', version);
    const r = await q.executeTakeFirst();
    if (!r) throw new FerryError('NOT_FOUND', version === undefined ? `no pipeline ${name}` : `no version ${version} of pipeline ${name}`);
    return { name: r.name, version: r.version, updatedAt: iso(r.created_at)!, definition: JSON.parse(r.definition) as PipelineDefinition, source: r.source, createdBy: r.created_by };
  }

  async listMappings(p: Principal, accountId: string): Promise<Array<{ service: string; environment: string; environmentType: string; infrastructure: string; liveColor: string | null; createdAt: string }>> {
    requireReader(p);
    const rows = await this.db.selectFrom('infrastructure_mappings').selectAll().where('account_id', '=', accountId)
      .orderBy('service').orderBy('environment').orderBy('infrastructure').execute();
    return rows.map((r) => ({ service: r.service, environment: r.environment, environmentType: r.environment_type, infrastructure: r.infrastructure, liveColor: r.live_color, createdAt: iso(r.created_at)! }));
  }

  // ---- executions --------------------------------------------------------------------------

  /** Starts a run of the pipeline's latest version. */
  async run(p: Principal, accountId: string, pipeline: string, body: { inputs?: Record<string, unknown>; artifact?: string | null }): Promise<ExecutionDocument> {
    const pl = await this.getPipeline(p, accountId, pipeline);
    authorize(p, 'run', pl.definition);
    const id = newId();
    const now = this.now();
    const state = await this.runTrx(async (trx, post) => {
      await this.lockAccount(trx, accountId);
      const ctx = await this.loadContext(trx, accountId, pl.definition, id);
      const t = start({
        id, account: accountId, pipeline: pl.name, pipelineVersion: pl.version, definition: pl.definition,
        inputs: body.inputs ?? {}, artifact: body.artifact ?? null, executor: p.name,
      }, now, ctx);
      await trx.insertInto('executions').values({
        id, account_id: accountId, pipeline: pl.name, pipeline_version: pl.version, status: t.state.status, artifact: t.state.artifact,
        inputs: toJson(t.state.inputs), created_at: now, finished_at: t.state.finishedAt, created_by: p.name, state: toJson(t.state),
        updated_at: now, revision: 1,
      }).execute();
      await this.writeEffects(trx, accountId, id, t.effects, post);
      post.changed.push(t.state);
      return t.state;
    });
    return this.document(state);
  }

  async get(p: Principal, accountId: string, id: string, opts: { history?: boolean } = {}): Promise<ExecutionDocument> {
    requireReader(p);
    return this.document(await this.load(accountId, id), opts);
  }

  async state(accountId: string, id: string): Promise<ExecutionState> {
    return this.load(accountId, id);
  }

  async list(p: Principal, accountId: string, f: { pipeline?: string; status?: string; limit?: number } = {}): Promise<ExecutionSummary[]> {
    requireReader(p);
    let q = this.db.selectFrom('executions').select(['id', 'pipeline', 'pipeline_version', 'status', 'artifact', 'created_at', 'finished_at', 'created_by'])
      .where('account_id', '=', accountId);
    if (f.pipeline) q = q.where('pipeline', '=', f.pipeline);
    if (f.status) q = q.where('status', '=', f.status);
    const rows = await q.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(Math.min(f.limit ?? 500, 5000)).execute();
    return rows.map((r) => ({
      id: r.id, pipeline: r.pipeline, pipelineVersion: r.pipeline_version, status: r.status as ExecutionStatus, artifact: r.artifact,
      createdAt: iso(r.created_at)!, finishedAt: iso(r.finished_at), createdBy: r.created_by,
    }));
  }

  /** approve, reject, intervene, promote, abort, resume — checked against the token's role and scopes. */
  async command(p: Principal, accountId: string, id: string, cmd: ExecutionCommand): Promise<ExecutionDocument> {
    await this.load(accountId, id); // 404 before 403
    const now = this.now();
    const state = await this.transact(id, (s, ctx) => {
      authorize(p, cmd.type as EngineAction, s.definition, targetStages(s, cmd));
      return apply(s, toEvent(cmd, p.name), now, ctx);
    });
    return this.document(state!);
  }

  /**
   * The step runs whose logs a query selects (GET …/logs). With stage and step: the
   * latest attempt unless `attempt`, the latest try of each phase, every phase in order
   * unless `phase`. Otherwise every run of each stage's latest attempt (or `attempt`).
   */
  selectRuns(state: ExecutionState, q: LogQuery): LogRun[] {
    const stages = q.stage ? state.stages.filter((s) => s.id === q.stage) : state.stages;
    if (q.stage && stages.length === 0) throw new FerryError('NOT_FOUND', `no stage ${q.stage} in execution ${state.id}`);
    const exact = Boolean(q.stage && q.step);
    const out: LogRun[] = [];
    for (const s of stages) {
      const a = q.attempt ? s.attempts[q.attempt - 1] : s.attempts[s.attempts.length - 1];
      if (!a) continue;
      const canary = state.definition.stages.find((d) => d.id === s.id)?.strategy.type === 'canary';
      let runs = a.runs.filter((r) => r.task && (!q.step || r.stepId === q.step) && (q.phase === undefined || r.phase === q.phase));
      if (exact) {
        // the latest try of each (list, phase, pass)
        const latest = new Map<string, (typeof runs)[number]>();
        for (const r of runs) {
          const k = `${r.list}|${r.phase}|${r.pass}`;
          const prev = latest.get(k);
          if (!prev || r.try > prev.try) latest.set(k, r);
        }
        runs = runs.filter((r) => latest.get(`${r.list}|${r.phase}|${r.pass}`) === r);
      }
      for (const r of runs) out.push({ runId: r.id, stage: s.id, step: r.stepId, attempt: a.attempt, try: r.try, phase: canary ? r.phase : null });
    }
    return out;
  }

  /** Stored lines of the selected runs, in order. `withNotes` keeps the server's stream-2 lines. */
  async readLines(runs: LogRun[], withNotes: boolean): Promise<LogLineOut[]> {
    const out: LogLineOut[] = [];
    for (const r of runs) {
      for (const c of await this.deps.logs.readTask(r.runId)) {
        for (const [stream, at, text] of c.lines) {
          if (stream === 2 && !withNotes) continue;
          out.push({ ...r, seq: c.seq, stream, at, line: text });
        }
      }
    }
    return out;
  }

  /** Chunks of an execution's tasks as they are stored. Returns the unsubscribe. */
  watchLogs(executionId: string, fn: (c: StoredChunk) => void): () => void {
    return this.deps.logs.subscribe(`exec:${executionId}`, fn);
  }

  /** Subscribe to every committed change of one execution. Returns the unsubscribe. */
  watch(executionId: string, fn: (s: ExecutionState) => void): () => void {
    const ch = `exec:${executionId}`;
    this.events.on(ch, fn);
    return () => this.events.off(ch, fn);
  }

  /** The execution document, with queue reasons from the scheduler for waiting steps. */
  async document(state: ExecutionState, opts: { history?: boolean } = {}): Promise<ExecutionDocument> {
    const queued = state.stages.flatMap((s) => s.attempts.flatMap((a) => a.runs)).filter((r) => r.status === 'QueuedForAgent');
    const info = new Map<string, QueueInfo | null>();
    for (const r of queued) info.set(r.id, await this.deps.scheduler.describeQueue(r.id).catch(() => null));
    return toExecutionDocument(state, { history: opts.history ?? false, queueInfo: (rid) => info.get(rid) ?? null });
  }

  private async load(accountId: string, id: string): Promise<ExecutionState> {
    const row = await this.db.selectFrom('executions').select(['state', 'account_id']).where('id', '=', id).executeTakeFirst();
    if (!row || row.account_id !== accountId) throw new FerryError('NOT_FOUND', `no execution ${id}`);
    return JSON.parse(row.state) as ExecutionState;
  }

  // ---- the transaction -----------------------------------------------------------------------

  /** Applies an event to one execution in its own transaction. */
  async applyEvent(executionId: string, e: MachineEvent): Promise<ExecutionState | null> {
    return this.transact(executionId, (s, ctx) => apply(s, e, this.now(), ctx));
  }

  private async transact(executionId: string, fn: (s: ExecutionState, ctx: MachineContext) => Transition | null): Promise<ExecutionState | null> {
    return this.runTrx((trx, post) => this.applyIn(trx, executionId, fn, post));
  }

  /** One transaction, retried on a revision conflict; then the work after the commit. */
  private async runTrx<T>(body: (trx: Trx, post: Post) => Promise<T>): Promise<T> {
    await this.ensureReady();
    for (let attempt = 1; ; attempt++) {
      const post = newPost();
      try {
        const out = await this.db.transaction().execute((trx) => body(trx, post));
        await this.afterCommit(post);
        return out;
      } catch (err) {
        if (err instanceof Conflict && attempt < 8) continue;
        throw err;
      }
    }
  }

  private async lockAccount(trx: Trx, accountId: string): Promise<void> {
    if (this.deps.store.dialect === 'postgres') await sql`select pg_advisory_xact_lock(hashtext(${`ferry-engine:${accountId}`}))`.execute(trx);
  }

  private async applyIn(trx: Trx, executionId: string, fn: (s: ExecutionState, ctx: MachineContext) => Transition | null, post: Post): Promise<ExecutionState | null> {
    const head = await trx.selectFrom('executions').select(['account_id']).where('id', '=', executionId).executeTakeFirst();
    if (!head) return null;
    await this.lockAccount(trx, head.account_id);
    const row = await trx.selectFrom('executions').select(['state', 'revision', 'account_id']).where('id', '=', executionId).executeTakeFirstOrThrow();
    const state = JSON.parse(row.state) as ExecutionState;
    const ctx = await this.loadContext(trx, row.account_id, state.definition, executionId);
    const t = fn(state, ctx);
    if (!t) return state;
    const text = toJson(t.state);
    if (t.effects.length === 0 && text === row.state) return state;
    const now = this.now();
    const r = await trx.updateTable('executions')
      .set({ status: t.state.status, finished_at: t.state.finishedAt, state: text, updated_at: now, revision: row.revision + 1 })
      .where('id', '=', executionId).where('revision', '=', row.revision).executeTakeFirst();
    if (Number(r.numUpdatedRows) !== 1) throw new Conflict(`execution ${executionId} changed under us`);
    await this.writeEffects(trx, row.account_id, executionId, t.effects, post);
    post.changed.push(t.state);
    return t.state;
  }

  /** The machine's read-only context, from the transaction. */
  private async loadContext(trx: Trx, accountId: string, def: PipelineDefinition, executionId: string): Promise<MachineContext> {
    const deployments = new Map<string, DeploymentRecord[]>();
    for (const m of definitionMappings(def)) {
      const rows = await trx.selectFrom('deployments').select(['pipeline', 'artifact', 'status', 'execution_id', 'at'])
        .where('account_id', '=', accountId).where('service', '=', m.service).where('environment', '=', m.environment)
        .where('infrastructure', '=', m.infrastructure).orderBy('at', 'desc').orderBy('id', 'desc').limit(1000).execute();
      deployments.set(mappingKey(m), rows.map((r) => ({ pipeline: r.pipeline, artifact: r.artifact, status: r.status, executionId: r.execution_id, at: Number(r.at) })));
    }
    const slots = await engineDb(trx).selectFrom('engine_slots').selectAll().where('account_id', '=', accountId).execute();
    const account = await trx.selectFrom('accounts').select(['running_limit']).where('id', '=', accountId).executeTakeFirst();
    const colors = await trx.selectFrom('infrastructure_mappings').select(['service', 'environment', 'infrastructure', 'live_color']).where('account_id', '=', accountId).execute();
    const colorOf = new Map(colors.map((c) => [mappingKey(c), c.live_color]));
    return {
      deployments: (m: InfrastructureMapping) => deployments.get(mappingKey(m)) ?? [],
      slotFree: (s: Slot) => {
        const key = slotKey(s);
        const others = slots.filter((r) => r.key === key && r.execution_id !== executionId);
        const capacity = s.kind === 'account' ? this.accountLimit(account?.running_limit) : s.capacity;
        return others.filter((r) => r.state === 'held').length < capacity && !others.some((r) => r.state === 'waiting');
      },
      liveColor: (m: InfrastructureMapping) => colorOf.get(mappingKey(m)) ?? null,
    };
  }

  private async writeEffects(trx: Trx, accountId: string, executionId: string, effects: Effect[], post: Post): Promise<void> {
    const now = this.now();
    const slots = engineDb(trx);
    for (const e of effects) {
      switch (e.type) {
        case 'enqueueTask': {
          const t = e.task;
          await this.deps.scheduler.enqueue(trx, {
            id: t.taskId, accountId, executionId, kind: t.kind, spec: t.spec, env: t.env, secretNames: t.secretNames,
            selectors: t.selectors, timeoutMs: t.timeoutMs, queueTimeoutMs: t.queueTimeoutMs,
          });
          post.wake = true;
          break;
        }
        case 'cancelTask':
          post.cancels.push({ taskId: e.taskId, reason: e.reason });
          break;
        case 'setTimer': {
          const id = `${executionId}:${e.key}`;
          await trx.insertInto('timers').values({ id, execution_id: executionId, key: e.key, due_at: e.at, payload: '{}' })
            .onConflict((oc) => oc.column('id').doUpdateSet({ due_at: e.at })).execute();
          break;
        }
        case 'clearTimer':
          await trx.deleteFrom('timers').where('id', '=', `${executionId}:${e.key}`).execute();
          break;
        case 'recordDeployment':
          await trx.insertInto('deployments').values({
            account_id: accountId, service: e.mapping.service, environment: e.mapping.environment, infrastructure: e.mapping.infrastructure,
            pipeline: e.pipeline, artifact: e.artifact, execution_id: executionId, stage_id: e.stage, status: e.status, at: now,
          }).execute();
          break;
        case 'acquireSlot':
        case 'requestSlot': {
          const key = slotKey(e.slot);
          const row: EngineSlotsTable = {
            account_id: accountId, key, execution_id: executionId, stage_id: e.slot.kind === 'mapping' ? e.slot.stage : '',
            state: e.type === 'acquireSlot' ? 'held' : 'waiting', capacity: e.slot.kind === 'mapping' ? e.slot.capacity : 0,
            deploy_latest_only: e.slot.kind === 'mapping' && e.slot.deployLatestOnly ? 1 : 0,
            seq: await nextSequence(trx, 'engine_slot'), requested_at: now,
          };
          await slots.insertInto('engine_slots').values(row)
            .onConflict((oc) => oc.columns(['execution_id', 'key']).doUpdateSet({ state: row.state, seq: row.seq, requested_at: now, stage_id: row.stage_id, capacity: row.capacity, deploy_latest_only: row.deploy_latest_only }))
            .execute();
          if (e.type === 'requestSlot' && e.slot.kind === 'mapping' && e.slot.deployLatestOnly) post.supersede.push({ account: accountId, key, by: executionId });
          break;
        }
        case 'releaseSlot': {
          const key = slotKey(e.slot);
          await slots.deleteFrom('engine_slots').where('execution_id', '=', executionId).where('key', '=', key).execute();
          post.grants.add(`${accountId}|${key}`);
          break;
        }
        case 'setLiveColor':
          await trx.updateTable('infrastructure_mappings').set({ live_color: e.color }).where('account_id', '=', accountId)
            .where('service', '=', e.mapping.service).where('environment', '=', e.mapping.environment).where('infrastructure', '=', e.mapping.infrastructure).execute();
          break;
        case 'systemLog':
          post.notes.push({ taskId: e.stepRunId, text: e.line, where: 'before' });
          break;
        case 'finished': {
          await trx.deleteFrom('timers').where('execution_id', '=', executionId).execute();
          const held = await slots.selectFrom('engine_slots').select(['key']).where('execution_id', '=', executionId).execute();
          if (held.length) {
            await slots.deleteFrom('engine_slots').where('execution_id', '=', executionId).execute();
            for (const h of held) post.grants.add(`${accountId}|${h.key}`);
          }
          break;
        }
      }
    }
  }

  private async afterCommit(post: Post): Promise<void> {
    if (post.wake) this.deps.scheduler.wake();
    for (const s of post.changed) this.events.emit(`exec:${s.id}`, s);
    for (const n of post.notes) await this.deps.logs.appendNote(n.taskId, n.text, n.where).catch((err) => this.log.warn({ err, taskId: n.taskId }, 'log note lost'));
    for (const c of post.cancels) await this.deps.scheduler.cancel(c.taskId, c.reason).catch((err) => this.log.warn({ err, taskId: c.taskId }, 'cancel failed; retried at recovery'));
    for (const s of post.supersede) await this.supersedeWaiters(s.account, s.key, s.by);
    for (const g of post.grants) {
      const [account, key] = g.split('|') as [string, string];
      await this.grant(account, key);
    }
  }

  // ---- slots ------------------------------------------------------------------------------

  /** deployLatestOnly: every run waiting on the key before `by` is superseded by it. */
  private async supersedeWaiters(accountId: string, key: string, by: string): Promise<void> {
    const rows = await engineDb(this.db).selectFrom('engine_slots').select(['execution_id', 'seq', 'deploy_latest_only'])
      .where('account_id', '=', accountId).where('key', '=', key).where('state', '=', 'waiting').orderBy('seq').execute();
    const mine = rows.find((r) => r.execution_id === by);
    if (!mine) return;
    for (const r of rows) {
      if (r.execution_id === by || r.seq > mine.seq || !r.deploy_latest_only) continue;
      try {
        await this.applyEvent(r.execution_id, { type: 'superseded', by });
      } catch (err) {
        if (!(err instanceof FerryError)) throw err; // no longer waiting: nothing to supersede
      }
    }
  }

  /** Hands free places of a slot to its waiters, oldest first. */
  private async grant(accountId: string, key: string): Promise<void> {
    for (let guard = 0; guard < 1000; guard++) {
      const granted = await this.runTrx(async (trx, post) => {
        await this.lockAccount(trx, accountId);
        const sdb = engineDb(trx);
        const rows = await sdb.selectFrom('engine_slots').selectAll().where('account_id', '=', accountId).where('key', '=', key).orderBy('seq').execute();
        const waiter = rows.find((r) => r.state === 'waiting');
        if (!waiter) return false;
        let capacity = waiter.capacity;
        if (key === 'account') {
          const a = await trx.selectFrom('accounts').select(['running_limit']).where('id', '=', accountId).executeTakeFirst();
          capacity = this.accountLimit(a?.running_limit);
        }
        if (rows.filter((r) => r.state === 'held').length >= capacity) return false;
        await sdb.updateTable('engine_slots').set({ state: 'held' }).where('execution_id', '=', waiter.execution_id).where('key', '=', key).execute();
        const slot = key === 'account' ? 'account' as const : 'mapping' as const;
        const st = await this.applyIn(trx, waiter.execution_id, (s, ctx) => apply(s, { type: 'slotGranted', slot }, this.now(), ctx), post);
        if (!st || TERMINAL_EXECUTION.includes(st.status)) {
          // an execution that is gone or ended holds nothing
          await sdb.deleteFrom('engine_slots').where('execution_id', '=', waiter.execution_id).where('key', '=', key).execute();
        }
        return true;
      });
      if (!granted) return;
    }
  }

  /** The account's own limit, else the server's default (FERRY_ACCOUNT_RUNNING_LIMIT), else none. */
  private accountLimit(own: number | null | undefined): number {
    if (own != null && own > 0) return own;
    const dflt = this.deps.accountRunningLimit ?? 0;
    return dflt > 0 ? dflt : Number.POSITIVE_INFINITY;
  }

  private async grantAll(): Promise<void> {
    await this.ensureReady();
    const keys = await engineDb(this.db).selectFrom('engine_slots').select(['account_id', 'key']).where('state', '=', 'waiting').distinct().execute();
    for (const k of keys) await this.grant(k.account_id, k.key);
  }
}

// ---- helpers -------------------------------------------------------------------------------

function toEvent(cmd: ExecutionCommand, by: string): MachineEvent {
  switch (cmd.type) {
    case 'approve': return { type: 'approve', by, comment: cmd.comment ?? null, deferUntil: cmd.deferUntil ?? null, stage: cmd.stage ?? null, step: cmd.step ?? null };
    case 'reject': return { type: 'reject', by, comment: cmd.comment ?? null, stage: cmd.stage ?? null, step: cmd.step ?? null };
    case 'intervene': return { type: 'intervene', action: cmd.action, by, stage: cmd.stage ?? null, step: cmd.step ?? null };
    case 'promote': return { type: 'promote', by, stage: cmd.stage ?? null };
    case 'abort': return { type: 'abort', by };
    case 'resume': return { type: 'resume', fromStage: cmd.fromStage, by };
  }
}

/** The stages a command acts on, for the scope check. */
function targetStages(s: ExecutionState, cmd: ExecutionCommand): number[] {
  const index = (id: string | null | undefined) => (id ? s.stages.findIndex((x) => x.id === id) : -1);
  if (cmd.type === 'resume') {
    const from = index(cmd.fromStage);
    if (from < 0 || !RESUMABLE_EXECUTION.includes(s.status)) return []; // the machine says why
    return s.stages.map((_, i) => i).filter((i) => i >= from);
  }
  const named = 'stage' in cmd ? index(cmd.stage) : -1;
  if (named >= 0) return [named];
  return [s.current, s.rollback?.current ?? null].filter((x): x is number => x !== null);
}

/** The judge's verdict on a verify task's series (canary vs baseline). */
export function judgeData(cfg: VerifyConfig, data: unknown): Verdict {
  const series = ((data as { metrics?: Array<{ name: string; role: string; points: number[]; error?: string }> } | undefined)?.metrics) ?? [];
  const pointsOf = (name: string, role: string) => series.find((m) => m.name === name && m.role === role)?.points ?? [];
  const verdict = judge({
    sensitivity: cfg.sensitivity,
    failOnNoData: cfg.failOnNoData,
    metrics: cfg.metrics.map((m) => ({
      name: m.name, direction: m.direction, critical: m.critical, weight: m.weight,
      ...(m.allowedIncrease !== null ? { allowedIncrease: m.allowedIncrease } : {}),
      ...(m.allowedDecrease !== null ? { allowedDecrease: m.allowedDecrease } : {}),
      baseline: pointsOf(m.name, 'baseline'), canary: pointsOf(m.name, 'canary'),
    })),
  });
  // A query Prometheus refused (a typo, an unknown function) is not "no data": it fails the
  // metric and the verification whatever failOnNoData says, so a broken query never passes.
  const errors = new Map<string, string>();
  for (const m of series) if (m.error && !errors.has(m.name)) errors.set(m.name, `${m.role ? `${m.role}: ` : ''}${m.error}`);
  const broken = cfg.metrics.filter((m) => errors.has(m.name)).map((m) => m.name);
  if (broken.length === 0) return verdict;
  return {
    ...verdict,
    verdict: 'Unhealthy',
    reason: `the query of ${broken.join(', ')} failed (${errors.get(broken[0]!)}); ${verdict.reason}`,
    metrics: verdict.metrics.map((m) => (errors.has(m.name) ? { ...m, failed: true, reason: `the query failed (${errors.get(m.name)}); ${m.reason}` } : m)),
  };
}

/**
 * CONTRACT §6 `verification` of a verify step run, plus the evidence behind each call:
 * the U statistic, the effect size (mean ratio), the shift estimate and its interval, the
 * points left out (not numbers, outliers), the direction and whether the metric failed.
 */
export function toVerification(v: Verdict): VerificationVerdict {
  const side = (s: Verdict['metrics'][number]['baseline']) => ({
    points: s.points, median: s.median, mean: s.mean, droppedNonFinite: s.droppedNonFinite, droppedOutliers: s.droppedOutliers,
  });
  return {
    verdict: v.verdict,
    score: v.score,
    reason: v.reason,
    sensitivity: v.sensitivity,
    confidence: v.confidence,
    metrics: v.metrics.map((m) => ({
      name: m.name, classification: m.classification,
      baseline: side(m.baseline),
      canary: side(m.canary),
      pValue: m.pValue, reason: m.reason, critical: m.critical, failed: m.failed,
      direction: m.direction, weight: m.weight, statistic: m.statistic, effectSize: m.effectSize, shift: m.shift, ci: m.ci, method: m.method,
    })),
  };
}
