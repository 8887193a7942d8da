/**
 * The state model as data (CONTRACT §6). Each table lists, for a state, the states it may
 * move to; every change of state goes through one function below that checks the table
 * and records the change. A reviewer reads the tables, not the machine.
 *
 * A deployment attempt is a <status, operationStatus> pair, written "Status/Operation".
 */
import {
  ATTEMPT_PAIRS, type AttemptStatus, type ExecutionStatus, type OperationStatus, type StageStatus, type StepStatus,
} from '@ferry/shared';

/** The pairs of CONTRACT §6 (ATTEMPT_PAIRS in @ferry/shared), as one string each. */
export type AttemptPair =
  | 'NotDeployed/Queued' | 'NotDeployed/Scheduled' | 'NotDeployed/Pending' | 'NotDeployed/Approved'
  | 'NotDeployed/Rejected' | 'NotDeployed/Deferred' | 'NotDeployed/QueuedForAgent' | 'NotDeployed/QueuedForPipeline'
  | 'NotDeployed/Canceled'
  | 'InProgress/PhaseInProgress' | 'InProgress/ManualInterventionPending' | 'InProgress/PhaseSucceeded'
  | 'InProgress/Pending' | 'InProgress/QueuedForAgent' | 'InProgress/Cancelling' | 'InProgress/EvaluatingGates'
  | 'InProgress/GatesFailed'
  | 'Succeeded/Approved'
  | 'PartiallySucceeded/PhasePartiallySucceeded'
  | 'Failed/PhaseFailed' | 'Failed/Canceled' | 'Failed/Rejected' | 'Failed/GatesFailed';

export const pairOf = (status: AttemptStatus, operationStatus: OperationStatus): AttemptPair => `${status}/${operationStatus}` as AttemptPair;
export function splitPair(p: AttemptPair): { status: AttemptStatus; operationStatus: OperationStatus } {
  const [status, operationStatus] = p.split('/') as [AttemptStatus, OperationStatus];
  return { status, operationStatus };
}

// ---- deployment attempts ------------------------------------------------------------

/** Waiting before any work: the account's limit, a schedule, the environment's concurrency. */
const BEFORE_WORK = ['NotDeployed/QueuedForPipeline', 'NotDeployed/Scheduled', 'NotDeployed/Queued'] as const;
/** Work under way while no delegate step has run yet (approvals, the first task queued). */
const NOT_DEPLOYED_WORK = ['NotDeployed/Pending', 'NotDeployed/Deferred', 'NotDeployed/Approved', 'NotDeployed/QueuedForAgent'] as const;
/** From the moment a delegate step ran or failed. `Cancelling` only ends the attempt. */
const IN_PROGRESS = [
  'InProgress/PhaseInProgress', 'InProgress/QueuedForAgent', 'InProgress/Pending', 'InProgress/EvaluatingGates',
  'InProgress/GatesFailed', 'InProgress/ManualInterventionPending', 'InProgress/PhaseSucceeded', 'InProgress/Cancelling',
] as const;

/** Pairs an attempt may be created in. */
export const ATTEMPT_INITIAL: readonly AttemptPair[] = [...BEFORE_WORK, ...NOT_DEPLOYED_WORK, 'InProgress/PhaseInProgress'];

const after = <T extends string>(list: readonly T[], from: T): T[] => list.slice(list.indexOf(from) + 1);

