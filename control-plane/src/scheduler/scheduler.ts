/**
 * The agent queue. Tasks wait `queued` until an eligible delegate (same account,
 * carries every selector tag and required capability, has a free slot) can take them.
 * Dispatch is pushed: a pass runs the moment a task is queued or a slot frees, never on
 * a polling interval. A pass picks candidates in memory, claims them in one statement
 * (claim.ts), commits, then sends `task.assign` with a lease; `task.accept` must come
 * within the lease or the task returns to the queue with attempt + 1.
 */
import { newId, type TaskAssign, type TaskFailure, type TaskResult, type TaskSpec } from '@ferry/shared';
import type { Store, Executor } from '../store/db.js';
import { fromJson, isAssigned, isQueued, sequenceStatement, toJson, unindexed } from '../store/db.js';
import { prepare } from '../store/prepared.js';
import type { Insertable, Kysely } from 'kysely';
import type { DB } from '../store/schema.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { SecretBox } from '../store/secrets.js';
import { readSecrets } from '../store/secrets.js';
import type { AcceptedResult, FinishedTask, LogStore, ResultApplier } from '../logs/log-store.js';
import { claimTasks, type AssignRow } from './claim.js';
import type { Bus } from '../store/bus.js';
import type { DispatchTarget, QueueInfo, TaskInput, TaskListener, TaskOutcome } from './types.js';

export interface SchedulerOptions {
  leaseMs: number;
  delegateGraceMs: number;
  killGraceMs?: number;
  /** how often leases, queue timeouts and lost delegates are checked */
  sweepMs?: number;
}

interface QueuedRow {
  id: string;
  account_id: string;
  selectors: string;
  capabilities: string;
  queued_at: number;
}

const DEFAULT_QUEUE_TIMEOUT = 3_600_000;

type NewTask = Insertable<DB['tasks']>;
/** what a pass reads of a queued task */
const QUEUE_COLUMNS = ['id', 'account_id', 'selectors', 'capabilities', 'queued_at', 'priority', 'queue_seq'] as const;

interface PendingAccept {
  delegateId: string;
  delegateName: string;
  taskId: string;
  attempt: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

const taskRow = (t: TaskInput, attempt: number, queuedAt: number): AssignRow => ({
  id: t.id, account_id: t.accountId, execution_id: t.executionId, attempt, spec: toJson(t.spec), env: toJson(t.env),
  secret_names: toJson(t.secretNames), timeout_ms: t.timeoutMs ?? null, queued_at: queuedAt,
});

/** The statements of every task's way through the queue, compiled once (store/prepared.ts). */
function taskQueries(db0: Kysely<DB>) {
  return {
    /** the queue's next sequence numbers (nextSequence, prepared) */
    sequence: prepare(db0, sequenceStatement),
    /** a queued task of the account (direct dispatch must not overtake it) */
    ahead: prepare(db0, (db, a: { accountId: string }) =>
      db.selectFrom('tasks').select('id').where(isQueued).where('account_id', '=', a.accountId).limit(1)),
    insert: prepare(db0, (db, a: { row: NewTask }) => db.insertInto('tasks').values(a.row)),
    /** the head of an account's queue, in dispatch order */
    queueHead: prepare(db0, (db, a: { accountId: string; limit: number }) =>
      db.selectFrom('tasks').select(QUEUE_COLUMNS)
        .where(isQueued).where('account_id', '=', a.accountId).orderBy('priority', 'desc').orderBy('queue_seq').limit(a.limit)),
    /** the next page of it, after (priority, seq) */
    queuePage: prepare(db0, (db, a: { accountId: string; priority: number; seq: number; limit: number }) =>
      db.selectFrom('tasks').select(QUEUE_COLUMNS)
        .where(isQueued).where('account_id', '=', a.accountId)
        .where((eb) => eb.or([eb('priority', '<', a.priority), eb.and([eb('priority', '=', a.priority), eb('queue_seq', '>', a.seq)])]))
        .orderBy('priority', 'desc').orderBy('queue_seq').limit(a.limit)),
    accept: prepare(db0, (db, a: { ids: string[]; delegateId: string; attempt: number; now: number }) =>
      db.updateTable('tasks').set({ status: 'running', started_at: a.now, lease_expires_at: null })
        .where('id', 'in', a.ids).where(unindexed('delegate_id'), '=', a.delegateId).where('attempt', '=', a.attempt).where(unindexed('status'), '=', 'assigned')
        .returning(['id', 'execution_id'])),
    result: prepare(db0, (db, a: { taskId: string; delegateId: string; status: 'succeeded' | 'failed' | 'canceled'; result: string; now: number; errorKind: string | null; lastSeq: number }) =>
      db.updateTable('tasks')
        .set({ status: a.status, result: a.result, finished_at: a.now, error_kind: a.errorKind, lease_expires_at: null, last_seq: a.lastSeq })
        .where('id', '=', a.taskId).where('delegate_id', '=', a.delegateId).where('status', 'in', ['assigned', 'running'])
        .returning(['execution_id', 'kind', 'delegate_version', 'started_at'])),
  };
}

export class Scheduler implements ResultApplier {
  private readonly targets = new Map<string, DispatchTarget>();
  /** tasks assigned or running per delegate (this server's view) */
  private readonly inFlight = new Map<string, Set<string>>();
  /**
   * Delegates with free slots for which the whole queue held no task they could take at
   * the last full scan. Passes leave them out until a task they could take is queued (any
   * requeue clears them all): without this, an idle pool whose tags match nothing queued
   * made every pass read the whole queue (373 tasks/s instead of 3,900 with 20,000 queued
   * for another pool).
   */
  private readonly starved = new Set<string>();
  /**
   * Tasks inserted since the last wake(): every enqueuer calls wake() after its commit, and
   * only then are the starved delegates that could take them planned again (a pass that
   * ran before the commit could not have seen them).
   */
  private queuedSinceWake: TaskInput[] = [];
  /** delegates that refused a task: not offered it again for a while */
  private readonly refusedBy = new Map<string, Set<string>>();
  private listener: TaskListener | null = null;
  private passRunning = false;
  private passAgain = false;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private bus: Bus | null = null;
  private announced = false;
  /** accepts waiting for the writer's next batch (they are recorded together) */
  private acceptQ: PendingAccept[] = [];
  private acceptsQueued = false;

