/**
 * `ferry-delegate`: a small supervisor around the worker process. It runs the worker of
 * the current version (versions.ts: `$STATE_DIR/current`, else the worker it was
 * installed with), forwards SIGTERM/SIGINT, restarts a crashing worker with backoff,
 * and exits with the worker's code once a stop was requested. It never needs the control
 * plane to start.
 *
 * Upgrades (CONTRACT §8): the worker forwards the server's `upgrade` frame over IPC, and
 * the supervisor then
 *   1. reuses the version's files when they are on disk and verify (a rollback), else
 *      reports `downloading`, fetches the bundle with the delegate token and checks the
 *      worker's sha256 against the offer and the manifest (mismatch: refused, `failed`);
 *   2. reports `draining` and asks the running worker to drain (it takes no new task,
 *      lets running ones finish up to its drain timeout; the spool stays in the state
 *      dir, so anything unacknowledged is sent again by the next worker);
 *   3. starts the new worker on probation (FERRY_PROBATION=1: hello.probation, capacity
 *      0) and waits for its `ready` (connected, self-checks passed, no capability the old
 *      version had is missing) within FERRY_PROBATION_TIMEOUT (default 60s);
 *   4. passed: tells it over IPC that probation ended (it reconnects as a normal session),
 *      `current` := V, keeps the last three versions, reports `succeeded`;
 *      failed (crash, timeout, self-check): kills it, starts the old version at once,
 *      records V as failed (sent by every worker in hello.failedVersions), reports
 *      `failed` with the reason. A failed version is refused until another one is offered.
 */
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { UpgradeStatus } from '@ferry/shared';
import { loadConfig, ConfigError, USAGE, type DelegateConfig } from '../config.js';
import { createLogger } from '../logger.js';
import { Backoff } from '../connection/backoff.js';
import { delegateVersion } from '../version.js';
import type { WorkerToSupervisor } from '../ipc.js';
import { WorkerHandle, type WorkerExit } from './worker-handle.js';
import { VersionStore, type InstalledVersion } from './versions.js';
import { fetchBundle, UpgradeRefused } from './download.js';

/** The worker entry of this package (dist/worker-main.js beside dist/supervisor/). */
export const defaultWorkerEntry = (): string => fileURLToPath(new URL('../worker-main.js', import.meta.url));

/** The worker's exit code for bad settings (worker.ts EXIT_CONFIG; not imported: the supervisor stays small). */
const EXIT_CONFIG = 2;
/** A worker that ran this long before crashing restarts without delay growth. */
const STABLE_RUN_MS = 60_000;
/** After `probation.end`, how long the worker has to come back as a normal session. */
const RECONNECT_AFTER_PROBATION_MS = 15_000;
/** Download attempts for errors that may pass (network, 5xx). */
const DOWNLOAD_TRIES = 3;

export interface SupervisorOptions {
  config: DelegateConfig;
  args: readonly string[];
  env: NodeJS.ProcessEnv;
  logger: Logger;
  /** the built-in worker (default dist/worker-main.js) */
  entry?: string;
  /** the built-in worker's version (default the package version) */
  version?: string;
}

export type UpgradeOffer = Omit<Extract<WorkerToSupervisor, { type: 'upgrade' }>, 'type'>;
type StatusMessage = { type: 'upgrade.status'; version: string; state: UpgradeStatus['state']; error?: string };

type ProbationResult = { ok: true } | { ok: false; reason: string } | { ok: false; stopped: true; reason: string };

export class Supervisor {
  protected worker: WorkerHandle | null = null;
  /** the version this.worker runs (or the one to restart) */
  protected running!: InstalledVersion;
  readonly versions: VersionStore;
  private stopRequested = false;
  private readonly backoff: Backoff;
  private finish!: (code: number) => void;
  readonly done: Promise<number>;
  private restartTimer: NodeJS.Timeout | null = null;
  /** after an upgrade: the version it came from, while the new one's crashes count */
  private watch: { from: InstalledVersion; until: number; exits: number } | null = null;
  /** a worker whose exit the upgrade flow handles (no restart) */
  private flowOwned: WorkerHandle | null = null;
  private upgrading: UpgradeOffer | null = null;
  private pendingOffer: UpgradeOffer | null = null;
  private readonly stopController = new AbortController();
  /** upgrade.status messages waiting for a connected worker to carry them */
  private statusQueue: StatusMessage[] = [];
  /** the upgrade flow, for tests */
  upgradeDone: Promise<void> = Promise.resolve();

  constructor(protected readonly opts: SupervisorOptions) {
    this.backoff = new Backoff({ baseMs: 1000, maxMs: 60_000, floorMs: 500 });
    this.done = new Promise((r) => { this.finish = r; });
    this.versions = new VersionStore(opts.config.stateDir, {
      version: opts.version ?? delegateVersion(opts.env),
      entry: opts.entry ?? defaultWorkerEntry(),
    });
  }

