/**
 * The delegate worker: holds the session to the control plane, runs tasks up to its
 * capacity, and keeps their output in the spool until the server has it. SIGTERM drains.
 */
import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import {
  PROTOCOL_VERSION,
  type Hello, type ServerFrameOf, type TaskKind, type Welcome,
} from '@ferry/shared';
import type { Logger } from 'pino';
import type { DelegateConfig } from './config.js';
import { loadDelegateId } from './identity.js';
import { delegateVersion } from './version.js';
import { createLogger } from './logger.js';
import { Spool } from './spool/spool.js';
import { Backoff } from './connection/backoff.js';
import { Connection, type NonWelcomeFrame } from './connection/client.js';
import { TaskRunner } from './tasks/runner.js';
import { chunkLimits } from './tasks/log-sink.js';
import { createHandlers, runSelfChecks, type HandlerMap, type SelfCheckReport } from './tasks/index.js';
import { isSupervisorMessage, type WorkerToSupervisor } from './ipc.js';
import { loadConfig, ConfigError } from './config.js';

export interface WorkerOptions {
  config: DelegateConfig;
  logger?: Logger;
  /** defaults to FERRY_DELEGATE_VERSION or the package version */
  version?: string;
  env?: NodeJS.ProcessEnv;
  handlers?: HandlerMap;
  /** the IPC channel to the supervisor, if there is one */
  send?: (m: WorkerToSupervisor) => void;
  /** how long shutdown waits for the server to acknowledge spooled output (default 5s) */
  flushTimeoutMs?: number;
}

type FrameHandlers = { [K in NonWelcomeFrame['type']]: (f: ServerFrameOf<K>) => void };

export class Worker {
  readonly config: DelegateConfig;
  readonly logger: Logger;
  readonly version: string;
  delegateId = '';
  private spool!: Spool;
  private runner!: TaskRunner;
  private connection!: Connection;
  private checks: SelfCheckReport = { capabilities: [], failed: [] };
  private readonly handlers: HandlerMap;
  private readySent = false;
  private stopping: Promise<void> | null = null;
  private started: Promise<void> | null = null;
  private readonly env: NodeJS.ProcessEnv;
  /**
   * Started by the supervisor on probation (FERRY_PROBATION=1): hello says so and
   * announces capacity 0, so no task runs on a version that has not passed probation.
   * The supervisor ends it over IPC (`probation.end`).
   */
  private probation: boolean;

  constructor(private readonly opts: WorkerOptions) {
    this.config = opts.config;
    this.env = opts.env ?? process.env;
    this.probation = this.env.FERRY_PROBATION === '1' || this.env.FERRY_DELEGATE_PROBATION === '1';
    this.version = opts.version ?? delegateVersion(this.env);
    this.logger = opts.logger ?? createLogger(opts.config.logLevel, { component: 'delegate-worker' });
    this.handlers = opts.handlers ?? createHandlers({ env: this.env });
  }

  get capabilities(): readonly TaskKind[] {
    return this.checks.capabilities;
  }

  /** Loads the id and the spool, runs the self-checks and connects. */
  start(): Promise<void> {
    this.started ??= this.doStart();
    return this.started;
  }

  private async doStart(): Promise<void> {
    const cfg = this.config;
    await mkdir(cfg.stateDir, { recursive: true, mode: 0o700 });
    this.delegateId = await loadDelegateId(cfg.stateDir);
    const log = this.logger.child({ delegateId: this.delegateId });
    (this as { logger: Logger }).logger = log;

    this.spool = new Spool({ dir: join(cfg.stateDir, 'spool'), maxBytes: cfg.spoolMaxBytes, logger: log });
    const recovered = await this.spool.open();
    this.spool.on('writeError', (task, err: Error) => {
      log.error({ taskId: task.taskId, err: err.message }, 'spool write failed; this task\'s output is held in memory only');
      try {
        task.append((seq: number) => ({
          type: 'log.chunk', taskId: task.taskId, attempt: task.attempt, seq,
          lines: [{ s: 2, t: Date.now(), l: `ferry: the delegate could not write its log spool (${err.message}); output of this step may be lost if the delegate restarts before the server stores it` }],
        }));
      } catch { /* result already spooled */ }
    });

    this.checks = await runSelfChecks(this.handlers);
    for (const f of this.checks.failed) log.error({ capability: f.capability, err: f.error }, 'capability self-check failed; not announcing it');

    this.runner = new TaskRunner({
      spool: this.spool,
      handlers: this.handlers,
      capabilities: new Set(this.checks.capabilities),
      capacity: cfg.capacity,
      stateDir: cfg.stateDir,
      killGraceMs: cfg.killGraceMs,
      chunkLimits: () => chunkLimits(this.connection.sessionLimits, cfg.chunkFlushMs),
      logger: log,
    });
    await this.runner.recover(recovered);
    if (recovered.length > 0) log.info({ tasks: recovered.length, bytes: this.spool.usedBytes }, 'spool reopened');

    this.connection = new Connection({
      url: cfg.url,
      token: cfg.token,
      spool: this.spool,
      backoff: new Backoff({ baseMs: cfg.reconnectBaseMs, maxMs: cfg.reconnectMaxMs }),
      logger: log,
      hello: () => this.hello(),
      onWelcome: (w) => this.onWelcome(w),
      onFrame: (f) => this.dispatch(f),
      status: () => ({ running: this.runner.runningIds(), load: this.runner.load }),
    });
    log.info({ version: this.version, name: cfg.name, url: cfg.url, capacity: cfg.capacity, tags: cfg.tags, capabilities: this.checks.capabilities }, 'delegate worker starting');
    this.connection.start();
  }

