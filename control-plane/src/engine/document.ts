/**
 * The execution document of CONTRACT §6 (`ferry execution ID --json`,
 * GET /api/v1/executions/:id), read off the state document.
 *
 * `steps` lists the runs of the latest attempt (every try; rollback runs carry
 * `"rollback": true`), or of every attempt with `history`. A step that has no run in that
 * attempt is listed from the definition: `Waiting` while it may still run, `Canceled` when
 * the attempt was aborted or superseded, `Skipped` otherwise (not reached after a failure,
 * or its stage skipped). A canary stage lists one entry per step per phase.
 */
import type { AttemptStatus, ExecutionStatus, OperationStatus, StageStatus, StepStatus } from '@ferry/shared';
import { isTerminalAttempt } from './transitions.js';
import type { AttemptState, ExecutionState, StepRun } from './state.js';
import type { Scalar, StageDefinition } from './pipeline/types.js';

const iso = (ms: number | null | undefined): string | null => (ms == null ? null : new Date(ms).toISOString());

export interface QueueInfo { reason: string; position: number | null }

export interface DocumentOptions {
  /** every attempt's step runs, not only the latest attempt's */
  history?: boolean;
  /** where a step waiting for an agent stands in the queue (the scheduler knows) */
  queueInfo?: (stepRunId: string) => QueueInfo | null;
}

export interface StepDocument {
  id: string;
  type: string;
  status: StepStatus;
  attempt: number | null;
  try: number | null;
  phase: number | null;
  queuedAt: string | null;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
  delegate: string | null;
  queue: QueueInfo | null;
  error: { kind: string; message: string } | null;
  runId?: string;
  rollback?: boolean;
  retryAt?: string | null;
  outputs?: Record<string, string>;
  approvals?: Array<{ by: string; decision: string; comment: string | null; at: string | null; deferUntil: string | null }>;
  approval?: { minimumCount: number; disallowExecutor: boolean; users: string[] | null; deferUntil: string | null; timeoutAt: string | null };
  intervention?: { since: string | null; timeoutAt: string | null; onTimeout: string | null } | null;
  interventions?: Array<{ by: string; action: string; at: string | null }>;
  verification?: unknown;
  color?: string | null;
  weight?: number | null;
}

export interface AttemptDocument {
  attempt: number;
  status: AttemptStatus | null;
  operationStatus: OperationStatus | null;
  startedAt: string | null;
  finishedAt: string | null;
  phase: number | null;
  history: Array<{ status: string; operationStatus: string; at: string | null; reason: string }>;
}

export interface StageDocument {
  id: string;
  type: string;
  status: StageStatus;
  service?: string;
  environment?: string;
  environmentType?: string;
  infrastructure?: string;
  rollingBack: boolean;
  rolledBack: boolean;
  rollbackArtifact: string | null;
  failure: { kind: string; message: string; step: string | null; action: string } | null;
  paused: { phase: number; since: string | null; until: string | null } | null;
  liveColor?: string | null;
  attempts: AttemptDocument[];
  steps: StepDocument[];
}

export interface ExecutionDocument {
  id: string;
  pipeline: string;
  pipelineVersion: number;
  status: ExecutionStatus;
  artifact: string | null;
  inputs: Record<string, Scalar>;
  createdBy: string;
  createdAt: string | null;
  finishedAt: string | null;
  resumedFrom: { stage: string; at: string | null; by: string } | null;
  supersededBy: string | null;
  abortedBy: string | null;
  stages: StageDocument[];
}

export function toExecutionDocument(st: ExecutionState, opts: DocumentOptions = {}): ExecutionDocument {
  return {
    id: st.id,
    pipeline: st.pipeline,
    pipelineVersion: st.pipelineVersion,
    status: st.status,
    artifact: st.artifact,
    inputs: st.inputs,
    createdBy: st.executor,
    createdAt: iso(st.createdAt),
    finishedAt: iso(st.finishedAt),
    resumedFrom: st.resumedFrom ? { stage: st.resumedFrom.stage, at: iso(st.resumedFrom.at), by: st.resumedFrom.by } : null,
    supersededBy: st.supersededBy,
    abortedBy: st.abort?.by ?? null,
    stages: st.stages.map((stage, i) => {
      const def = st.definition.stages[i]!;
      const latest = stage.attempts[stage.attempts.length - 1];
      // a stage not run in this run of the execution (not reached since a resume, or
      // skipped) shows its definition, not an old attempt
      const current = stage.status === 'NotStarted' || stage.status === 'Skipped' ? undefined : latest;
      const attempts = opts.history ? stage.attempts : current ? [current] : [];
      const steps: StepDocument[] = [];
      for (const a of attempts) steps.push(...runsOf(def, a, opts));
      if (!opts.history || attempts.length === 0) steps.push(...placeholders(st, stage.status, def, current));
      const doc: StageDocument = {
        id: stage.id,
        type: def.type,
        status: stage.status,
        ...(def.deploy ? {
          service: def.deploy.service, environment: def.deploy.environment, environmentType: def.deploy.environmentType,
          infrastructure: def.deploy.infrastructure,
        } : {}),
        rollingBack: current?.rollingBack ?? false,
        rolledBack: current?.rolledBack ?? false,
        rollbackArtifact: current?.rolledBack || current?.rollingBack ? current.rollbackArtifact : null,
        failure: current?.failure ? { kind: current.failure.kind, message: current.failure.message, step: current.failure.stepId, action: current.failure.action } : null,
        paused: current?.paused ? { phase: current.paused.phase, since: iso(current.paused.since), until: iso(current.paused.until) } : null,
        // blue/green: the new colour once the stage succeeded, unless a (pipeline) rollback swapped back
        ...(def.strategy.type === 'blueGreen' ? { liveColor: current ? (current.status === 'Succeeded' && !current.rolledBack ? current.color : current.previousColor) : null } : {}),
        attempts: stage.attempts.map((a) => ({
          attempt: a.attempt, status: a.status, operationStatus: a.operationStatus, startedAt: iso(a.startedAt),
          finishedAt: iso(a.finishedAt), phase: def.strategy.type === 'canary' ? a.phase : null,
          history: a.history.map((h) => ({ status: h.status, operationStatus: h.operationStatus, at: iso(h.at), reason: h.reason })),
        })),
        steps,
      };
      return doc;
    }),
  };
}