  get currentVersion(): string {
    return this.running?.version ?? '';
  }

  /** Starts the current version's worker; resolves with the exit code the process should end with. */
  async run(): Promise<number> {
    const log = this.opts.logger;
    try {
      this.versions.init();
      const { installed, problem } = await this.versions.resolveCurrent();
      if (problem) log.error({ problem }, `cannot run the current version; running the built-in worker ${installed.version}`);
      this.running = installed;
    } catch (err) {
      log.error({ err: (err as Error).message }, 'cannot read the versions in the state dir; running the built-in worker');
      this.running = this.versions.builtinVersion();
    }
    if (!this.stopRequested) this.startWorker();
    else this.finish(0);
    return this.done;
  }

  /** Starts a worker of `v` (default: the current version). */
  protected startWorker(v: InstalledVersion = this.running, extraEnv: Record<string, string> = {}): WorkerHandle {
    let failed: string[] = [];
    try {
      failed = this.versions.failedVersions();
    } catch { /* unreadable: none */ }
    const w = new WorkerHandle({
      entry: v.entry,
      args: this.opts.args,
      env: this.opts.env,
      version: v.version,
      extraEnv: { FERRY_FAILED_VERSIONS: failed.join(','), ...extraEnv },
    });
    this.worker = w;
    w.on('message', (m: WorkerToSupervisor) => this.onWorkerMessage(w, m));
    w.on('exit', (e: WorkerExit) => this.onWorkerExit(w, e));
    w.start();
    this.opts.logger.info({ workerPid: w.pid, entry: w.opts.entry, version: v.version, probation: extraEnv.FERRY_PROBATION === '1' }, 'worker started');
    return w;
  }

  protected onWorkerMessage(w: WorkerHandle, m: WorkerToSupervisor): void {
    const log = this.opts.logger;
    switch (m.type) {
      case 'connected':
        log.debug({ sessionId: m.sessionId }, 'worker connected');
        if (w === this.worker) this.flushStatus();
        break;
      case 'ready':
        log.info({ capabilities: m.capabilities, failed: m.failed }, 'worker ready');
        break;
      case 'upgrade':
        this.onUpgrade(w, m);
        break;
    }
  }

  /** The server asks for another version. One upgrade at a time; the latest other offer waits. */
  protected onUpgrade(_w: WorkerHandle, m: Extract<WorkerToSupervisor, { type: 'upgrade' }>): void {
    this.offer({ version: m.version, sha256: m.sha256, url: m.url });
  }

  offer(o: UpgradeOffer): void {
    if (this.stopRequested) return;
    if (this.upgrading) {
      if (o.version !== this.upgrading.version) this.pendingOffer = o;
      return;
    }
    this.upgrading = o;
    this.upgradeDone = this.upgrade(o)
      .catch((err: unknown) => this.opts.logger.error({ err: (err as Error).stack ?? String(err), version: o.version }, 'upgrade flow failed'))
      .finally(() => {
        this.upgrading = null;
        this.flowOwned = null;
        const next = this.pendingOffer;
        this.pendingOffer = null;
        if (next && !this.stopRequested && next.version !== this.running.version) this.offer(next);
      });
  }

  /** Sends an upgrade.status through the worker (queued until a worker is connected). */
  protected report(version: string, state: UpgradeStatus['state'], error?: string): void {
    this.statusQueue.push({ type: 'upgrade.status', version, state, ...(error !== undefined ? { error: error.slice(0, 8000) } : {}) });
    this.flushStatus();
  }

  private flushStatus(): void {
    const w = this.worker;
    // a worker that connected once listens on IPC; it holds the frame until it is welcomed
    if (!w || !w.sessionId || !w.running) return;
    while (this.statusQueue.length > 0) {
      if (!w.send(this.statusQueue[0]!)) return;
      this.statusQueue.shift();
    }
  }

