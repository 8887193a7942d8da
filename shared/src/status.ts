/** Status names of CONTRACT §6. These strings are public: never rename. */
export const ExecutionStatus = [
  'Queued', 'Running', 'Paused', 'Succeeded', 'PartiallySucceeded', 'Failed', 'Aborted',
  'Expired', 'Rejected', 'Superseded',
] as const;
export type ExecutionStatus = (typeof ExecutionStatus)[number];
export const TERMINAL_EXECUTION: readonly ExecutionStatus[] = [
  'Succeeded', 'PartiallySucceeded', 'Failed', 'Aborted', 'Expired', 'Rejected', 'Superseded',
];
export const RESUMABLE_EXECUTION: readonly ExecutionStatus[] = ['Failed', 'Aborted', 'Expired', 'Rejected'];

export const StageStatus = [
  'NotStarted', 'Queued', 'Scheduled', 'InProgress', 'Succeeded', 'PartiallySucceeded',
  'Failed', 'Canceled', 'Rejected', 'Expired', 'Skipped',
] as const;
export type StageStatus = (typeof StageStatus)[number];

export const AttemptStatus = ['NotDeployed', 'InProgress', 'Succeeded', 'PartiallySucceeded', 'Failed'] as const;
export type AttemptStatus = (typeof AttemptStatus)[number];

export const OperationStatus = [
  'Queued', 'Scheduled', 'Pending', 'Approved', 'Rejected', 'Deferred', 'QueuedForAgent',
  'QueuedForPipeline', 'Canceled', 'PhaseInProgress', 'ManualInterventionPending',
  'PhaseSucceeded', 'Cancelling', 'EvaluatingGates', 'GatesFailed', 'PhasePartiallySucceeded',
  'PhaseFailed',
] as const;
export type OperationStatus = (typeof OperationStatus)[number];

/** The allowed <status, operationStatus> pairs of a deployment attempt (CONTRACT §6). */
export const ATTEMPT_PAIRS: Readonly<Record<AttemptStatus, readonly OperationStatus[]>> = {
  NotDeployed: ['Queued', 'Scheduled', 'Pending', 'Approved', 'Rejected', 'Deferred', 'QueuedForAgent', 'QueuedForPipeline', 'Canceled'],
  InProgress: ['PhaseInProgress', 'ManualInterventionPending', 'PhaseSucceeded', 'Pending', 'QueuedForAgent', 'Cancelling', 'EvaluatingGates', 'GatesFailed'],
  Succeeded: ['Approved'],
  PartiallySucceeded: ['PhasePartiallySucceeded'],
  Failed: ['PhaseFailed', 'Canceled', 'Rejected', 'GatesFailed'],
};

export const StepStatus = [
  'Waiting', 'QueuedForAgent', 'Running', 'Succeeded', 'Failed', 'Skipped', 'Canceled', 'Expired', 'Ignored',
] as const;
export type StepStatus = (typeof StepStatus)[number];

/** Error kinds matched by failure strategies' `on` (CONTRACT §5). */
export const ErrorKind = ['StepFailed', 'Timeout', 'DelegateLost', 'NoEligibleDelegate', 'Verification', 'Canceled'] as const;
export type ErrorKind = (typeof ErrorKind)[number];
export const MATCHABLE_ERROR_KINDS = ['StepFailed', 'Timeout', 'DelegateLost', 'NoEligibleDelegate', 'Verification', 'AllErrors'] as const;

/** Task kinds a delegate runs. */
export const TaskKind = ['shell', 'http', 'noop', 'verify'] as const;
export type TaskKind = (typeof TaskKind)[number];

/** A task failure on the wire: a union on kind, retryability as a field. */
export interface TaskFailure {
  kind: ErrorKind;
  message: string;
  retryable: boolean;
}