function runsOf(def: StageDefinition, a: AttemptState, opts: DocumentOptions): StepDocument[] {
  const canary = def.strategy.type === 'canary';
  return a.runs.map((r: StepRun): StepDocument => {
    const d: StepDocument = {
      id: r.stepId,
      type: r.type,
      status: r.status,
      attempt: a.attempt,
      try: r.try,
      phase: canary ? r.phase : null,
      queuedAt: iso(r.queuedAt),
      startedAt: iso(r.startedAt),
      finishedAt: iso(r.finishedAt),
      exitCode: r.exitCode,
      delegate: r.delegate,
      queue: r.status === 'QueuedForAgent' ? opts.queueInfo?.(r.id) ?? { reason: 'waiting for an eligible delegate', position: null } : null,
      error: r.error,
      runId: r.id,
    };
    if (r.list === 'rollback') d.rollback = true;
    if (r.status === 'Waiting' && r.retryAt !== null) d.retryAt = iso(r.retryAt);
    if (Object.keys(r.outputs).length > 0) d.outputs = r.outputs;
    if (r.approval) {
      d.approvals = r.approval.decisions.map((x) => ({ by: x.by, decision: x.decision, comment: x.comment, at: iso(x.at), deferUntil: iso(x.deferUntil) }));
      d.approval = {
        minimumCount: r.approval.minimumCount, disallowExecutor: r.approval.disallowExecutor, users: r.approval.users,
        deferUntil: iso(r.approval.deferUntil), timeoutAt: iso(r.approval.timeoutAt),
      };
    }
    if (r.intervention) d.intervention = { since: iso(r.intervention.since), timeoutAt: iso(r.intervention.timeoutAt), onTimeout: r.intervention.onTimeout };
    if (r.interventions.length > 0) d.interventions = r.interventions.map((x) => ({ by: x.by, action: x.action, at: iso(x.at) }));
    if (r.type === 'verify') d.verification = r.verification ?? null;
    if (r.color) d.color = r.color;
    if (canary && def.strategy.type === 'canary') d.weight = def.strategy.phases[r.phase]?.weight ?? null;
    return d;
  });
}

/** Steps of the definition that have no run in the shown attempt (main list only). */
function placeholders(st: ExecutionState, stageStatus: StageStatus, def: StageDefinition, a: AttemptState | undefined): StepDocument[] {
  const canary = def.strategy.type === 'canary' ? def.strategy : null;
  const ids: string[] = def.type === 'approval' ? ['approval'] : def.steps.flatMap((n) => n.steps.map((s) => s.id));
  const verifyIn = (phase: number) => (canary ? canary.phases[phase]?.verify : def.strategy.type === 'blueGreen' ? def.strategy.verify : null);
  const phases = canary ? canary.phases.map((_, i) => i) : [0];
  let status: StepStatus;
  if (!a) status = stageStatus === 'Skipped' ? 'Skipped' : stageStatus === 'Canceled' ? 'Canceled' : 'Waiting';
  else if (isTerminalAttempt(a)) status = a.operationStatus === 'Canceled' ? 'Canceled' : 'Skipped';
  else status = a.aborting ? 'Canceled' : 'Waiting';
  const out: StepDocument[] = [];
  for (const phase of phases) {
    const list = [...ids, ...(verifyIn(phase) ? ['verify'] : [])];
    for (const id of list) {
      if (a?.runs.some((r) => r.list === 'main' && r.stepId === id && r.phase === phase && r.pass === a.pass)) continue;
      out.push({
        id, type: def.type === 'approval' ? 'approval' : id === 'verify' && verifyIn(phase) ? 'verify' : stepType(def, id),
        status, attempt: a?.attempt ?? null, try: null, phase: canary ? phase : null, queuedAt: null, startedAt: null,
        finishedAt: null, exitCode: null, delegate: null, queue: null, error: null,
        ...(canary ? { weight: canary.phases[phase]?.weight ?? null } : {}),
      });
    }
  }
  void st;
  return out;
}

function stepType(def: StageDefinition, id: string): string {
  for (const n of def.steps) for (const s of n.steps) if (s.id === id) return s.type;
  return 'shell';
}