  /** the statements of every task's way through the queue, compiled once */
  private readonly q: ReturnType<typeof taskQueries>;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
    private readonly secrets: SecretBox,
    private readonly logs: LogStore,
    private readonly opts: SchedulerOptions,
  ) {
    logs.setResultApplier(this);
    this.q = taskQueries(store.db);
  }

  setListener(l: TaskListener): void {
    this.listener = l;
  }

  /** Several servers on one database: queued tasks and cancels travel on the bus. */
  setBus(bus: Bus): void {
    this.bus = bus;
    bus.on('task.queued', (_e, local) => { if (!local) { this.starved.clear(); this.wake(false); } });
    bus.on('task.cancel', (e, local) => {
      if (local) return;
      this.targets.get(e.delegateId)?.send({ type: 'task.cancel', taskId: e.taskId, attempt: e.attempt, reason: e.reason });
    });
  }

  start(): void {
    const every = this.opts.sweepMs ?? Math.max(200, Math.min(1000, Math.floor(this.opts.leaseMs / 4)));
    this.sweepTimer = setInterval(() => void this.sweep().catch((err) => this.logger.error({ err }, 'scheduler sweep failed')), every);
    this.sweepTimer.unref();
    this.wake();
  }

  stop(): void {
    this.stopped = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
  }

  // ---- queueing -----------------------------------------------------------------------

  /** Inserts a queued task inside the caller's transaction. Call wake() after the commit. */
  async enqueue(trx: Executor, t: TaskInput): Promise<void> {
    const seq = await this.takeSequence(trx, 1);
    await this.insertTasks(trx, [t], seq, this.clock.now());
  }

  /** Takes `by` queue sequence numbers in the caller's transaction; returns the last. */
  private async takeSequence(trx: Executor, by: number): Promise<number> {
    const row = await this.q.sequence.executeTakeFirst(trx, { name: 'task_queue', by });
    return Number(row!.value);
  }

  /**
   * Inserts tasks with queue sequences from `firstSeq` on; `direct` assigns the (single)
   * task at once unless the account has tasks waiting. Returns whether it was assigned.
   */
  private async insertTasks(trx: Executor, list: TaskInput[], firstSeq: number, now: number, direct?: DispatchTarget): Promise<boolean> {
    const t0 = list[0];
    if (!t0) return false;
    if (direct) {
      // Direct dispatch (submit only): nothing of the account waits ahead, so the task is
      // written already assigned — one commit from submit to task.assign instead of two.
      const ahead = await this.q.ahead.executeTakeFirst(trx, { accountId: t0.accountId });
      if (ahead) direct = undefined;
    }
    const rows = list.map((t, i): NewTask => ({
      id: t.id,
      account_id: t.accountId,
      execution_id: t.executionId,
      kind: t.kind,
      spec: toJson(t.spec),
      env: toJson(t.env),
      secret_names: toJson(t.secretNames),
      selectors: toJson(t.selectors),
      capabilities: toJson(t.capabilities ?? [t.kind]),
      priority: t.priority ?? 0,
      status: direct ? ('assigned' as const) : ('queued' as const),
      attempt: 1,
      delegate_id: direct?.delegateId ?? null,
      delegate_version: direct?.version ?? null,
      lease_expires_at: direct ? now + this.opts.leaseMs : null,
      queued_at: now,
      queue_seq: firstSeq + i,
      assigned_at: direct ? now : null,
      started_at: null,
      finished_at: null,
      timeout_ms: t.timeoutMs ?? null,
      queue_timeout_ms: t.queueTimeoutMs ?? DEFAULT_QUEUE_TIMEOUT,
      cancel_requested: 0,
      cancel_reason: null,
      result: null,
      last_seq: 0,
      error_kind: null,
    }));
    if (rows.length === 1) await this.q.insert.execute(trx, { row: rows[0]! });
    // SQLite binds at most 32,766 parameters per statement; 26 columns a row
    else for (let i = 0; i < rows.length; i += 500) await trx.insertInto('tasks').values(rows.slice(i, i + 500)).execute();
    for (const t of list) {
      this.queuedSinceWake.push(t);
      this.metrics.tasksQueued.inc({ kind: t.kind });
      if (t.executionId) this.logs.bindExecution(t.id, t.executionId);
    }
    return direct !== undefined;
  }

