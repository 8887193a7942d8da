/**
 * The execution state document: everything the machine knows about one execution, as
 * plain JSON (stored whole in `executions.state`). The machine (machine.ts) is a pure
 * function of this document, an event, the time and a read-only context.
 */
import type { AttemptStatus, ExecutionStatus, OperationStatus, StageStatus, StepStatus, TaskKind, TaskSpec } from '@ferry/shared';
import type { AttemptTransition, StatusChange } from './transitions.js';
import type { InfrastructureMapping, PipelineDefinition, Scalar, StepType, TimeoutAction } from './pipeline/types.js';

export const STATE_VERSION = 1;

/** Which step list of a stage a run belongs to. */
export type ListName = 'main' | 'swap' | 'rollback';

export interface ApprovalDecision {
  by: string;
  decision: 'approved' | 'rejected';
  comment: string | null;
  at: number;
  deferUntil: number | null;
}

export interface ApprovalState {
  minimumCount: number;
  disallowExecutor: boolean;
  users: string[] | null;
  decisions: ApprovalDecision[];
  /** approved with --defer-until: the steps after it wait until then */
  deferUntil: number | null;
  timeoutAt: number | null;
}

export interface StepError {
  /** StepFailed | Timeout | DelegateLost | NoEligibleDelegate | Verification | Canceled */
  kind: string;
  message: string;
}

export interface StepRun {
  /** also the task id of a delegate step */
  id: string;
  stepId: string;
  type: StepType;
  list: ListName;
  /** canary phase index (0 for stages without phases) */
  phase: number;
  /** bumped when a phase is run again (intervene retry on a pause) */
  pass: number;
  /** index of the node (step or parallel group) in its list */
  node: number;
  try: number;
  alwaysRun: boolean;
  /** runs on a delegate (shell, http, noop, verify) */
  task: boolean;
  status: StepStatus;
  queuedAt: number | null;
  startedAt: number | null;
  finishedAt: number | null;
  exitCode: number | null;
  delegate: string | null;
  error: StepError | null;
  /** a retry waiting out its interval */
  retryAt: number | null;
  outputs: Record<string, string>;
  /** retries used per failure strategy ("step:0", "stage:1"), carried from try to try */
  retries: Record<string, number>;
  intervention: { since: number; timeoutAt: number | null; onTimeout: TimeoutAction | null } | null;
  /** who intervened on this run, and how */
  interventions: Array<{ by: string; action: string; at: number }>;
  approval: ApprovalState | null;
  waitUntil: number | null;
  verification: unknown;
  cancelRequested: boolean;
  /** blue/green: the colour this run targets */
  color: string | null;
}

export interface AttemptFailure {
  action: 'fail' | 'stageRollback' | 'pipelineRollback';
  kind: string;
  message: string;
  stepId: string | null;
}

export interface AttemptState {
  attempt: number;
  /** null only between creation and the first sync inside one apply */
  status: AttemptStatus | null;
  operationStatus: OperationStatus | null;
  history: AttemptTransition[];
  startedAt: number;
  finishedAt: number | null;
  /** what it waits for before any work */
  waiting: 'account' | 'schedule' | 'slot' | null;
  /** the infrastructure mapping's concurrency slot */
  slot: 'none' | 'waiting' | 'held';
  /** a delegate step (or a wait) ran or failed: the attempt is InProgress from then on */
  ran: boolean;
  phase: number;
  list: ListName;
  node: number;
  nodeStarted: boolean;
  pass: number;
  /** a failure, rejection or abort happened in the current list: only alwaysRun steps start */
  listBroken: boolean;
  failure: AttemptFailure | null;
  decision: 'Rejected' | 'Expired' | null;
  aborting: boolean;
  /** a step was ignored (continueOnError, ignore) */
  partial: boolean;
  paused: { phase: number; since: number; until: number | null } | null;
  /** the phase whose pause was taken, so it pauses once */
  pauseHandled: number;
  rollingBack: boolean;
  rolledBack: boolean;
  rollbackArtifact: string | null;
  rollbackFailed: boolean;
  /** blue/green: colour deployed to, and the colour live before */
  color: string | null;
  previousColor: string | null;
  runs: StepRun[];
}

export interface StageState {
  id: string;
  status: StageStatus;
  history: StatusChange<StageStatus>[];
  attempts: AttemptState[];
}

