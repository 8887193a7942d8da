/**
 * A pipeline as the engine reads it: every default filled, every duration in ms, every
 * list item a node. This is what `pipelines.definition` stores (JSON) and what an
 * execution snapshots: an execution keeps the version it started with.
 */

export type Scalar = string | number | boolean;
export type VariableType = 'string' | 'number' | 'boolean';

export interface VariableDefinition {
  type: VariableType;
  default: Scalar | null;
  required: boolean;
  description: string | null;
  allowed: Scalar[] | null;
}

export type EnvironmentType = 'production' | 'preproduction';

export interface EnvironmentDefinition {
  type: EnvironmentType;
  /** deployments at once per infrastructure mapping */
  concurrency: number;
  /** waiting runs superseded by a newer one are cancelled */
  deployLatestOnly: boolean;
  /** where verifications of stages deploying here read metrics, unless they name a source */
  healthSource?: HealthSource | null;
}

export type MatchableErrorKind = 'StepFailed' | 'Timeout' | 'DelegateLost' | 'NoEligibleDelegate' | 'Verification' | 'AllErrors';
export type StrategyAction = 'retry' | 'ignore' | 'abort' | 'stageRollback' | 'pipelineRollback' | 'manualIntervention';
export type TimeoutAction = Exclude<StrategyAction, 'manualIntervention'>;

export interface FailureStrategy {
  on: MatchableErrorKind[];
  action: StrategyAction;
  /** retry */
  count: number;
  /** retry: the wait before the n-th retry is intervalsMs[min(n-1, length-1)]; [0] when none */
  intervalsMs: number[];
  /** manualIntervention */
  timeoutMs: number | null;
  /** manualIntervention; null: the step fails its stage as with no matching strategy */
  onTimeout: TimeoutAction | null;
}

export interface Approvers {
  minimumCount: number;
  disallowExecutor: boolean;
  /** token names allowed to decide; null: anyone the permissions allow */
  users: string[] | null;
}

export interface VerifyMetric {
  name: string;
  query: string;
  direction: 'increase' | 'decrease' | 'either';
  critical: boolean;
  allowedIncrease: number | null;
  allowedDecrease: number | null;
  weight: number;
}

export interface HealthSource { type: 'prometheus'; url: string; bearerTokenSecret: string | null }

export interface VerifyConfig {
  /** the verify block's own source, else its stage environment's healthSource */
  source: HealthSource;
  metrics: VerifyMetric[];
  sensitivity: 'high' | 'medium' | 'low';
  durationMs: number;
  intervalMs: number;
  failOnNoData: boolean;
}

export type StepType = 'shell' | 'http' | 'approval' | 'wait' | 'verify' | 'noop';

export interface StepDefinition {
  id: string;
  name: string | null;
  type: StepType;
  when: string | null;
  timeoutMs: number | null;
  queueTimeoutMs: number | null;
  continueOnError: boolean;
  alwaysRun: boolean;
  failureStrategies: FailureStrategy[];
  delegateSelectors: string[];
  secrets: string[];
  env: Record<string, string>;
  shell?: { script: string; shell: string | null };
  http?: {
    url: string;
    method: string;
    headers: Record<string, string>;
    body: string | null;
    expectStatus: number[] | null;
    expectBody: string | null;
  };
  /** approval steps; `timeoutMs` above is the approval's timeout */
  approval?: Approvers;
  wait?: { durationMs: number };
  verify?: VerifyConfig;
  noop?: { sleepMs: number; lines: number; fail: boolean };
}

/** One item of a step list: a single step (parallel false) or a parallel group. */
export interface StepNode {
  parallel: boolean;
  steps: StepDefinition[];
}

export interface CanaryPhase {
  weight: number;
  verify: VerifyConfig | null;
  /** null: no pause; durationMs null: until `ferry promote` */
  pause: { durationMs: number | null } | null;
}

export type DeployStrategy =
  | { type: 'rolling' }
  | { type: 'canary'; phases: CanaryPhase[] }
  | { type: 'blueGreen'; verify: VerifyConfig | null };

export interface InfrastructureMapping {
  service: string;
  environment: string;
  infrastructure: string;
}

export interface DeployTarget extends InfrastructureMapping {
  environmentType: EnvironmentType;
  rollbackScope: 'pipeline' | 'infrastructure';
}

export type StageType = 'deploy' | 'approval' | 'custom';

export interface StageDefinition {
  id: string;
  name: string | null;
  type: StageType;
  when: string | null;
  /** epoch ms: the stage waits <NotDeployed, Scheduled> until then */
  scheduleAt: number | null;
  delegateSelectors: string[];
  failureStrategies: FailureStrategy[];
  queueTimeoutMs: number | null;
  /** deploy stages */
  deploy: DeployTarget | null;
  strategy: DeployStrategy;
  steps: StepNode[];
  rollbackSteps: StepNode[];
  swapSteps: StepNode[];
  /** approval stages */
  approvers: Approvers | null;
  timeoutMs: number | null;
}

export interface PipelineDefinition {
  pipeline: string;
  description: string | null;
  variables: Record<string, VariableDefinition>;
  /** every environment a stage names, with defaults filled */
  environments: Record<string, EnvironmentDefinition>;
  stages: StageDefinition[];
}

export const DEFAULT_QUEUE_TIMEOUT_MS = 3_600_000;