  /** Enqueue in a transaction of its own and dispatch at once (benchmarks, simple callers). */
  async submit(t: TaskInput): Promise<void> {
    // An eligible delegate with a free slot takes the task straight away (its slot is
    // reserved before the commit); otherwise it waits in the queue. Concurrent submissions
    // share one commit.
    const target = this.pickDirect(t);
    if (target) this.inFlight.get(target.delegateId)!.add(t.id);
    let assigned = false;
    let queuedAt = 0;
    try {
      await this.store.writer.run(async (trx) => {
        queuedAt = this.clock.now();
        const seq = await this.takeSequence(trx, 1);
        assigned = await this.insertTasks(trx, [t], seq, queuedAt, target);
      });
    } finally {
      if (target && !assigned) this.inFlight.get(target.delegateId)?.delete(t.id);
    }
    if (target && assigned) {
      if (this.targets.get(target.delegateId) === target) {
        await this.sendAssignments(target, [taskRow(t, 1, queuedAt)], this.clock.now());
        // out now, ahead of the HTTP reply, rather than at the end of the tick
        target.flush?.();
      }
      // else: the session closed meanwhile; the lease runs out and the task is queued again
    } else {
      this.wake();
    }
  }

  /** Many tasks in one commit (bulk submission); they wait in the queue in this order. */
  async submitMany(list: TaskInput[]): Promise<void> {
    if (list.length === 0) return;
    await this.store.writer.run(async (trx) => {
      const last = await this.takeSequence(trx, list.length);
      await this.insertTasks(trx, list, last - list.length + 1, this.clock.now());
    });
    this.wake();
  }

  /** A task was queued: the starved delegates that could take it are planned again. */
  private unstarve(t: TaskInput): void {
    const caps = t.capabilities ?? [t.kind];
    for (const id of this.starved) {
      const d = this.targets.get(id);
      if (!d || (d.accountId === t.accountId && t.selectors.every((x) => d.tags.has(x)) && caps.every((c) => d.capabilities.has(c)))) this.starved.delete(id);
    }
  }

  private pickDirect(t: TaskInput): DispatchTarget | undefined {
    const caps = t.capabilities ?? [t.kind];
    let best: DispatchTarget | undefined;
    let bestRatio = 0;
    for (const d of this.targets.values()) {
      if (d.accountId !== t.accountId) continue;
      const f = this.free(d);
      if (f <= 0 || !this.inFlight.has(d.delegateId)) continue;
      if (!t.selectors.every((x) => d.tags.has(x)) || !caps.every((c) => d.capabilities.has(c))) continue;
      const ratio = f / d.capacity;
      if (ratio > bestRatio) { best = d; bestRatio = ratio; }
    }
    return best;
  }

  /**
   * Asks for a dispatch pass; coalesced, runs on the next tick. With several servers the
   * others are told too (once per tick), since they may hold the eligible delegate.
   */
  wake(announce = true): void {
    if (this.stopped) return;
    if (this.queuedSinceWake.length) {
      const queued = this.queuedSinceWake;
      this.queuedSinceWake = [];
      if (this.starved.size) for (const t of queued) this.unstarve(t);
    }
    if (announce && this.bus?.distributed && !this.announced) {
      this.announced = true;
      setImmediate(() => {
        this.announced = false;
        this.bus?.publish({ type: 'task.queued' });
      });
    }
    if (this.passRunning) {
      this.passAgain = true;
      return;
    }
    this.passRunning = true;
    setImmediate(() => void this.runPasses());
  }

  private async runPasses(): Promise<void> {
    try {
      do {
        this.passAgain = false;
        await this.pass();
      } while (this.passAgain && !this.stopped);
    } catch (err) {
      this.logger.error({ err }, 'dispatch pass failed');
    } finally {
      this.passRunning = false;
    }
  }

  private free(t: DispatchTarget): number {
    return t.accepting ? t.capacity - (this.inFlight.get(t.delegateId)?.size ?? 0) : 0;
  }

