/**
 * One worker process started by the supervisor: a given entry file (the installed
 * version's worker), the supervisor's own flags and environment plus
 * FERRY_DELEGATE_VERSION, stdio inherited, and an IPC channel.
 */
import { EventEmitter } from 'node:events';
import { spawn, type ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import { isWorkerMessage, type SupervisorToWorker, type WorkerToSupervisor } from '../ipc.js';

export interface WorkerHandleOptions {
  /** path of the worker's entry file (dist/worker-main.js, or a bundled worker) */
  entry: string;
  /** flags as the supervisor got them (without node and script) */
  args: readonly string[];
  env: NodeJS.ProcessEnv;
  /** becomes FERRY_DELEGATE_VERSION in the worker */
  version?: string;
  /** more environment for this worker only (e.g. FERRY_PROBATION=1) */
  extraEnv?: Record<string, string>;
}

export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** the exit code the supervisor would hand on for this exit */
  exitCode: number;
  ranMs: number;
}

/** Events: 'message' (WorkerToSupervisor), 'exit' (WorkerExit). */
export class WorkerHandle extends EventEmitter {
  private child: ChildProcess | null = null;
  private startedAt = 0;
  readonly exited: Promise<WorkerExit>;
  private resolveExit!: (e: WorkerExit) => void;
  /** the latest 'ready' the worker reported */
  ready: Extract<WorkerToSupervisor, { type: 'ready' }> | null = null;
  sessionId: string | null = null;

  constructor(readonly opts: WorkerHandleOptions) {
    super();
    this.exited = new Promise((r) => { this.resolveExit = r; });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  start(): void {
    if (this.child) throw new Error('worker already started');
    const env: NodeJS.ProcessEnv = { ...this.opts.env, ...this.opts.extraEnv };
    if (this.opts.version) env.FERRY_DELEGATE_VERSION = this.opts.version;
    this.startedAt = Date.now();
    const child = spawn(process.execPath, [...process.execArgv.filter((a) => !a.startsWith('--inspect')), this.opts.entry, ...this.opts.args], {
      env,
      stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
      serialization: 'json',
    });
    this.child = child;
    child.on('message', (m: unknown) => {
      if (!isWorkerMessage(m)) return;
      if (m.type === 'ready') this.ready = m;
      if (m.type === 'connected') this.sessionId = m.sessionId;
      this.emit('message', m);
    });
    let done = false;
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (done) return;
      done = true;
      const signo = signal ? (constants.signals as Record<string, number>)[signal] ?? 0 : 0;
      const e: WorkerExit = { code, signal, exitCode: code ?? 128 + signo, ranMs: Date.now() - this.startedAt };
      this.resolveExit(e);
      this.emit('exit', e);
    };
    child.on('exit', onExit);
    child.on('error', () => onExit(127, null));
  }

  send(m: SupervisorToWorker): boolean {
    if (!this.child?.connected) return false;
    try {
      return this.child.send(m);
    } catch {
      return false;
    }
  }

  signal(sig: NodeJS.Signals): void {
    try {
      this.child?.kill(sig);
    } catch { /* gone already */ }
  }

  /** Asks the worker to drain and exit; SIGKILL after timeoutMs. */
  async stop(timeoutMs: number, sig: NodeJS.Signals = 'SIGTERM'): Promise<WorkerExit> {
    if (this.running) this.signal(sig);
    const timer = setTimeout(() => this.signal('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}