  private hello(): Hello {
    const hello: Hello = {
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      delegateId: this.delegateId,
      name: this.config.name,
      version: this.version,
      tags: [...this.config.tags],
      capabilities: [...this.checks.capabilities],
      // a draining worker takes nothing new
      capacity: this.runner.isDraining || this.probation ? 0 : this.config.capacity,
      running: this.spool.list().filter((t) => !t.suppressed).map((t) => ({
        taskId: t.taskId,
        attempt: t.attempt,
        lastAckedSeq: t.ackedSeq,
        lastSeq: t.lastSeq,
        finished: t.finished,
      })),
    };
    if (this.probation) hello.probation = true;
    const failedVersions = (this.env.FERRY_FAILED_VERSIONS ?? '').split(',').map((v) => v.trim()).filter(Boolean).slice(0, 16);
    if (failedVersions.length > 0) hello.failedVersions = failedVersions;
    return hello;
  }

  private async onWelcome(w: Welcome): Promise<void> {
    for (const a of w.acks) this.applyAck(a.taskId, a.attempt, a.seq, false);
    // Not awaited: a forgotten task stops sending at once, but its processes may take
    // the kill grace to go, and the resend of everything else must not wait for that.
    for (const id of w.forget) {
      void this.runner.forget(id).catch((err: unknown) => this.logger.error({ taskId: id, err: (err as Error).message }, 'forgetting a task failed'));
    }
    // Finished tasks whose result the server already has are done, whatever it listed.
    for (const t of this.spool.list()) if (t.done && !this.runner.isRunning(t.taskId, t.attempt)) await this.spool.drop(t.taskId, t.attempt);
    this.notify({ type: 'connected', sessionId: w.sessionId });
    if (!this.readySent) {
      this.readySent = true;
      this.notify({ type: 'ready', capabilities: [...this.checks.capabilities], failed: this.checks.failed.map((f) => ({ ...f })) });
    }
  }

  private applyAck(taskId: string, attempt: number, seq: number, done: boolean): void {
    this.connection.acked(taskId, attempt, seq);
    const t = this.spool.get(taskId, attempt);
    if (!t) return;
    t.ack(seq);
    if ((done || t.done) && t.finished && !this.runner.isRunning(taskId, attempt)) {
      void this.spool.drop(taskId, attempt);
    } else if (done && !t.finished) {
      this.logger.warn({ taskId, attempt }, 'server marked a task done that is still running here; keeping it');
    }
  }

  private readonly frameHandlers: FrameHandlers = {
    heartbeat: () => { /* lastReceived is tracked by the connection */ },
    'task.assign': (f) => {
      if (this.probation && !this.spool.get(f.taskId, f.attempt)) {
        this.connection.send({ type: 'task.reject', taskId: f.taskId, attempt: f.attempt, reason: 'capacity', message: 'this delegate version is on probation' });
        return;
      }
      const d = this.runner.assign(f);
      if (d.accept) {
        this.connection.send({ type: 'task.accept', taskId: f.taskId, attempt: f.attempt });
        if (d.again) this.logger.info({ taskId: f.taskId, attempt: f.attempt }, 'assignment repeated; accepted again');
      } else {
        this.connection.send({ type: 'task.reject', taskId: f.taskId, attempt: f.attempt, reason: d.reason, message: d.message });
        this.logger.info({ taskId: f.taskId, attempt: f.attempt, reason: d.reason }, 'assignment rejected');
      }
    },
    'task.cancel': (f) => {
      const running = this.runner.cancel(f.taskId, f.attempt, f.reason);
      this.logger.info({ taskId: f.taskId, attempt: f.attempt, running }, 'cancel requested');
    },
    'log.ack': (f) => this.applyAck(f.taskId, f.attempt, f.seq, f.done === true),
    upgrade: (f) => {
      this.logger.info({ version: f.version }, 'upgrade requested');
      if (this.opts.send) {
        this.notify({ type: 'upgrade', version: f.version, sha256: f.sha256, url: f.url });
      } else {
        this.connection.send({ type: 'upgrade.status', version: f.version, state: 'failed', error: 'this worker runs without a supervisor; it cannot upgrade itself' });
      }
    },
  };

