/**
 * `ferry-delegate`: a small supervisor around the worker process. It starts the worker,
 * forwards SIGTERM/SIGINT, restarts a crashing worker with backoff, and exits with the
 * worker's code once a stop was requested. Versions on disk, downloads and probation
 * plug in around `Supervisor.startWorker` and `Supervisor.onUpgrade`.
 */
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { loadConfig, ConfigError, USAGE, type DelegateConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { Backoff } from '../connection/backoff.js';
import { delegateVersion } from '../version.js';
import { EXIT_CONFIG } from '../worker.js';
import type { WorkerToSupervisor } from '../ipc.js';
import { WorkerHandle, type WorkerExit } from './worker-handle.js';

/** The worker entry of this package (dist/worker-main.js beside dist/supervisor/). */
export const defaultWorkerEntry = (): string => fileURLToPath(new URL('../worker-main.js', import.meta.url));

/** A worker that ran this long before crashing restarts without delay growth. */
const STABLE_RUN_MS = 60_000;

export interface SupervisorOptions {
  config: DelegateConfig;
  args: readonly string[];
  env: NodeJS.ProcessEnv;
  logger: Logger;
  entry?: string;
  version?: string;
}

export class Supervisor {
  protected worker: WorkerHandle | null = null;
  private stopRequested = false;
  private readonly backoff: Backoff;
  private finish!: (code: number) => void;
  readonly done: Promise<number>;
  private restartTimer: NodeJS.Timeout | null = null;

  constructor(protected readonly opts: SupervisorOptions) {
    this.backoff = new Backoff({ baseMs: 1000, maxMs: 60_000, floorMs: 500 });
    this.done = new Promise((r) => { this.finish = r; });
  }

  /** Starts the first worker; resolves with the exit code the process should end with. */
  run(): Promise<number> {
    this.startWorker();
    return this.done;
  }

  /** Starts the current version's worker. */
  protected startWorker(): WorkerHandle {
    const w = new WorkerHandle({
      entry: this.opts.entry ?? defaultWorkerEntry(),
      args: this.opts.args,
      env: this.opts.env,
      version: this.opts.version ?? delegateVersion(this.opts.env),
    });
    this.worker = w;
    w.on('message', (m: WorkerToSupervisor) => this.onWorkerMessage(w, m));
    w.on('exit', (e: WorkerExit) => this.onWorkerExit(w, e));
    w.start();
    this.opts.logger.info({ workerPid: w.pid, entry: w.opts.entry, version: w.opts.version }, 'worker started');
    return w;
  }

  protected onWorkerMessage(w: WorkerHandle, m: WorkerToSupervisor): void {
    const log = this.opts.logger;
    switch (m.type) {
      case 'connected':
        log.debug({ sessionId: m.sessionId }, 'worker connected');
        break;
      case 'ready':
        log.info({ capabilities: m.capabilities, failed: m.failed }, 'worker ready');
        break;
      case 'upgrade':
        this.onUpgrade(w, m);
        break;
    }
  }

  /** The server asks for another version. This minimal supervisor cannot switch yet. */
  protected onUpgrade(w: WorkerHandle, m: Extract<WorkerToSupervisor, { type: 'upgrade' }>): void {
    this.opts.logger.warn({ version: m.version }, 'upgrade requested, but this supervisor does not install versions yet');
    w.send({ type: 'upgrade.status', version: m.version, state: 'failed', error: 'this delegate supervisor does not support upgrades yet' });
  }

  protected onWorkerExit(w: WorkerHandle, e: WorkerExit): void {
    if (w !== this.worker) return;
    this.worker = null;
    const log = this.opts.logger;
    if (this.stopRequested) {
      log.info({ code: e.code, signal: e.signal }, 'worker stopped');
      this.finish(e.exitCode);
      return;
    }
    if (e.code === EXIT_CONFIG) {
      log.error('worker refused its configuration; not restarting');
      this.finish(EXIT_CONFIG);
      return;
    }
    if (e.ranMs >= STABLE_RUN_MS) this.backoff.reset();
    const delayMs = this.backoff.next();
    log.error({ code: e.code, signal: e.signal, ranMs: e.ranMs, delayMs }, `worker exited unexpectedly; restarting in ${delayMs}ms`);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (!this.stopRequested) this.startWorker();
    }, delayMs);
  }

  /** SIGTERM/SIGINT: forwarded; the worker drains and exits, and so do we. */
  requestStop(sig: NodeJS.Signals): void {
    const first = !this.stopRequested;
    this.stopRequested = true;
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
    }
    if (this.worker?.running) {
      if (first) this.opts.logger.info({ signal: sig }, 'stopping: the worker drains');
      this.worker.signal(sig);
    } else if (!this.worker) {
      this.finish(0);
    }
  }

  /** Asks the worker to drain over IPC (used by upgrades). */
  drainWorker(): boolean {
    return this.worker?.send({ type: 'drain' }) ?? false;
  }
}

export async function main(argv: string[]): Promise<void> {
  const args = argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  let config: DelegateConfig;
  try {
    config = loadConfig(argv, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`error: CONFIG: ${err.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel, { component: 'delegate-supervisor' });
  const sup = new Supervisor({ config, args, env: process.env, logger });
  process.on('SIGTERM', () => sup.requestStop('SIGTERM'));
  process.on('SIGINT', () => sup.requestStop('SIGINT'));
  process.on('SIGHUP', () => sup.requestStop('SIGTERM'));
  const code = await sup.run();
  process.exit(code);
}