export interface ExecutionState {
  v: number;
  id: string;
  account: string;
  pipeline: string;
  pipelineVersion: number;
  definition: PipelineDefinition;
  inputs: Record<string, Scalar>;
  artifact: string | null;
  /** name of the token that ran it (disallowExecutor compares with it) */
  executor: string;
  status: ExecutionStatus;
  history: StatusChange<ExecutionStatus>[];
  createdAt: number;
  finishedAt: number | null;
  resumedFrom: { stage: string; at: number; by: string } | null;
  supersededBy: string | null;
  abort: { by: string; at: number } | null;
  /** the account's running-executions slot */
  accountSlot: 'none' | 'waiting' | 'held';
  /** index of the stage being run */
  current: number | null;
  /** pipelineRollback: earlier stages still to roll back, newest first */
  rollback: { queue: number[]; current: number | null } | null;
  /** counter for step run ids */
  seq: number;
  stages: StageState[];
}

// ---- what the machine asks of the world ----------------------------------------------

export interface DeploymentRecord {
  pipeline: string;
  artifact: string;
  status: 'succeeded' | 'failed' | 'rolledBack';
  executionId: string;
  at: number;
}

export type Slot =
  | { kind: 'account' }
  | {
    kind: 'mapping';
    /** service/environment/infrastructure */
    key: string;
    mapping: InfrastructureMapping;
    /** deployments at once on this mapping */
    capacity: number;
    deployLatestOnly: boolean;
    stage: string;
  };

/**
 * Read-only lookups the runtime resolves before it applies an event (the machine never
 * waits on I/O). The runtime prefetches them for the definition's mappings.
 */
export interface MachineContext {
  /** deployments on a mapping (this account), newest first */
  deployments(mapping: InfrastructureMapping): readonly DeploymentRecord[];
  /** a slot could be taken now without waiting (and nobody waits before us) */
  slotFree(slot: Slot): boolean;
  /** blue/green: the colour live on a mapping, null when none yet */
  liveColor?(mapping: InfrastructureMapping): string | null;
}

export interface TaskRequest {
  taskId: string;
  executionId: string;
  account: string;
  stage: string;
  step: string;
  attempt: number;
  try: number;
  phase: number | null;
  kind: TaskKind;
  spec: TaskSpec;
  env: Record<string, string>;
  secretNames: string[];
  selectors: string[];
  timeoutMs: number | null;
  queueTimeoutMs: number;
}

export type Effect =
  | { type: 'enqueueTask'; task: TaskRequest }
  | { type: 'cancelTask'; taskId: string; reason: string }
  | { type: 'setTimer'; key: string; at: number }
  | { type: 'clearTimer'; key: string }
  | { type: 'recordDeployment'; mapping: InfrastructureMapping; pipeline: string; artifact: string; stage: string; status: 'succeeded' | 'failed' | 'rolledBack' }
  /** taken now (slotFree said so) */
  | { type: 'acquireSlot'; slot: Slot }
  /** wait in line; the runtime answers with a slotGranted event */
  | { type: 'requestSlot'; slot: Slot }
  /** give back a held slot, or leave the line */
  | { type: 'releaseSlot'; slot: Slot }
  | { type: 'setLiveColor'; mapping: InfrastructureMapping; color: string }
  /** a note in a step's log (stream 2) */
  | { type: 'systemLog'; stepRunId: string; line: string }
  | { type: 'finished'; status: ExecutionStatus };

export interface TaskOutcome {
  status: 'Succeeded' | 'Failed' | 'Canceled';
  exitCode?: number | null;
  error?: StepError | null;
  outputs?: Record<string, string>;
  startedAt?: number | null;
  finishedAt?: number | null;
  delegate?: string | null;
  data?: unknown;
}

export interface VerificationVerdict {
  verdict: 'Healthy' | 'MediumHealthy' | 'Unhealthy' | 'NoData';
  score?: number;
  [k: string]: unknown;
}

export type MachineEvent =
  | { type: 'timer'; key: string }
  | { type: 'taskStarted'; stepRunId: string; delegate: string | null; at?: number }
  /** verification: the judge's verdict on a verify task's data, computed by the runtime */
  | { type: 'taskFinished'; stepRunId: string; result: TaskOutcome; verification?: VerificationVerdict | null }
  | { type: 'approve'; by: string; comment?: string | null; deferUntil?: number | null; stage?: string | null; step?: string | null }
  | { type: 'reject'; by: string; comment?: string | null; stage?: string | null; step?: string | null }
  | { type: 'intervene'; action: 'retry' | 'ignore' | 'abort' | 'rollback'; by: string; stage?: string | null; step?: string | null }
  | { type: 'promote'; by: string; stage?: string | null }
  | { type: 'abort'; by: string }
  | { type: 'resume'; fromStage: string; by: string }
  | { type: 'slotGranted'; slot: 'account' | 'mapping' }
  | { type: 'superseded'; by: string };

export interface Transition {
  state: ExecutionState;
  effects: Effect[];
}