  private dispatch(f: NonWelcomeFrame): void {
    (this.frameHandlers[f.type] as (x: NonWelcomeFrame) => void)(f);
  }

  private notify(m: WorkerToSupervisor): void {
    try {
      this.opts.send?.(m);
    } catch (err) {
      this.logger.warn({ err: (err as Error).message, type: m.type }, 'cannot reach the supervisor');
    }
  }

  /** Messages from the supervisor (IPC). */
  handleSupervisorMessage(m: unknown): void {
    if (!isSupervisorMessage(m)) return;
    if (m.type === 'drain') {
      void this.shutdown('supervisor asked to drain');
      return;
    }
    if (m.type === 'probation.end') {
      if (!this.probation) return;
      this.probation = false;
      this.logger.info('probation passed; reconnecting as a normal session');
      this.connection?.reconnectNow('probation ended');
      return;
    }
    const frame = { type: 'upgrade.status' as const, version: m.version, state: m.state, ...(m.error !== undefined ? { error: String(m.error).slice(0, 8192) } : {}) };
    this.connection?.send(frame, { defer: true });
  }

  /** A second stop request: cancel running tasks now instead of waiting out the drain. */
  cancelNow(reason = 'delegate shutting down'): void {
    this.runner?.cancelAll(reason);
  }

  /**
   * Drains: rejects new tasks, lets running ones finish up to the drain timeout, then
   * cancels them, waits (briefly) for the server to acknowledge the spool, closes.
   */
  shutdown(reason = 'shutdown requested'): Promise<void> {
    this.stopping ??= (async () => {
      await this.started?.catch(() => undefined);
      const log = this.logger;
      if (!this.runner || !this.connection) return;
      this.runner.drain();
      log.info({ reason, running: this.runner.runningCount, drainTimeoutMs: this.config.drainTimeoutMs }, 'draining');
      if (!(await this.runner.waitIdle(this.config.drainTimeoutMs))) {
        log.warn({ running: this.runner.runningIds() }, 'drain timeout; canceling running tasks');
        this.runner.cancelAll('delegate shutting down (drain timeout)');
        await this.runner.waitIdle(this.config.killGraceMs + 10_000);
      }
      await Promise.all(this.spool.list().map((t) => t.settled()));
      if (this.spool.size > 0 && this.connection.connected) {
        const flushed = await this.spool.waitEmpty(this.opts.flushTimeoutMs ?? 5000);
        log.info({ flushed, spooledTasks: this.spool.size }, flushed ? 'spool flushed' : 'spool not fully acknowledged; it is kept for the next start');
      }
      await this.connection.stop();
      await this.spool.close();
      log.info('delegate worker stopped');
    })();
    return this.stopping;
  }
}

/** Exit code of a worker that cannot start because of its settings: do not restart it. */
export const EXIT_CONFIG = 2;

/** The worker process: config, signals, IPC. */
export async function runWorker(argv: readonly string[] = process.argv, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  let config;
  try {
    config = loadConfig(argv, env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`error: CONFIG: ${err.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel, { component: 'delegate-worker' });
  const send = process.send ? (m: WorkerToSupervisor) => { if (process.connected) process.send!(m); } : undefined;
  const worker = new Worker({ config, logger, send });

  let firstSignalAt = 0;
  const stop = (why: string): void => {
    const now = Date.now();
    if (firstSignalAt === 0) {
      firstSignalAt = now;
      void worker.shutdown(why).then(() => process.exit(0), (err: unknown) => {
        logger.fatal({ err: (err as Error).stack ?? String(err) }, 'shutdown failed');
        process.exit(1);
      });
    } else if (now - firstSignalAt > 1000) {
      // Ctrl-C sends SIGINT to the supervisor and the worker at once (and the supervisor
      // forwards it): only a second request well after the first cuts the drain short.
      logger.warn('second stop request; canceling running tasks now');
      worker.cancelNow('delegate shutting down');
    }
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if (process.send) {
    process.on('message', (m) => {
      // a drain ends the process like SIGTERM does
      if ((m as { type?: unknown } | null)?.type === 'drain') stop('supervisor asked to drain');
      else worker.handleSupervisorMessage(m);
    });
    // The supervisor went away: nobody would restart or upgrade this worker any more.
    process.on('disconnect', () => stop('supervisor gone'));
  }
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err: (err as Error)?.stack ?? String(err) }, 'unhandled rejection');
    process.exit(1);
  });
  await worker.start();
}

