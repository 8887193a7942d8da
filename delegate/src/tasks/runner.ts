/**
 * The task runner: decides on assignments (capacity, capability, drain, duplicates),
 * runs each task through its kind's handler with a timeout and a cancel signal, and
 * spools the result as the task's last sequence.
 */
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { Masker, type TaskAssign, type TaskKind, type TaskReject, type TaskResult } from '@ferry/shared';
import type { Logger } from 'pino';
import type { Spool, TaskSpool } from '../spool/spool.js';
import { taskKey } from '../spool/spool.js';
import { LogSink, type ChunkLimits } from './log-sink.js';
import type { HandlerMap } from './index.js';
import { failed, type AbortCause, type TaskContext, type TaskOutcome } from './types.js';
import { killOrphanGroup } from './process-group.js';

export interface TaskRunnerOptions {
  spool: Spool;
  handlers: HandlerMap;
  /** kinds whose self-check passed */
  capabilities: ReadonlySet<TaskKind>;
  capacity: number;
  stateDir: string;
  killGraceMs: number;
  chunkLimits: () => ChunkLimits;
  logger: Logger;
}

export type AssignDecision =
  | { accept: true; again: boolean }
  | { accept: false; reason: TaskReject['reason']; message: string };

interface Running {
  assign: TaskAssign;
  controller: AbortController;
  done: Promise<void>;
  task: TaskSpool;
  sink: LogSink;
  /** the server said forget: drop the spool instead of writing a result */
  forgotten: boolean;
}

/** How many finished task attempts are remembered to refuse a duplicate. */
const SEEN_LIMIT = 10_000;

const workDirName = (taskId: string, attempt: number): string => `${taskId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 100)}-${attempt}`;

/** Events: 'finished' (taskId, attempt) a task's result is spooled (or it was dropped). */
export class TaskRunner extends EventEmitter {
  private readonly running = new Map<string, Running>();
  private readonly seen = new Set<string>();
  private draining = false;

  constructor(private readonly opts: TaskRunnerOptions) {
    super();
  }

  get runningCount(): number {
    return this.running.size;
  }

  /** task ids in progress (for heartbeats) */
  runningIds(): string[] {
    return [...this.running.values()].map((r) => r.assign.taskId);
  }