  private async upgrade(o: UpgradeOffer): Promise<void> {
    const log = this.opts.logger.child({ upgrade: o.version });
    const cfg = this.opts.config;
    const from = this.running;
    if (o.version === from.version) {
      this.report(o.version, 'succeeded');
      return;
    }
    const prior = this.versions.failed().find((f) => f.version === o.version);
    if (prior) {
      log.warn({ reason: prior.reason }, 'this version failed here before; refused until another version is offered');
      this.report(o.version, 'failed', `version ${o.version} failed on this delegate before (${prior.reason}); not retried until the ring's target changes`);
      return;
    }
    // another target than the failed ones: they may be tried again once they are offered again
    this.versions.clearFailed();
    log.info({ from: from.version, to: o.version }, 'upgrade requested');

    // 1. the files: on disk already (verified), or downloaded and verified
    let target: InstalledVersion | null = null;
    try {
      target = await this.versions.verified(o.version, o.sha256);
      log.info('version already on disk and verified; no download');
    } catch { /* not there, or not that build */ }
    if (!target) {
      this.report(o.version, 'downloading');
      let lastErr: Error | null = null;
      for (let attempt = 1; attempt <= DOWNLOAD_TRIES && !target; attempt++) {
        if (this.stopRequested) return;
        const tmp = this.versions.tempDir();
        try {
          const b = await fetchBundle({
            baseUrl: cfg.url, path: o.url, token: cfg.token, version: o.version, sha256: o.sha256, dir: tmp, signal: this.stopController.signal,
            onDownloaded: () => this.report(o.version, 'verifying'),
          });
          this.versions.install(o.version, b.dir);
          target = await this.versions.verified(o.version, o.sha256);
          log.info({ bytes: b.bytes }, 'bundle downloaded and verified');
        } catch (err) {
          lastErr = err as Error;
          if (err instanceof UpgradeRefused || this.stopRequested) break;
          log.warn({ err: lastErr.message, attempt }, 'download failed');
          if (attempt < DOWNLOAD_TRIES) await sleep(1000 * 3 ** (attempt - 1), this.stopController.signal);
        } finally {
          rmSync(tmp, { recursive: true, force: true });
        }
      }
      if (this.stopRequested) return;
      if (!target) {
        const reason = `refused ${o.version}: ${lastErr?.message ?? 'download failed'}; still running ${from.version}`;
        log.error({ err: lastErr?.message }, 'upgrade refused');
        this.versions.addFailed(o.version, lastErr?.message ?? 'download failed');
        this.report(o.version, 'failed', reason);
        return;
      }
    }

    // 2. drain the running worker
    this.report(o.version, 'draining');
    const old = this.worker;
    const baseline = old?.ready ? new Set(old.ready.capabilities) : null;
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
    }
    if (old) {
      this.flowOwned = old;
      if (old.running) {
        log.info({ workerPid: old.pid }, 'draining the running worker');
        if (!old.send({ type: 'drain' })) old.signal('SIGTERM');
        const bound = setTimeout(() => {
          log.error('the worker did not drain in time; killing it');
          old.signal('SIGKILL');
        }, cfg.drainTimeoutMs + cfg.killGraceMs + 20_000);
        await old.exited;
        clearTimeout(bound);
      }
      if (this.worker === old) this.worker = null;
      this.flowOwned = null;
    }
    if (this.stopRequested) return;

    // 3. probation
    const cand = this.startWorker(target, { FERRY_PROBATION: '1', FERRY_DELEGATE_PROBATION: '1' });
    this.flowOwned = cand;
    const verdict = await this.probation(cand, baseline);
    if (this.stopRequested) return;

    if (verdict.ok) {
      // 4a. switch
      const back = await this.endProbation(cand);
      if (this.stopRequested) return;
      this.running = target;
      if (!back) {
        log.warn('the worker did not come back as a normal session after probation; restarting it');
        await cand.stop(10_000);
        if (this.worker === cand) this.worker = null;
        if (this.stopRequested) return;
        this.startWorker(target);
      }
      this.flowOwned = null;
      this.versions.setCurrent(target.version);
      this.watch = { from, until: Date.now() + this.opts.config.crashLoopWindowMs, exits: 0 };
      const removed = this.versions.prune();
      if (removed.length > 0) log.info({ removed }, 'old versions removed');
      this.backoff.reset();
      log.info({ from: from.version, to: target.version }, 'upgrade succeeded');
      this.report(target.version, 'succeeded');
      return;
    }