export const ATTEMPT_TRANSITIONS: Readonly<Record<AttemptPair, readonly AttemptPair[]>> = {
  // before work: only forwards (account → schedule → concurrency → work), or cancelled
  'NotDeployed/QueuedForPipeline': [...after(BEFORE_WORK, 'NotDeployed/QueuedForPipeline'), ...NOT_DEPLOYED_WORK, 'InProgress/PhaseInProgress', 'NotDeployed/Canceled'],
  'NotDeployed/Scheduled': [...after(BEFORE_WORK, 'NotDeployed/Scheduled'), ...NOT_DEPLOYED_WORK, 'InProgress/PhaseInProgress', 'NotDeployed/Canceled'],
  // superseded (deployLatestOnly) or aborted while waiting behind another deployment
  'NotDeployed/Queued': [...NOT_DEPLOYED_WORK, 'InProgress/PhaseInProgress', 'NotDeployed/Canceled'],
  // an approval waits; approved (perhaps deferred) or rejected or expired (<NotDeployed, Rejected>)
  'NotDeployed/Pending': ['NotDeployed/Approved', 'NotDeployed/Deferred', 'NotDeployed/QueuedForAgent', ...IN_PROGRESS.filter((p) => p !== 'InProgress/Cancelling'), 'Succeeded/Approved', 'NotDeployed/Rejected', 'NotDeployed/Canceled'],
  'NotDeployed/Deferred': ['NotDeployed/Approved', 'NotDeployed/Pending', 'NotDeployed/QueuedForAgent', ...IN_PROGRESS.filter((p) => p !== 'InProgress/Cancelling'), 'Succeeded/Approved', 'NotDeployed/Canceled'],
  'NotDeployed/Approved': ['NotDeployed/Pending', 'NotDeployed/Deferred', 'NotDeployed/QueuedForAgent', ...IN_PROGRESS.filter((p) => p !== 'InProgress/Cancelling'), 'Succeeded/Approved', 'NotDeployed/Rejected', 'NotDeployed/Canceled'],
  // the first delegate step waits for an agent; it starts or fails (→ InProgress)
  'NotDeployed/QueuedForAgent': ['NotDeployed/Pending', 'NotDeployed/Approved', ...IN_PROGRESS.filter((p) => p !== 'InProgress/Cancelling'), 'NotDeployed/Rejected', 'NotDeployed/Canceled'],

  'InProgress/PhaseInProgress': [...IN_PROGRESS.filter((p) => p !== 'InProgress/PhaseInProgress'), 'Succeeded/Approved', 'PartiallySucceeded/PhasePartiallySucceeded', 'Failed/PhaseFailed', 'Failed/Rejected'],
  // a later step that never got a delegate (NoEligibleDelegate) may end the attempt
  'InProgress/QueuedForAgent': [...IN_PROGRESS.filter((p) => p !== 'InProgress/QueuedForAgent'), 'PartiallySucceeded/PhasePartiallySucceeded', 'Failed/PhaseFailed'],
  // an approval step after a delegate step: approved as the last step ends the attempt
  'InProgress/Pending': [...IN_PROGRESS.filter((p) => p !== 'InProgress/Pending'), 'Succeeded/Approved', 'PartiallySucceeded/PhasePartiallySucceeded', 'Failed/Rejected'],
  'InProgress/EvaluatingGates': IN_PROGRESS.filter((p) => p !== 'InProgress/EvaluatingGates'),
  // verification failed: a failure strategy or a rollback is under way, or it ends the attempt
  'InProgress/GatesFailed': [...IN_PROGRESS.filter((p) => p !== 'InProgress/GatesFailed'), 'Failed/GatesFailed'],
  // resolved: a retry or a rollback goes on working; `ignore` of the last step, or a timeout
  // without onTimeout, ends the attempt right there (no moment of PhaseInProgress between)
  'InProgress/ManualInterventionPending': [...IN_PROGRESS.filter((p) => p !== 'InProgress/ManualInterventionPending'), 'PartiallySucceeded/PhasePartiallySucceeded', 'Failed/PhaseFailed'],
  // between canary phases, or a timed pause
  'InProgress/PhaseSucceeded': [...IN_PROGRESS.filter((p) => p !== 'InProgress/PhaseSucceeded'), 'Succeeded/Approved', 'PartiallySucceeded/PhasePartiallySucceeded'],
  // an abort: running tasks are cancelled, alwaysRun steps still run, then it ends
  'InProgress/Cancelling': ['Failed/Canceled'],

  // terminal: a resume starts a new attempt, it never reopens one
  'NotDeployed/Rejected': [],
  'NotDeployed/Canceled': [],
  'Succeeded/Approved': [],
  'PartiallySucceeded/PhasePartiallySucceeded': [],
  'Failed/PhaseFailed': [],
  'Failed/Canceled': [],
  'Failed/Rejected': [],
  'Failed/GatesFailed': [],
};

export const TERMINAL_ATTEMPT: readonly AttemptPair[] = (Object.keys(ATTEMPT_TRANSITIONS) as AttemptPair[])
  .filter((p) => ATTEMPT_TRANSITIONS[p].length === 0);

export interface AttemptTransition {
  status: AttemptStatus;
  operationStatus: OperationStatus;
  at: number;
  reason: string;
}

/** What transitionAttempt needs of an attempt (the machine's AttemptState has more). */
export interface AttemptLike {
  status: AttemptStatus | null;
  operationStatus: OperationStatus | null;
  history: AttemptTransition[];
  finishedAt: number | null;
}

export class TransitionError extends Error {
  constructor(what: string, from: string, to: string, reason: string) {
    super(`${what}: ${from} → ${to} is not an allowed transition (${reason})`);
    this.name = 'TransitionError';
  }
}

/**
 * The one way an attempt changes state: checks the table (or, for a new attempt, the
 * initial pairs), records the change with its reason, stamps finishedAt when terminal.
 * Returns false when the attempt already is in `to`.
 */
export function transitionAttempt(attempt: AttemptLike, to: AttemptPair, reason: string, at: number): boolean {
  const { status, operationStatus } = splitPair(to);
  if (!ATTEMPT_PAIRS[status].includes(operationStatus)) throw new TransitionError('attempt', '?', to, 'not a pair of CONTRACT §6');
  if (attempt.status === null || attempt.operationStatus === null) {
    if (!ATTEMPT_INITIAL.includes(to)) throw new TransitionError('attempt', '(new)', to, reason);
  } else {
    const from = pairOf(attempt.status, attempt.operationStatus);
    if (from === to) return false;
    if (!ATTEMPT_TRANSITIONS[from].includes(to)) throw new TransitionError('attempt', from, to, reason);
  }
  attempt.status = status;
  attempt.operationStatus = operationStatus;
  attempt.history.push({ status, operationStatus, at, reason });
  if (TERMINAL_ATTEMPT.includes(to)) attempt.finishedAt = at;
  return true;
}