  get load(): number {
    return this.opts.capacity > 0 ? this.running.size / this.opts.capacity : this.running.size;
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Stop accepting: new assignments are rejected with 'draining'. */
  drain(): void {
    this.draining = true;
  }

  private remember(key: string): void {
    this.seen.add(key);
    if (this.seen.size > SEEN_LIMIT) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
  }

  /**
   * Decides on an assignment and starts it when accepted. A re-sent assignment of an
   * attempt that runs or still has spooled output is accepted again without a second run.
   */
  assign(a: TaskAssign): AssignDecision {
    const key = taskKey(a.taskId, a.attempt);
    if (this.running.has(key) || this.opts.spool.get(a.taskId, a.attempt)) return { accept: true, again: true };
    if (this.seen.has(key)) return { accept: false, reason: 'duplicate', message: `task ${a.taskId} attempt ${a.attempt} already ran on this delegate` };
    if (this.draining) return { accept: false, reason: 'draining', message: 'the delegate is shutting down' };
    const kind = a.spec.kind;
    const handler = this.opts.handlers[kind];
    if (!handler || !this.opts.capabilities.has(kind)) return { accept: false, reason: 'capability', message: `this delegate does not run ${kind} tasks` };
    if (this.running.size >= this.opts.capacity) return { accept: false, reason: 'capacity', message: `all ${this.opts.capacity} slots are busy` };
    this.start(a);
    return { accept: true, again: false };
  }

  private start(a: TaskAssign): void {
    const key = taskKey(a.taskId, a.attempt);
    this.remember(key);
    const startedAt = Date.now();
    const task = this.opts.spool.create({ taskId: a.taskId, attempt: a.attempt, startedAt, kind: a.spec.kind });
    const masker = new Masker(Object.values(a.secrets));
    const sink = new LogSink(task, this.opts.spool, masker, this.opts.chunkLimits);
    const controller = new AbortController();
    const logger = this.opts.logger.child({ taskId: a.taskId, attempt: a.attempt, kind: a.spec.kind });
    const entry: Running = { assign: a, controller, task, sink, forgotten: false, done: Promise.resolve() };
    this.running.set(key, entry);
    entry.done = this.execute(entry, masker, startedAt, logger).finally(() => {
      this.running.delete(key);
      this.emit('finished', a.taskId, a.attempt);
    });
  }

  private async execute(r: Running, masker: Masker, startedAt: number, logger: Logger): Promise<void> {
    const { assign: a, controller, sink, task } = r;
    const handler = this.opts.handlers[a.spec.kind]!;
    const killGraceMs = a.killGraceMs ?? this.opts.killGraceMs;
    let timer: NodeJS.Timeout | undefined;
    if (a.timeoutMs !== undefined) {
      const timeoutMs = a.timeoutMs;
      timer = setTimeout(() => controller.abort({ kind: 'timeout', timeoutMs } satisfies AbortCause), timeoutMs);
    }
    const ctx: TaskContext = {
      assign: a,
      spec: a.spec,
      signal: controller.signal,
      log: sink,
      masker,
      workDir: join(this.opts.stateDir, 'work', workDirName(a.taskId, a.attempt)),
      killGraceMs,
      logger,
      startedAt,
      onProcess: (info) => task.recordProcess(info),
    };
    logger.info('task started');
    let outcome: TaskOutcome;
    try {
      outcome = await handler.run(ctx);
    } catch (err) {
      logger.error({ err: masker.mask((err as Error).stack ?? String(err)) }, 'task handler failed');
      outcome = failed('StepFailed', `delegate error: ${masker.mask((err as Error).message)}`);
    } finally {
      clearTimeout(timer);
    }
    const cause = controller.signal.aborted ? (controller.signal.reason as AbortCause) : undefined;
    if (cause?.kind === 'timeout') {
      outcome = { ...failed('Timeout', `timed out after ${cause.timeoutMs}ms`), exitCode: outcome.exitCode, outputs: outcome.outputs ?? {} };
    } else if (cause?.kind === 'cancel') {
      outcome = {
        status: 'Canceled',
        exitCode: outcome.exitCode,
        error: { kind: 'Canceled', message: (cause.reason || 'canceled').slice(0, 8192), retryable: false },
        outputs: outcome.outputs ?? {},
      };
    }
    sink.close();
    if (r.forgotten) {
      await this.opts.spool.drop(a.taskId, a.attempt);
      logger.info('task forgotten by the server; output dropped');
      return;
    }
    const finishedAt = Date.now();
    try {
      task.append((seq) => resultFrame(a.taskId, a.attempt, seq, outcome, startedAt, finishedAt));
    } catch (err) {
      logger.warn({ err: (err as Error).message }, 'result not spooled');
    }
    logger.info({ status: outcome.status, exitCode: outcome.exitCode, error: outcome.error?.kind, ms: finishedAt - startedAt }, 'task finished');
  }

  /** Cancels a running attempt; false if it is not running here. */
  cancel(taskId: string, attempt: number, reason: string): boolean {
    const r = this.running.get(taskKey(taskId, attempt));
    if (!r) return false;
    if (!r.controller.signal.aborted) r.controller.abort({ kind: 'cancel', reason } satisfies AbortCause);
    return true;
  }

  /**
   * The server no longer wants this task: cancel every attempt of it and drop its spool.
   * Nothing more of it is sent from the moment this is called; the promise resolves
   * once its processes are gone.
   */
  async forget(taskId: string): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const r of this.running.values()) {
      if (r.assign.taskId !== taskId) continue;
      r.forgotten = true;
      r.task.suppressed = true;
      if (!r.controller.signal.aborted) r.controller.abort({ kind: 'cancel', reason: 'forgotten by the server' } satisfies AbortCause);
      waits.push(r.done);
    }
    for (const t of this.opts.spool.list()) {
      if (t.taskId !== taskId) continue;
      t.suppressed = true;
      if (!this.running.has(t.key)) waits.push(this.opts.spool.drop(t.taskId, t.attempt));
    }
    await Promise.all(waits);
  }

  /** Whether an attempt is in progress (its process runs). */
  isRunning(taskId: string, attempt: number): boolean {
    return this.running.has(taskKey(taskId, attempt));
  }

  /** Cancels everything (drain timeout, shutdown). */
  cancelAll(reason: string): void {
    for (const r of this.running.values()) {
      if (!r.controller.signal.aborted) r.controller.abort({ kind: 'cancel', reason } satisfies AbortCause);
    }
  }

  /** Resolves true when no task runs, false after timeoutMs. */
  async waitIdle(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.running.size > 0) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all([...this.running.values()].map((r) => r.done)),
        new Promise((r) => { timer = setTimeout(r, left); }),
      ]);
      clearTimeout(timer);
    }
    return true;
  }

  /**
   * Tasks found in the spool after a restart whose result was never written: their
   * process died with the old worker (or is killed now). They end as DelegateLost.
   */
  async recover(tasks: TaskSpool[]): Promise<void> {
    for (const t of tasks) {
      this.remember(t.key);
      if (t.finished) continue;
      const killed = t.process ? killOrphanGroup(t.process) : false;
      const now = Date.now();
      const note = `ferry: the delegate worker stopped while this step ran${killed ? '; its leftover processes were killed' : ''}`;
      t.append((seq) => ({ type: 'log.chunk', taskId: t.taskId, attempt: t.attempt, seq, lines: [{ s: 2, t: now, l: note }] }));
      const outcome = failed('DelegateLost', 'the delegate worker restarted while the task ran');
      t.append((seq) => resultFrame(t.taskId, t.attempt, seq, outcome, t.meta.startedAt, now));
      await rm(join(this.opts.stateDir, 'work', workDirName(t.taskId, t.attempt)), { recursive: true, force: true }).catch(() => undefined);
      this.opts.logger.warn({ taskId: t.taskId, attempt: t.attempt, killedOrphan: killed }, 'task interrupted by a worker restart; reporting DelegateLost');
    }
  }
}

function resultFrame(taskId: string, attempt: number, seq: number, o: TaskOutcome, startedAt: number, finishedAt: number): TaskResult {
  // Optional fields are left out rather than set to undefined: the schema rejects undefined.
  const frame: TaskResult = {
    type: 'task.result',
    taskId,
    attempt,
    seq,
    status: o.status,
    exitCode: o.exitCode,
    outputs: o.outputs ?? {},
    startedAt,
    finishedAt: Math.max(finishedAt, startedAt),
  };
  if (o.error) frame.error = { kind: o.error.kind, message: o.error.message.slice(0, 8192), retryable: o.error.retryable };
  if (o.data !== undefined) frame.data = o.data;
  return frame;
}