    // 4b. back to the old version at once
    const reason = verdict.reason;
    log.error({ reason, back: from.version }, 'probation failed; rolling back');
    if (cand.running) {
      cand.signal('SIGKILL');
      await cand.exited;
    }
    if (this.worker === cand) this.worker = null;
    this.flowOwned = null;
    this.versions.addFailed(o.version, `probation failed: ${reason}`);
    this.running = from;
    if (this.stopRequested) return;
    this.startWorker(from);
    this.report(o.version, 'failed', `probation failed: ${reason}; rolled back to ${from.version}`);
  }

  /** Waits for the candidate's `ready` within the probation limit. */
  private probation(cand: WorkerHandle, baseline: ReadonlySet<string> | null): Promise<ProbationResult> {
    const limit = this.opts.config.probationTimeoutMs;
    return new Promise((resolve) => {
      let settled = false;
      const done = (r: ProbationResult): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        cand.off('message', onMessage);
        this.stopController.signal.removeEventListener('abort', onStop);
        resolve(r);
      };
      const onMessage = (m: WorkerToSupervisor): void => {
        if (m.type === 'connected') {
          this.report(cand.opts.version!, 'probation');
        } else if (m.type === 'ready') {
          const failed = m.failed.filter((f) => !baseline || baseline.has(f.capability));
          const missing = baseline ? [...baseline].filter((c) => !m.capabilities.includes(c) && !failed.some((f) => f.capability === c)) : [];
          if (failed.length > 0 || missing.length > 0) {
            const parts = failed.map((f) => `${f.capability}: ${f.error}`).concat(missing.map((c) => `${c}: not announced`));
            done({ ok: false, reason: `capability self-checks failed (${parts.join('; ')})` });
          } else {
            done({ ok: true });
          }
        }
      };
      const onStop = (): void => done({ ok: false, stopped: true, reason: 'stopping' });
      cand.on('message', onMessage);
      this.stopController.signal.addEventListener('abort', onStop);
      void cand.exited.then((e) => done({ ok: false, reason: `the worker exited during probation (${e.signal ? `signal ${e.signal}` : `exit code ${e.code}`}, after ${e.ranMs}ms)` }));
      const timer = setTimeout(() => done({ ok: false, reason: `not connected with its self-checks passed within ${Math.round(limit / 1000)}s` }), limit);
    });
  }

  /** Ends probation over IPC; resolves true once the worker is back as a normal session. */
  private endProbation(cand: WorkerHandle): Promise<boolean> {
    return new Promise((resolve) => {
      let settled = false;
      const done = (ok: boolean): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        cand.off('message', onMessage);
        resolve(ok);
      };
      const onMessage = (m: WorkerToSupervisor): void => {
        if (m.type === 'connected') done(true);
      };
      cand.on('message', onMessage);
      void cand.exited.then(() => done(false));
      const timer = setTimeout(() => done(false), RECONNECT_AFTER_PROBATION_MS);
      if (!cand.send({ type: 'probation.end' })) done(false);
    });
  }

  protected onWorkerExit(w: WorkerHandle, e: WorkerExit): void {
    if (w !== this.worker) return;
    const log = this.opts.logger;
    if (this.stopRequested) {
      this.worker = null;
      log.info({ code: e.code, signal: e.signal }, 'worker stopped');
      this.finish(e.exitCode);
      return;
    }
    // the upgrade flow waits for this exit itself
    if (w === this.flowOwned) return;
    this.worker = null;
    if (e.code === EXIT_CONFIG) {
      log.error('worker refused its configuration; not restarting');
      this.finish(EXIT_CONFIG);
      return;
    }
    if (this.crashLoopRollback(e)) return;
    if (e.ranMs >= STABLE_RUN_MS) this.backoff.reset();
    const delayMs = this.backoff.next();
    log.error({ code: e.code, signal: e.signal, ranMs: e.ranMs, delayMs, version: this.running.version }, `worker exited unexpectedly; restarting in ${delayMs}ms`);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (!this.stopRequested && !this.worker) this.startWorker();
    }, delayMs);
  }

  /**
   * A version that passed probation but keeps crashing: after crashLoopExits unexpected
   * exits within crashLoopWindowMs of the upgrade, the delegate goes back to the version it
   * came from at once, marks the new one failed (not taken again) and reports it.
   */
  private crashLoopRollback(e: WorkerExit): boolean {
    const w = this.watch;
    if (!w) return false;
    if (Date.now() > w.until) {
      this.watch = null;
      return false;
    }
    w.exits += 1;
    if (w.exits < this.opts.config.crashLoopExits) return false;
    this.watch = null;
    const bad = this.running.version;
    const reason = `crash loop after probation: the worker exited ${w.exits} times (last: ${e.signal ? `signal ${e.signal}` : `exit code ${e.code}`} after ${e.ranMs}ms)`;
    this.opts.logger.error({ version: bad, back: w.from.version, exits: w.exits }, `${reason}; rolling back`);
    this.versions.addFailed(bad, reason);
    this.versions.setCurrent(w.from.version);
    this.running = w.from;
    this.backoff.reset();
    this.startWorker(w.from);
    this.report(bad, 'failed', `${reason}; rolled back to ${w.from.version}`);
    return true;
  }

  /** SIGTERM/SIGINT: forwarded; the worker drains and exits, and so do we. */
  requestStop(sig: NodeJS.Signals): void {
    const first = !this.stopRequested;
    this.stopRequested = true;
    if (first) this.stopController.abort();
    if (this.restartTimer) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
    }
    if (this.worker?.running) {
      if (first) this.opts.logger.info({ signal: sig }, 'stopping: the worker drains');
      this.worker.signal(sig);
    } else {
      this.worker = null;
      this.finish(0);
    }
  }

  /** Asks the worker to drain over IPC. */
  drainWorker(): boolean {
    return this.worker?.send({ type: 'drain' }) ?? false;
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
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
