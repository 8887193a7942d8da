/** The agent queue's seams: what the engine hands in and what it hears back. */
import type { TaskFailure, TaskKind, TaskSpec } from '@ferry/shared';

export interface TaskInput {
  /** the engine's step run id doubles as the task id */
  id: string;
  accountId: string;
  executionId: string | null;
  kind: TaskKind;
  spec: TaskSpec;
  env: Record<string, string>;
  /** names of the account's secrets the task receives (and the delegate masks) */
  secretNames: string[];
  /** tags every eligible delegate must carry */
  selectors: string[];
  /** capabilities required; defaults to [kind] */
  capabilities?: string[];
  priority?: number;
  timeoutMs?: number | null;
  /** waiting for an eligible delegate longer than this fails the task NoEligibleDelegate; default 1h */
  queueTimeoutMs?: number;
}

export interface TaskOutcome {
  taskId: string;
  executionId: string | null;
  status: 'Succeeded' | 'Failed' | 'Canceled';
  exitCode: number | null;
  error?: TaskFailure;
  outputs: Record<string, string>;
  startedAt: number | null;
  finishedAt: number;
  delegateId: string | null;
  delegateVersion: string | null;
  data?: unknown;
}

export interface TaskListener {
  /** the delegate accepted the task: it runs */
  onTaskStarted(e: { taskId: string; executionId: string | null; delegateId: string; delegateName: string; at: number }): void;
  /** the task ended for good (result stored, or failed by the queue: DelegateLost, NoEligibleDelegate, Canceled) */
  onTaskFinished(o: TaskOutcome): void;
}

export interface QueueInfo {
  reason: string;
  position: number;
}

/** A connected delegate as the scheduler sees it (the gateway owns the session). */
export interface DispatchTarget {
  readonly delegateId: string;
  readonly accountId: string;
  readonly name: string;
  readonly version: string;
  readonly tags: ReadonlySet<string>;
  readonly capabilities: ReadonlySet<string>;
  readonly capacity: number;
  /** no new tasks (probation, draining, closing) */
  readonly accepting: boolean;
  send(frame: import('@ferry/shared').ServerFrame): boolean;
  /** writes the frames held for this tick now (a lone assignment someone waits for) */
  flush?(): void;
}