  private async pass(): Promise<void> {
    const free = new Map<string, number>();
    let total = 0;
    for (const t of this.targets.values()) {
      const f = this.free(t);
      if (f > 0 && !this.starved.has(t.delegateId)) { free.set(t.delegateId, f); total += f; }
    }
    if (total === 0) return;
    // A delegate takes only its own account's tasks, so each account's queue is read on
    // its own, in its index order.
    const freeByAccount = new Map<string, number>();
    for (const [id, f] of free) {
      const acc = this.targets.get(id)!.accountId;
      freeByAccount.set(acc, (freeByAccount.get(acc) ?? 0) + f);
    }
    const plan = new Map<string, string[]>();
    for (const [accountId, slots] of freeByAccount) await this.planAccount(accountId, slots, free, plan);
    if (plan.size === 0) return;

    const now = this.clock.now();
    // The claim shares the writer's commit with accepts and results of the same tick. The
    // slots are checked again when it runs: a result's commit may have refilled them.
    const claimed = await this.store.writer.run(async (trx) => {
      const out = new Map<string, AssignRow[]>();
      for (const [delegateId, ids] of plan) {
        const t = this.targets.get(delegateId);
        if (!t) continue;
        const got = await this.claimFor(trx, t, ids.slice(0, Math.max(0, this.free(t))), now);
        if (got.length) out.set(delegateId, got);
      }
      return out;
    });
    await this.sendClaimed(claimed, now);
  }

  /**
   * Claims tasks for a delegate inside a writer item and takes its slots at once (given
   * back if the transaction rolls back), so concurrent claims never overfill it.
   */
  private async claimFor(trx: Executor, t: DispatchTarget, ids: string[], now: number): Promise<AssignRow[]> {
    if (ids.length === 0) return [];
    const got = await claimTasks(trx, this.store.dialect, ids, { delegateId: t.delegateId, version: t.version, leaseExpiresAt: now + this.opts.leaseMs, now });
    if (got.length === 0) return got;
    let set = this.inFlight.get(t.delegateId);
    if (!set) this.inFlight.set(t.delegateId, (set = new Set<string>()));
    const held = set;
    for (const g of got) held.add(g.id);
    this.store.writer.onRollback(() => { for (const g of got) held.delete(g.id); });
    return got;
  }

  /** After the claim's commit: task.assign to each delegate still connected. */
  private async sendClaimed(claimed: Map<string, AssignRow[]>, now: number): Promise<void> {
    for (const [delegateId, got] of claimed) {
      const t = this.targets.get(delegateId);
      if (!t) continue; // the session closed meanwhile: the lease will run out and requeue
      await this.sendAssignments(t, got, now);
    }
  }

  /**
   * ResultApplier: inside the commit that stores results, the slots they free are filled
   * from the queue, so the acknowledgement and the next assignment share one commit.
   */
  async refill(trx: Executor, finished: Array<{ delegateId: string; taskId: string }>): Promise<Map<string, AssignRow[]>> {
    const out = new Map<string, AssignRow[]>();
    const freed = new Map<string, number>();
    for (const f of finished) if (this.inFlight.get(f.delegateId)?.has(f.taskId)) freed.set(f.delegateId, (freed.get(f.delegateId) ?? 0) + 1);
    const now = this.clock.now();
    for (const [delegateId, n] of freed) {
      const t = this.targets.get(delegateId);
      if (!t?.accepting || this.starved.has(delegateId)) continue;
      const slots = Math.min(n, this.free(t) + n);
      if (slots <= 0) continue;
      const plan = new Map<string, string[]>();
      await this.planAccount(t.accountId, slots, new Map([[delegateId, slots]]), plan, trx);
      const got = await this.claimFor(trx, t, plan.get(delegateId) ?? [], now);
      if (got.length) out.set(delegateId, got);
    }
    return out;
  }

  /** Plans one account's queue onto its delegates' free slots (FIFO, least-loaded delegate first). */
  private async planAccount(accountId: string, slots: number, free: Map<string, number>, plan: Map<string, string[]>, db: Executor = this.store.db): Promise<void> {
    let total = slots;
    // Pick in memory: FIFO per account, least-loaded eligible delegate first. The queue is
    // read page by page in queue order, so tasks no connected delegate can take (selectors,
    // capabilities) never hide eligible ones behind them.
    const MAX_SCAN = 50_000;
    // The first page is sized to the free slots (most passes fill them from it); later
    // pages, needed only when the head of the queue is ineligible, are larger.
    let page = Math.min(1000, total * 2 + 8);
    let scanned = 0;
    let after: { priority: number; seq: number } | null = null;
    /** delegates some queued task would suit (refusals included) */
    const suited = new Set<string>();
    let wholeQueue = false;
    while (total > 0 && scanned < MAX_SCAN) {
      const PAGE = page;
      page = 1000;
      const rows: Array<QueuedRow & { priority: number; queue_seq: number }> = after
        ? await this.q.queuePage.execute(db, { accountId, priority: after.priority, seq: after.seq, limit: PAGE })
        : await this.q.queueHead.execute(db, { accountId, limit: PAGE });
      scanned += rows.length;
      for (const r of rows) {
        if (total <= 0) break;
        const selectors = fromJson<string[]>(r.selectors, []);
        const caps = fromJson<string[]>(r.capabilities, []);
        const refused = this.refusedBy.get(r.id);
        let best: DispatchTarget | null = null;
        let bestFree = 0;
        for (const [id, f] of free) {
          const t = this.targets.get(id)!;
          if (t.accountId !== accountId) continue;
          if (f <= 0 && suited.has(id)) continue;
          if (!selectors.every((x) => t.tags.has(x)) || !caps.every((c) => t.capabilities.has(c))) continue;
          suited.add(id);
          if (f <= 0 || refused?.has(id)) continue;
          const ratio = f / t.capacity;
          if (!best || ratio > bestFree) { best = t; bestFree = ratio; }
        }
        if (!best) continue;
        free.set(best.delegateId, free.get(best.delegateId)! - 1);
        total--;
        const list = plan.get(best.delegateId) ?? [];
        list.push(r.id);
        plan.set(best.delegateId, list);
      }
      if (rows.length < PAGE) { wholeQueue = total > 0 || rows.length === 0; break; }
      const last = rows[rows.length - 1]!;
      after = { priority: Number(last.priority), seq: Number(last.queue_seq) };
    }
    if (wholeQueue) {
      for (const id of free.keys()) if (!suited.has(id) && this.targets.get(id)?.accountId === accountId) this.starved.add(id);
    }
  }