export const isTerminalAttempt = (a: { status: AttemptStatus | null; operationStatus: OperationStatus | null }): boolean =>
  a.status !== null && a.operationStatus !== null && TERMINAL_ATTEMPT.includes(pairOf(a.status, a.operationStatus));

// ---- stages -------------------------------------------------------------------------

export const STAGE_TRANSITIONS: Readonly<Record<StageStatus, readonly StageStatus[]>> = {
  NotStarted: ['Queued', 'Scheduled', 'InProgress', 'Skipped'],
  // the account's limit (QueuedForPipeline) or the environment's concurrency (Queued)
  Queued: ['Scheduled', 'InProgress', 'Canceled'],
  Scheduled: ['Queued', 'InProgress', 'Canceled'],
  InProgress: ['Succeeded', 'PartiallySucceeded', 'Failed', 'Canceled', 'Rejected', 'Expired'],
  // a resume puts the stage it starts from, and every later one, back to NotStarted
  Succeeded: ['NotStarted'],
  PartiallySucceeded: ['NotStarted'],
  Failed: ['NotStarted'],
  Canceled: ['NotStarted'],
  Rejected: ['NotStarted'],
  Expired: ['NotStarted'],
  Skipped: ['NotStarted'],
};

export interface StatusChange<S extends string> { status: S; at: number; reason: string }

export function transitionStage(stage: { id: string; status: StageStatus; history: StatusChange<StageStatus>[] }, to: StageStatus, reason: string, at: number): boolean {
  if (stage.status === to) return false;
  if (!STAGE_TRANSITIONS[stage.status].includes(to)) throw new TransitionError(`stage ${stage.id}`, stage.status, to, reason);
  stage.status = to;
  stage.history.push({ status: to, at, reason });
  return true;
}

// ---- step runs ----------------------------------------------------------------------

/** States a step run is created in. */
export const STEP_INITIAL: readonly StepStatus[] = ['Waiting', 'QueuedForAgent', 'Running', 'Skipped'];

export const STEP_TRANSITIONS: Readonly<Record<StepStatus, readonly StepStatus[]>> = {
  // a retry waiting out its interval
  Waiting: ['QueuedForAgent', 'Canceled'],
  // NoEligibleDelegate fails a queued step; a fast task may report its end without a start
  QueuedForAgent: ['Running', 'Succeeded', 'Failed', 'Canceled', 'Ignored'],
  // delegate steps, approvals (Expired on timeout, Failed when rejected), waits
  Running: ['Succeeded', 'Failed', 'Canceled', 'Expired', 'Ignored'],
  // a failed step is ignored by `ferry intervene --action ignore` or its timeout
  Failed: ['Ignored'],
  Succeeded: [],
  Skipped: [],
  Canceled: [],
  Expired: [],
  Ignored: [],
};

export function transitionStep(run: { id: string; stepId: string; status: StepStatus }, to: StepStatus, reason: string): boolean {
  if (run.status === to) return false;
  if (!STEP_TRANSITIONS[run.status].includes(to)) throw new TransitionError(`step ${run.stepId} (${run.id})`, run.status, to, reason);
  run.status = to;
  return true;
}

export const isTerminalStep = (s: StepStatus): boolean => ['Succeeded', 'Failed', 'Skipped', 'Canceled', 'Expired', 'Ignored'].includes(s);

// ---- executions ---------------------------------------------------------------------

export const EXECUTION_TRANSITIONS: Readonly<Record<ExecutionStatus, readonly ExecutionStatus[]>> = {
  // the account's limit of running executions
  Queued: ['Running', 'Aborted', 'Succeeded'],
  Running: ['Paused', 'Succeeded', 'PartiallySucceeded', 'Failed', 'Aborted', 'Expired', 'Rejected', 'Superseded'],
  // a manual intervention or a canary pause waits
  Paused: ['Running', 'Failed', 'Aborted', 'PartiallySucceeded', 'Succeeded'],
  Succeeded: [],
  PartiallySucceeded: [],
  Superseded: [],
  // resumable: back to Running, or Queued behind the account's limit
  Failed: ['Running', 'Queued'],
  Aborted: ['Running', 'Queued'],
  Expired: ['Running', 'Queued'],
  Rejected: ['Running', 'Queued'],
};

export function transitionExecution(exec: { id: string; status: ExecutionStatus; history: StatusChange<ExecutionStatus>[] }, to: ExecutionStatus, reason: string, at: number): boolean {
  if (exec.status === to) return false;
  if (!EXECUTION_TRANSITIONS[exec.status].includes(to)) throw new TransitionError(`execution ${exec.id}`, exec.status, to, reason);
  exec.status = to;
  exec.history.push({ status: to, at, reason });
  return true;
}
