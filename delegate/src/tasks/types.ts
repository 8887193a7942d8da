import type { Logger } from 'pino';
import type { Masker, TaskAssign, TaskFailure, TaskKind, TaskSpec } from '@ferry/shared';
import type { ProcessInfo } from '../spool/records.js';
import type { LogSink } from './log-sink.js';

/** Why a task's signal was aborted. */
export type AbortCause =
  | { kind: 'cancel'; reason: string }
  | { kind: 'timeout'; timeoutMs: number };

export interface TaskContext<S extends TaskSpec = TaskSpec> {
  readonly assign: TaskAssign;
  readonly spec: S;
  /** aborted on cancel or timeout; `signal.reason` is an AbortCause */
  readonly signal: AbortSignal;
  readonly log: LogSink;
  readonly masker: Masker;
  /** a directory reserved for this task attempt (created by handlers that need it) */
  readonly workDir: string;
  /** SIGTERM → SIGKILL grace for process groups */
  readonly killGraceMs: number;
  readonly logger: Logger;
  readonly startedAt: number;
  /** a handler that starts a process group reports it, so a restarted worker can kill an orphan */
  onProcess(info: ProcessInfo): void;
}

export interface TaskOutcome {
  status: 'Succeeded' | 'Failed' | 'Canceled';
  exitCode: number | null;
  error?: TaskFailure;
  outputs?: Record<string, string>;
  data?: unknown;
}

export interface TaskHandler<S extends TaskSpec = TaskSpec> {
  readonly kind: TaskKind;
  run(ctx: TaskContext<S>): Promise<TaskOutcome>;
  /** a trivial self-test; a capability whose check throws is not announced */
  selfCheck(): Promise<void>;
}

export const failed = (kind: TaskFailure['kind'], message: string, extra: Partial<TaskOutcome> = {}): TaskOutcome => ({
  status: 'Failed',
  exitCode: null,
  error: { kind, message: message.slice(0, 8192), retryable: kind === 'Timeout' || kind === 'DelegateLost' },
  ...extra,
});

export const succeeded = (extra: Partial<TaskOutcome> = {}): TaskOutcome => ({ status: 'Succeeded', exitCode: null, ...extra });

/** Sleeps, resolving early (false) when the signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