  private async sendAssignments(t: DispatchTarget, rows: AssignRow[], now: number): Promise<void> {
    for (const r of rows) {
      const names = fromJson<string[]>(r.secret_names, []);
      let secrets: Record<string, string> = {};
      try {
        secrets = await readSecrets(this.store.db, this.secrets, r.account_id, names);
      } catch (err) {
        this.logger.error({ err, taskId: r.id }, 'secret could not be decrypted');
      }
      const frame: TaskAssign = {
        type: 'task.assign',
        taskId: r.id,
        attempt: r.attempt,
        leaseMs: this.opts.leaseMs,
        ...(r.execution_id ? { executionId: r.execution_id } : {}),
        spec: fromJson<TaskSpec>(r.spec, { kind: 'noop' }),
        env: fromJson<Record<string, string>>(r.env, {}),
        secrets,
        ...(r.timeout_ms ? { timeoutMs: Number(r.timeout_ms) } : {}),
        ...(this.opts.killGraceMs !== undefined ? { killGraceMs: this.opts.killGraceMs } : {}),
      };
      t.send(frame);
      this.metrics.dispatchLatency.observe((now - Number(r.queued_at)) / 1000);
    }
  }

  // ---- sessions (called by the gateway) -------------------------------------------------

  /** A delegate session opened: record its tasks in flight and dispatch to it. */
  async attach(t: DispatchTarget): Promise<void> {
    this.targets.set(t.delegateId, t);
    this.starved.delete(t.delegateId);
    if (this.mayHold(t.delegateId)) {
      const rows = await this.store.db.selectFrom('tasks').select('id').where('delegate_id', '=', t.delegateId).where('status', 'in', ['assigned', 'running']).execute();
      this.inFlight.set(t.delegateId, new Set(rows.map((r) => r.id)));
    }
    this.wake();
  }

  /** The session closed: not-yet-accepted assignments go back to the queue at once. */
  async detach(delegateId: string, target: DispatchTarget): Promise<void> {
    if (this.targets.get(delegateId) !== target) return;
    this.targets.delete(delegateId);
    await this.store.db.updateTable('tasks')
      .set((eb) => ({ status: 'queued', delegate_id: null, delegate_version: null, lease_expires_at: null, attempt: eb('attempt', '+', 1) }))
      .where('delegate_id', '=', delegateId).where('status', '=', 'assigned').execute();
    this.starved.clear(); // its assignments are queued again
    this.wake();
  }

  target(delegateId: string): DispatchTarget | undefined {
    return this.targets.get(delegateId);
  }

  /**
   * What the server knows of the tasks a (re)connecting delegate reports: the durable
   * sequence to resume after, and the ones it should drop.
   */
  async reconcile(delegateId: string, reported: Array<{ taskId: string; attempt: number }>): Promise<{ acks: Array<{ taskId: string; attempt: number; seq: number }>; forget: string[]; cancel: string[] }> {
    const ids = reported.map((r) => r.taskId);
    const rows = ids.length
      ? await this.store.db.selectFrom('tasks').select(['id', 'status', 'delegate_id', 'last_seq', 'attempt', 'cancel_requested']).where('id', 'in', ids).execute()
      : [];
    const byId = new Map(rows.map((r) => [r.id, r]));
    const acks: Array<{ taskId: string; attempt: number; seq: number }> = [];
    const forget: string[] = [];
    const cancel: string[] = [];
    for (const r of reported) {
      const row = byId.get(r.taskId);
      if (!row || row.delegate_id !== delegateId || !['assigned', 'running'].includes(row.status)) {
        forget.push(r.taskId);
        continue;
      }
      acks.push({ taskId: r.taskId, attempt: r.attempt, seq: row.last_seq });
      if (row.cancel_requested) cancel.push(r.taskId);
    }
    // Tasks the server believes run there but the delegate does not report: it lost them.
    const held = await this.store.db.selectFrom('tasks').select(['id', 'status']).where('delegate_id', '=', delegateId).where('status', 'in', ['assigned', 'running']).execute();
    const reportedSet = new Set(ids);
    const lost = held.filter((h) => !reportedSet.has(h.id));
    for (const h of lost) {
      if (h.status === 'assigned') {
        await this.store.db.updateTable('tasks').set((eb) => ({ status: 'queued', delegate_id: null, delegate_version: null, lease_expires_at: null, attempt: eb('attempt', '+', 1) }))
          .where('id', '=', h.id).where('status', '=', 'assigned').execute();
      } else {
        await this.failTasks([h.id], { kind: 'DelegateLost', message: 'the delegate reconnected without this task (its state was lost)', retryable: true });
      }
    }
    return { acks, forget, cancel };
  }

  // ---- frames from delegates ---------------------------------------------------------------

  /** Records an accept; accepts that arrive together share one statement and one commit. */
  onAccept(delegateId: string, delegateName: string, taskId: string, attempt: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.acceptQ.push({ delegateId, delegateName, taskId, attempt, resolve, reject });
      if (this.acceptsQueued) return;
      this.acceptsQueued = true;
      let batch: PendingAccept[] | null = null;
      let now = 0;
      this.store.writer.run(async (trx) => {
        // taken when the writer runs it, so every accept until then joins; kept for a retry
        if (!batch) {
          batch = this.acceptQ;
          this.acceptQ = [];
          this.acceptsQueued = false;
          now = this.clock.now();
        }
        return this.recordAccepts(trx, batch, now);
      }).then((started) => {
        for (const a of batch!) {
          const execId = started.get(a.taskId);
          if (execId !== undefined) this.listener?.onTaskStarted({ taskId: a.taskId, executionId: execId, delegateId: a.delegateId, delegateName: a.delegateName, at: now });
          a.resolve();
        }
      }, (err: unknown) => {
        for (const a of batch ?? []) a.reject(err);
      });
    });
  }

  /** assigned → running for accepts of the current attempt; returns the started tasks' executions. */
  private async recordAccepts(trx: Executor, batch: PendingAccept[], now: number): Promise<Map<string, string | null>> {
    const groups = new Map<string, { delegateId: string; attempt: number; ids: string[] }>();
    for (const a of batch) {
      const k = `${a.delegateId}\u0000${a.attempt}`;
      let g = groups.get(k);
      if (!g) groups.set(k, (g = { delegateId: a.delegateId, attempt: a.attempt, ids: [] }));
      g.ids.push(a.taskId);
    }
    const started = new Map<string, string | null>();
    for (const g of groups.values()) {
      for (let i = 0; i < g.ids.length; i += 500) {
        const rows = await this.q.accept.execute(trx, { ids: g.ids.slice(i, i + 500), delegateId: g.delegateId, attempt: g.attempt, now });
        for (const r of rows) started.set(r.id, r.execution_id);
      }
    }
    return started;
  }

  async onReject(delegateId: string, taskId: string, attempt: number, reason: string): Promise<void> {
    const set = this.refusedBy.get(taskId) ?? new Set<string>();
    set.add(delegateId);
    this.refusedBy.set(taskId, set);
    const r = await this.store.db.updateTable('tasks')
      .set((eb) => ({ status: 'queued', delegate_id: null, delegate_version: null, lease_expires_at: null, attempt: eb('attempt', '+', 1) }))
      .where('id', '=', taskId).where('delegate_id', '=', delegateId).where('attempt', '=', attempt).where('status', '=', 'assigned')
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) > 0) {
      this.inFlight.get(delegateId)?.delete(taskId);
      this.logger.info({ taskId, delegateId, reason }, 'task refused by delegate; back in the queue');
      // Forget refusals after a while: capacity comes back.
      setTimeout(() => this.refusedBy.get(taskId)?.delete(delegateId), 5000).unref();
      this.starved.clear();
      this.wake();
    }
  }

  /** ResultApplier: inside the log store's commit, after every chunk before it. */
  async applyResult(trx: Executor, delegateId: string, f: TaskResult, lastSeq: number): Promise<FinishedTask | null> {
    const status = f.status === 'Succeeded' ? 'succeeded' : f.status === 'Canceled' ? 'canceled' : 'failed';
    const result = { status: f.status, exitCode: f.exitCode, error: f.error, outputs: f.outputs, startedAt: f.startedAt, finishedAt: f.finishedAt, data: f.data };
    const r = await this.q.result.executeTakeFirst(trx, {
      taskId: f.taskId, delegateId, status, result: toJson(result), now: this.clock.now(), errorKind: f.error?.kind ?? null, lastSeq,
    });
    if (!r) return null;
    return { executionId: r.execution_id, kind: r.kind, delegateVersion: r.delegate_version, startedAt: r.started_at == null ? null : Number(r.started_at) };
  }

  afterResults(results: AcceptedResult[], refills: Map<string, AssignRow[]>): void {
    if (refills.size) void this.sendClaimed(refills, this.clock.now()).catch((err) => this.logger.error({ err }, 'sending assignments failed'));
    for (const { delegateId, frame: f, task } of results) {
      this.inFlight.get(delegateId)?.delete(f.taskId);
      this.refusedBy.delete(f.taskId);
      this.metrics.tasksFinished.inc({ kind: task.kind, status: f.status });
      try {
        this.listener?.onTaskFinished({
          taskId: f.taskId,
          executionId: task.executionId,
          status: f.status,
          exitCode: f.exitCode,
          ...(f.error ? { error: f.error } : {}),
          outputs: f.outputs,
          startedAt: task.startedAt ?? f.startedAt,
          finishedAt: f.finishedAt,
          delegateId,
          delegateVersion: task.delegateVersion,
          data: f.data,
        });
      } catch (err) {
        this.logger.error({ err, taskId: f.taskId }, 'result delivery failed');
      }
    }
    this.wake();
  }

  // ---- cancel, loss, timeouts ------------------------------------------------------------

  /** Cancels a task; idempotent. Queued: at once. Running: task.cancel, the result says Canceled. */
  async cancel(taskId: string, reason: string): Promise<void> {
    const row = await this.store.db.selectFrom('tasks').select(['status', 'delegate_id', 'attempt']).where('id', '=', taskId).executeTakeFirst();
    if (!row) return;
    if (row.status === 'queued') {
      await this.failTasks([taskId], { kind: 'Canceled', message: reason, retryable: false }, 'canceled', ['queued']);
      return;
    }
    if (row.status !== 'assigned' && row.status !== 'running') return;
    await this.store.db.updateTable('tasks').set({ cancel_requested: 1, cancel_reason: reason }).where('id', '=', taskId).execute();
    const t = row.delegate_id ? this.targets.get(row.delegate_id) : undefined;
    if (t) {
      t.send({ type: 'task.cancel', taskId, attempt: row.attempt, reason });
    } else if (this.bus?.distributed && row.delegate_id) {
      // The delegate's socket may be held by another server.
      this.bus.publish({ type: 'task.cancel', taskId, delegateId: row.delegate_id, attempt: row.attempt, reason });
    } else if (row.status === 'assigned') {
      await this.failTasks([taskId], { kind: 'Canceled', message: reason, retryable: false }, 'canceled', ['assigned']);
    }
    // A running task on a disconnected delegate: cancelled on reconnect, or lost after the grace.
  }

  /** Ends tasks without a delegate result (DelegateLost, NoEligibleDelegate, Canceled). */
  async failTasks(ids: string[], error: TaskFailure, status: 'failed' | 'canceled' = 'failed', from: string[] = ['queued', 'assigned', 'running']): Promise<void> {
    if (ids.length === 0) return;
    const now = this.clock.now();
    const result = { status: status === 'canceled' ? 'Canceled' : 'Failed', exitCode: null, error, outputs: {}, startedAt: null, finishedAt: now };
    const done = await this.store.db.updateTable('tasks')
      .set({ status, result: toJson(result), finished_at: now, error_kind: error.kind, lease_expires_at: null })
      .where('id', 'in', ids).where(unindexed('status'), 'in', from)
      .returning(['id', 'execution_id', 'delegate_id', 'delegate_version', 'started_at', 'kind']).execute();
    for (const r of done) {
      if (r.delegate_id) this.inFlight.get(r.delegate_id)?.delete(r.id);
      this.metrics.tasksFinished.inc({ kind: r.kind, status: result.status });
      await this.logs.appendNote(r.id, `${error.kind}: ${error.message}`, 'after').catch(() => undefined);
      this.listener?.onTaskFinished({
        taskId: r.id, executionId: r.execution_id, status: result.status as 'Failed' | 'Canceled', exitCode: null, error, outputs: {},
        startedAt: r.started_at == null ? null : Number(r.started_at), finishedAt: now, delegateId: r.delegate_id, delegateVersion: r.delegate_version,
      });
    }
    if (done.length) this.wake();
  }

  /** Leases that ran out, queue timeouts, delegates lost past the grace. */
  async sweep(): Promise<void> {
    if (this.stopped) return;
    const now = this.clock.now();
    const expired = await this.store.db.updateTable('tasks')
      .set((eb) => ({ status: 'queued', delegate_id: null, delegate_version: null, lease_expires_at: null, attempt: eb('attempt', '+', 1) }))
      .where(isAssigned).where('lease_expires_at', '<', now)
      .returning(['id', 'delegate_id']).execute();
    for (const e of expired) {
      if (e.delegate_id) this.inFlight.get(e.delegate_id)?.delete(e.id);
      this.logger.warn({ taskId: e.id }, 'lease ran out before task.accept; back in the queue');
    }
    if (expired.length) {
      this.starved.clear();
      this.wake();
    }

    const timedOut = (await this.store.db.selectFrom('tasks').select('id')
      .where(isQueued)
      .where((eb) => eb(eb('queued_at', '+', eb.ref('queue_timeout_ms')), '<', now))
      .execute()).map((r) => r.id);
    if (timedOut.length) {
      await this.failTasks(timedOut, { kind: 'NoEligibleDelegate', message: 'no eligible delegate took the task within its queue timeout', retryable: true }, 'failed', ['queued']);
    }

    const lostBefore = now - this.opts.delegateGraceMs;
    const lost = await this.store.db.selectFrom('tasks').innerJoin('delegates', 'delegates.id', 'tasks.delegate_id')
      .select(['tasks.id as id', 'delegates.name as name'])
      .where('tasks.status', 'in', ['assigned', 'running'])
      .where('delegates.connected', '=', 0).where('delegates.disconnected_at', '<', lostBefore)
      .execute();
    if (lost.length) {
      const byName = new Map<string, string[]>();
      for (const l of lost) byName.set(l.name, [...(byName.get(l.name) ?? []), l.id]);
      for (const [name, ids] of byName) {
        this.logger.warn({ delegate: name, tasks: ids.length }, 'delegate stayed away past the grace; its tasks are lost');
        await this.failTasks(ids, { kind: 'DelegateLost', message: `delegate ${name} disconnected for longer than ${Math.round(this.opts.delegateGraceMs / 1000)}s`, retryable: true });
      }
    }
  }

  // ---- visibility ----------------------------------------------------------------------------

  /** Why a queued task waits, and its place in its account's queue. */
  async describeQueue(taskId: string): Promise<QueueInfo | null> {
    const db = this.store.db;
    const t = await db.selectFrom('tasks').select(['account_id', 'status', 'priority', 'queue_seq', 'selectors', 'capabilities', 'kind']).where('id', '=', taskId).executeTakeFirst();
    if (!t || (t.status !== 'queued' && t.status !== 'assigned')) return null;
    const ahead = await db.selectFrom('tasks').select((eb) => eb.fn.countAll<number>().as('n'))
      .where('account_id', '=', t.account_id).where(isQueued)
      .where((eb) => eb.or([eb('priority', '>', t.priority), eb.and([eb('priority', '=', t.priority), eb('queue_seq', '<', t.queue_seq)])]))
      .executeTakeFirst();
    const position = Number(ahead?.n ?? 0) + 1;
    if (t.status === 'assigned') return { reason: 'assigned to a delegate; waiting for it to accept', position };
    const selectors = fromJson<string[]>(t.selectors, []);
    const caps = fromJson<string[]>(t.capabilities, []);
    const delegates = await db.selectFrom('delegates').innerJoin('accounts', 'accounts.id', 'delegates.account_id')
      .select(['delegates.id', 'delegates.tags', 'delegates.capabilities', 'delegates.capacity', 'accounts.name as account'])
      .where('delegates.account_id', '=', t.account_id).where('delegates.connected', '=', 1).execute();
    const acc = await db.selectFrom('accounts').select('name').where('id', '=', t.account_id).executeTakeFirst();
    if (delegates.length === 0) return { reason: `no delegate of account ${acc?.name ?? '?'} is connected`, position };
    const matching = delegates.filter((d) => selectors.every((s) => fromJson<string[]>(d.tags, []).includes(s)));
    if (matching.length === 0) return { reason: `none of the ${delegates.length} connected delegates matches selectors [${selectors.join(', ')}]`, position };
    const capable = matching.filter((d) => caps.every((c) => fromJson<string[]>(d.capabilities, []).includes(c)));
    if (capable.length === 0) return { reason: `no delegate matching the selectors has the capabilities [${caps.join(', ')}]`, position };
    const slots = capable.reduce((s, d) => s + d.capacity, 0);
    let used = 0;
    for (const d of capable) used += this.inFlight.get(d.id)?.size ?? 0;
    if (used >= slots) return { reason: `all ${capable.length} eligible delegates are busy (${Math.min(used, slots)}/${slots} slots in use)`, position };
    return { reason: `waiting for dispatch (${position - 1} task(s) ahead in the account's queue)`, position };
  }

  /**
   * Could the database hold tasks of this delegate? False only when this server knows it
   * holds none (saves the reconcile queries in a reconnect storm).
   */
  mayHold(delegateId: string): boolean {
    const set = this.inFlight.get(delegateId);
    return set === undefined || set.size > 0;
  }

  /** Does this delegate hold the task (assigned or running here)? Guards log and result frames. */
  holds(delegateId: string, taskId: string): boolean {
    return this.inFlight.get(delegateId)?.has(taskId) ?? false;
  }

  /** Running tasks per delegate, as this server tracks them. */
  inFlightCount(delegateId: string): number {
    return this.inFlight.get(delegateId)?.size ?? 0;
  }

  newTaskId(): string {
    return newId();
  }
}

export type { TaskOutcome };
