/**
 * The execution state machine: a pure reducer over the execution state document.
 *
 *   start(input, now, ctx)        → {state, effects}
 *   apply(state, event, now, ctx) → {state, effects}
 *
 * No I/O, no clock, no randomness: the runtime (runtime.ts) loads the document, applies
 * an event, and writes the new document together with the effects (tasks, timers,
 * deployments, slots) in one transaction. The same input always gives the same output,
 * so a crash between two events loses nothing and a replayed event is harmless (stale
 * events are ignored: a finished run does not finish twice).
 *
 * How a stage runs. A stage attempt runs lists of step nodes (a step, or a parallel group):
 * `main` (the stage's steps, then the phase's verification; once per canary phase),
 * `swap` (blue/green, after main) and `rollback` (rollbackSteps; blue/green: the swap
 * back). A node starts all its steps; the list moves on when every step of the node has
 * settled. A failure, rejection or abort "breaks" the list: later nodes start only their
 * alwaysRun steps. When the list ends the attempt decides: abort → Canceled; rejected or
 * expired approval → Rejected/Expired; failure → rollback list (stageRollback,
 * pipelineRollback) then Failed; else the next phase or Succeeded.
 *
 * The attempt's <status, operationStatus> pair is derived from that state after every
 * event (derivePair), plus a few explicit moments (Approved, PhaseSucceeded, the terminal
 * pairs); every change goes through transitionAttempt, which checks transitions.ts.
 */
import { FerryError, RESUMABLE_EXECUTION, TERMINAL_EXECUTION, envName, type ExecutionStatus, type TaskSpec } from '@ferry/shared';
import {
  ATTEMPT_TRANSITIONS, isTerminalAttempt, isTerminalStep, pairOf, transitionAttempt, transitionExecution, transitionStage, transitionStep, type AttemptPair,
} from './transitions.js';
import { evaluateCondition, type Value } from './expression.js';
import {
  DEFAULT_QUEUE_TIMEOUT_MS, type FailureStrategy, type InfrastructureMapping, type PipelineDefinition, type Scalar,
  type StageDefinition, type StepDefinition, type StepNode, type VerifyConfig,
} from './pipeline/types.js';
import {
  STATE_VERSION, type AttemptState, type DeploymentRecord, type Effect, type ExecutionState, type ListName, type MachineContext,
  type MachineEvent, type Slot, type StageState, type StepError, type StepRun, type TaskOutcome, type TaskRequest, type Transition,
  type VerificationVerdict,
} from './state.js';

export interface StartInput {
  id: string;
  account: string;
  pipeline: string;
  pipelineVersion: number;
  definition: PipelineDefinition;
  /** as given by the caller (strings from the CLI are coerced to the variable's type) */
  inputs: Record<string, unknown>;
  artifact: string | null;
  /** name of the token that runs it */
  executor: string;
}

/** Creates an execution and runs it as far as it goes without outside events. */
export function start(input: StartInput, now: number, ctx: MachineContext): Transition {
  const inputs = resolveInputs(input.definition, input.inputs);
  const state: ExecutionState = {
    v: STATE_VERSION,
    id: input.id,
    account: input.account,
    pipeline: input.pipeline,
    pipelineVersion: input.pipelineVersion,
    definition: input.definition,
    inputs,
    artifact: input.artifact,
    executor: input.executor,
    status: 'Queued',
    history: [{ status: 'Queued', at: now, reason: 'created' }],
    createdAt: now,
    finishedAt: null,
    resumedFrom: null,
    supersededBy: null,
    abort: null,
    accountSlot: 'none',
    current: null,
    rollback: null,
    seq: 0,
    stages: input.definition.stages.map((s) => ({ id: s.id, status: 'NotStarted', history: [], attempts: [] })),
  };
  const m = new Machine(state, now, ctx);
  m.takeAccountSlot('started');
  m.settle();
  return { state: m.st, effects: m.effects };
}

/** The run with this id, its step's definition and where it belongs (null when unknown). */
export function describeRun(state: ExecutionState, runId: string): { stageIndex: number; stage: StageDefinition; attempt: AttemptState; run: StepRun; step: StepDefinition } | null {
  const noCtx: MachineContext = { deployments: () => [], slotFree: () => false };
  return new Machine(state, 0, noCtx).describeRun(runId);
}

/** Applies one event. Commands that are not allowed now throw FerryError (nothing changes). */
export function apply(state: ExecutionState, event: MachineEvent, now: number, ctx: MachineContext): Transition {
  const m = new Machine(structuredClone(state), now, ctx);
  m.handle(event);
  m.settle();
  return { state: m.st, effects: m.effects };
}

// ---- inputs ---------------------------------------------------------------------------

export function resolveInputs(def: PipelineDefinition, given: Record<string, unknown>): Record<string, Scalar> {
  const out: Record<string, Scalar> = {};
  for (const key of Object.keys(given)) {
    if (!(key in def.variables)) {
      const known = Object.keys(def.variables);
      throw new FerryError('INVALID_ARGUMENT', `unknown input "${key}": the pipeline declares ${known.length ? known.join(', ') : 'no variables'}`);
    }
  }
  for (const [name, v] of Object.entries(def.variables)) {
    const raw = given[name];
    if (raw === undefined || raw === null) {
      if (v.default !== null) out[name] = v.default;
      else if (v.required) throw new FerryError('INVALID_ARGUMENT', `input "${name}" is required`);
      continue;
    }
    let value: Scalar;
    if (v.type === 'number') {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : Number.NaN;
      if (!Number.isFinite(n)) throw new FerryError('INVALID_ARGUMENT', `input "${name}" must be a number (got ${JSON.stringify(raw)})`);
      value = n;
    } else if (v.type === 'boolean') {
      if (raw === true || raw === 'true') value = true;
      else if (raw === false || raw === 'false') value = false;
      else throw new FerryError('INVALID_ARGUMENT', `input "${name}" must be true or false (got ${JSON.stringify(raw)})`);
    } else {
      if (typeof raw === 'object') throw new FerryError('INVALID_ARGUMENT', `input "${name}" must be a string`);
      value = String(raw);
    }
    if (v.allowed && !v.allowed.includes(value)) {
      throw new FerryError('INVALID_ARGUMENT', `input "${name}" must be one of ${v.allowed.map((x) => JSON.stringify(x)).join(', ')}`);
    }
    out[name] = value;
  }
  return out;
}

// ---- rollback artifact ------------------------------------------------------------------

/**
 * FERRY_ROLLBACK_ARTIFACT: the artifact of the last successful deployment on the mapping —
 * of the same pipeline, or of any pipeline with rollbackScope infrastructure — never one
 * whose latest deployment on the mapping (by any pipeline) failed or was rolled back, never
 * the artifact being rolled back, and nothing this execution recorded itself.
 */
export function pickRollbackArtifact(
  records: readonly DeploymentRecord[],
  opts: { pipeline: string; scope: 'pipeline' | 'infrastructure'; executionId: string; exclude: string | null },
): string | null {
  const latest = new Map<string, DeploymentRecord['status']>();
  const rows = records.filter((r) => r.executionId !== opts.executionId).sort((a, b) => b.at - a.at);
  for (const r of rows) if (!latest.has(r.artifact)) latest.set(r.artifact, r.status);
  for (const r of rows) {
    if (r.status !== 'succeeded' || latest.get(r.artifact) !== 'succeeded') continue;
    if (r.artifact === opts.exclude) continue;
    if (opts.scope === 'pipeline' && r.pipeline !== opts.pipeline) continue;
    return r.artifact;
  }
  return null;
}

export const mappingKey = (m: InfrastructureMapping): string => `${m.service}/${m.environment}/${m.infrastructure}`;

// ---- the machine ------------------------------------------------------------------------

const APPROVAL_STEP_ID = 'approval';
const VERIFY_STEP_ID = 'verify';
const SEVERITY = { fail: 0, stageRollback: 1, pipelineRollback: 2 } as const;

const stepDefaults = (id: string): Omit<StepDefinition, 'type'> => ({
  id, name: null, when: null, timeoutMs: null, queueTimeoutMs: null, continueOnError: false, alwaysRun: false,
  failureStrategies: [], delegateSelectors: [], secrets: [], env: {},
});

class Machine {
  readonly effects: Effect[] = [];
  private readonly def: PipelineDefinition;

  constructor(readonly st: ExecutionState, private readonly now: number, private readonly ctx: MachineContext) {
    this.def = st.definition;
  }

  private emit(e: Effect): void { this.effects.push(e); }
  private stageDef(i: number): StageDefinition { return this.def.stages[i]!; }
  private stage(i: number): StageState { return this.st.stages[i]!; }
  private latest(i: number): AttemptState | undefined { const a = this.stage(i).attempts; return a[a.length - 1]; }
  private get terminal(): boolean { return TERMINAL_EXECUTION.includes(this.st.status); }

  // ---- events ----

  handle(e: MachineEvent): void {
    switch (e.type) {
      case 'timer': return this.onTimer(e.key);
      case 'taskStarted': return this.onTaskStarted(e.stepRunId, e.delegate, e.at);
      case 'taskFinished': return this.onTaskFinished(e.stepRunId, e.result, e.verification ?? null);
      case 'approve': return this.onApprove(e.by, e.comment ?? null, e.deferUntil ?? null, e.stage ?? null, e.step ?? null);
      case 'reject': return this.onReject(e.by, e.comment ?? null, e.stage ?? null, e.step ?? null);
      case 'intervene': return this.onIntervene(e.action, e.by, e.stage ?? null, e.step ?? null);
      case 'promote': return this.onPromote(e.by, e.stage ?? null);
      case 'abort': return this.onAbort(e.by);
      case 'resume': return this.onResume(e.fromStage, e.by);
      case 'slotGranted': return this.onSlotGranted(e.slot);
      case 'superseded': return this.onSuperseded(e.by);
    }
  }

  /** Runs as far as possible, then brings every pair and the execution status up to date. */
  settle(): void {
    this.advance();
    this.sync();
  }

  private onTimer(key: string): void {
    if (this.terminal) return;
    const [kind, a1, a2, a3] = key.split(':');
    switch (kind) {
      case 'schedule': {
        const i = Number(a1);
        const a = this.stage(i)?.attempts[Number(a2) - 1];
        if (a && this.st.current === i && a.waiting === 'schedule') this.continueStart(i, a);
        return;
      }
      case 'retry': {
        const f = this.findRun(a1 ?? '');
        if (f && f.run.status === 'Waiting') {
          f.run.retryAt = null;
          this.queueTask(f.i, f.a, f.run);
        }
        return;
      }
      case 'approval': {
        const f = this.findRun(a1 ?? '');
        if (!f || f.run.type !== 'approval' || f.run.status !== 'Running') return;
        transitionStep(f.run, 'Expired', 'approval timed out');
        f.run.finishedAt = this.now;
        f.a.decision = 'Expired';
        f.a.listBroken = true;
        return;
      }
      case 'defer':
        return; // advance() sees that the deferral is over
      case 'intervention': {
        const f = this.findRun(a1 ?? '');
        if (!f || !f.run.intervention) return;
        const action = f.run.intervention.onTimeout ?? 'fail';
        this.resolveIntervention(f.i, f.a, f.run, action, 'timeout');
        return;
      }
      case 'wait': {
        const f = this.findRun(a1 ?? '');
        if (f && f.run.type === 'wait' && f.run.status === 'Running') {
          transitionStep(f.run, 'Succeeded', 'wait over');
          f.run.finishedAt = this.now;
        }
        return;
      }
      case 'pause': {
        const i = Number(a1);
        const a = this.stage(i)?.attempts[Number(a2) - 1];
        if (a?.paused && a.paused.phase === Number(a3)) a.paused = null;
        return;
      }
    }
  }

  private onTaskStarted(id: string, delegate: string | null, at: number | undefined): void {
    const f = this.findRun(id);
    if (!f) return;
    const { a, run } = f;
    if (run.status === 'Canceled' && !this.terminal) {
      // the cancel raced the start: say it again
      this.emit({ type: 'cancelTask', taskId: run.id, reason: 'canceled' });
      return;
    }
    if (run.status !== 'QueuedForAgent') return;
    transitionStep(run, 'Running', 'started on a delegate');
    run.startedAt = at ?? this.now;
    run.delegate = delegate;
    a.ran = true;
  }

  private onTaskFinished(id: string, result: TaskOutcome, verdict: VerificationVerdict | null): void {
    const f = this.findRun(id);
    if (!f) return;
    const { i, a, run } = f;
    if (isTerminalStep(run.status) || run.status === 'Waiting') return; // a duplicate, or canceled before
    run.finishedAt = result.finishedAt ?? this.now;
    run.startedAt = run.startedAt ?? result.startedAt ?? null;
    run.exitCode = result.exitCode ?? null;
    if (result.delegate) run.delegate = result.delegate;
    run.outputs = result.outputs ?? {};
    a.ran = true;
    let status = result.status;
    let error: StepError | null = result.error ? { kind: result.error.kind, message: result.error.message } : null;
    if (run.type === 'verify') {
      run.verification = verdict ?? (result.data as { verification?: unknown } | undefined)?.verification ?? null;
      const v = run.verification as VerificationVerdict | null;
      const cfg = this.stepDefOf(i, run).verify;
      if (status === 'Succeeded' && v) {
        // the failing metrics by name (the verdict's evidence and the step log say why)
        const failing = Array.isArray(v.metrics)
          ? (v.metrics as Array<{ name?: unknown; failed?: unknown; critical?: unknown }>).filter((m) => m.failed === true).map((m) => `${String(m.name)}${m.critical === true ? ' (critical)' : ''}`)
          : [];
        const why = failing.length > 0 ? `; failed: ${failing.join(', ')}` : typeof v.reason === 'string' && v.reason ? `: ${v.reason}` : '';
        if (v.verdict === 'Unhealthy') { status = 'Failed'; error = { kind: 'Verification', message: `verification failed: the canary is Unhealthy${typeof v.score === 'number' ? ` (score ${v.score})` : ''}${why}`.slice(0, 2000) }; }
        else if (v.verdict === 'NoData' && cfg?.failOnNoData) { status = 'Failed'; error = { kind: 'Verification', message: 'verification found no data (failOnNoData)' }; }
      }
    }
    if (status === 'Succeeded') {
      transitionStep(run, 'Succeeded', 'task succeeded');
      return;
    }
    if (run.cancelRequested || (a.aborting && !run.alwaysRun)) {
      run.error = error;
      transitionStep(run, 'Canceled', 'canceled by the abort');
      return;
    }
    this.failRun(i, a, run, error ?? { kind: status === 'Canceled' ? 'Canceled' : 'StepFailed', message: status === 'Canceled' ? 'the task was canceled' : 'the step failed' });
  }

  private onApprove(by: string, comment: string | null, deferUntil: number | null, stage: string | null, step: string | null): void {
    const { i, a, run } = this.pickApproval(stage, step);
    const ap = run.approval!;
    if (ap.disallowExecutor && by === this.st.executor) {
      throw new FerryError('FORBIDDEN', `"${by}" ran this execution and may not approve it (disallowExecutor)`);
    }
    if (ap.users && !ap.users.includes(by)) {
      throw new FerryError('FORBIDDEN', `"${by}" is not one of the approvers of ${this.stage(i).id}/${run.stepId} (${ap.users.join(', ')})`);
    }
    if (ap.decisions.some((d) => d.by === by)) throw new FerryError('WRONG_STATE', `"${by}" already approved ${this.stage(i).id}/${run.stepId}`);
    const defer = deferUntil !== null && deferUntil > this.now ? deferUntil : null;
    ap.decisions.push({ by, decision: 'approved', comment, at: this.now, deferUntil: defer });
    if (ap.decisions.filter((d) => d.decision === 'approved').length < ap.minimumCount) return;
    transitionStep(run, 'Succeeded', `approved by ${ap.decisions.map((d) => d.by).join(', ')}`);
    run.finishedAt = this.now;
    if (ap.timeoutAt !== null) this.emit({ type: 'clearTimer', key: `approval:${run.id}` });
    const until = Math.max(0, ...ap.decisions.map((d) => d.deferUntil ?? 0));
    if (until > this.now) {
      ap.deferUntil = until;
      this.emit({ type: 'setTimer', key: `defer:${run.id}`, at: until });
    }
    // an approval step before any delegate step: <NotDeployed, Approved> (or Deferred) shows
    // that it passed, before the steps after it queue
    if (!a.ran && this.stageDef(i).type !== 'approval' && until <= this.now) {
      this.moveAttempt(i, a, 'NotDeployed/Approved', `approved by ${by}`);
    }
  }

  private onReject(by: string, comment: string | null, stage: string | null, step: string | null): void {
    const { a, run } = this.pickApproval(stage, step);
    const ap = run.approval!;
    if (ap.users && !ap.users.includes(by)) throw new FerryError('FORBIDDEN', `"${by}" is not one of the approvers (${ap.users.join(', ')})`);
    ap.decisions.push({ by, decision: 'rejected', comment, at: this.now, deferUntil: null });
    transitionStep(run, 'Failed', `rejected by ${by}`);
    run.finishedAt = this.now;
    if (ap.timeoutAt !== null) this.emit({ type: 'clearTimer', key: `approval:${run.id}` });
    a.decision = 'Rejected';
    a.listBroken = true;
  }

  private pickApproval(stage: string | null, step: string | null): { i: number; a: AttemptState; run: StepRun } {
    this.requireActive('approve or reject');
    const waiting = this.activeRuns().filter(({ run }) => run.type === 'approval' && run.status === 'Running');
    return this.pickOne(waiting, stage, step, 'an approval');
  }

  private onIntervene(action: 'retry' | 'ignore' | 'abort' | 'rollback', by: string, stage: string | null, step: string | null): void {
    this.requireActive('intervene');
    const waiting: Array<{ i: number; a: AttemptState; run: StepRun | null }> = this.activeRuns().filter(({ run }) => run.intervention !== null);
    const i = this.st.current;
    if (i !== null) {
      const a = this.latest(i);
      if (a?.paused && step === null) waiting.push({ i, a, run: null });
    }
    const target = this.pickOne(waiting, stage, step, 'a manual intervention');
    if (target.run) {
      target.run.interventions.push({ by, action, at: this.now });
      this.resolveIntervention(target.i, target.a, target.run, action === 'rollback' ? 'stageRollback' : action, by);
      return;
    }
    // a paused canary phase
    const a = target.a;
    const phase = a.paused!.phase;
    this.emit({ type: 'clearTimer', key: `pause:${target.i}:${a.attempt}:${phase}` });
    a.paused = null;
    switch (action) {
      case 'ignore': return; // go on, as promote does
      case 'retry':
        a.pass++; a.node = 0; a.nodeStarted = false; a.pauseHandled = -1;
        return;
      case 'abort': this.abortExecution(by); return;
      case 'rollback':
        this.setFailure(a, 'stageRollback', { kind: 'StepFailed', message: `rolled back by ${by} during the pause of phase ${phase}` }, null);
        return;
    }
  }

  private resolveIntervention(i: number, a: AttemptState, run: StepRun, action: string, by: string): void {
    this.emit({ type: 'clearTimer', key: `intervention:${run.id}` });
    run.intervention = null;
    const error = run.error ?? { kind: 'StepFailed', message: 'the step failed' };
    switch (action) {
      case 'retry': this.retryRun(i, a, run, run.retries, 0); return;
      case 'ignore': transitionStep(run, 'Ignored', `ignored by ${by}`); a.partial = true; return;
      case 'abort': this.abortExecution(by); return;
      case 'stageRollback': this.setFailure(a, 'stageRollback', error, run); return;
      case 'pipelineRollback': this.setFailure(a, 'pipelineRollback', error, run); return;
      default: this.setFailure(a, 'fail', error, run); return;
    }
  }

  private onPromote(by: string, stage: string | null): void {
    this.requireActive('promote');
    const i = this.st.current;
    const a = i === null ? undefined : this.latest(i);
    if (i === null || !a?.paused || (stage !== null && this.stage(i).id !== stage)) {
      throw new FerryError('WRONG_STATE', 'no canary phase is paused');
    }
    this.emit({ type: 'clearTimer', key: `pause:${i}:${a.attempt}:${a.paused.phase}` });
    a.paused = null;
    void by;
  }

  private onAbort(by: string): void {
    this.requireActive('abort');
    if (this.st.abort) throw new FerryError('WRONG_STATE', `the execution is being aborted (by ${this.st.abort.by})`);
    this.abortExecution(by);
  }

  private onResume(fromStage: string, by: string): void {
    if (!RESUMABLE_EXECUTION.includes(this.st.status)) {
      throw new FerryError('WRONG_STATE', `only Failed, Aborted, Expired and Rejected executions can be resumed; this one is ${this.st.status}`);
    }
    const from = this.st.stages.findIndex((s) => s.id === fromStage);
    if (from < 0) throw new FerryError('INVALID_ARGUMENT', `no stage "${fromStage}" in this pipeline (${this.st.stages.map((s) => s.id).join(', ')})`);
    if (this.stage(from).attempts.length === 0) {
      throw new FerryError('WRONG_STATE', `stage "${fromStage}" never ran; resume from a stage that ran (${this.st.stages.filter((s) => s.attempts.length > 0).map((s) => s.id).join(', ')})`);
    }
    for (let j = from; j < this.st.stages.length; j++) transitionStage(this.stage(j), 'NotStarted', `resumed from ${fromStage} by ${by}`, this.now);
    this.st.abort = null;
    this.st.rollback = null;
    this.st.current = null;
    this.st.finishedAt = null;
    this.st.resumedFrom = { stage: fromStage, at: this.now, by };
    this.takeAccountSlot(`resumed from ${fromStage} by ${by}`);
  }

  private onSlotGranted(kind: 'account' | 'mapping'): void {
    const i = this.st.current;
    const a = i === null ? undefined : this.latest(i);
    if (kind === 'account') {
      if (this.st.accountSlot !== 'waiting' || this.terminal) {
        this.emit({ type: 'releaseSlot', slot: { kind: 'account' } }); // not wanted any more
        return;
      }
      this.st.accountSlot = 'held';
      transitionExecution(this.st, 'Running', 'the account has room', this.now);
      if (i !== null && a?.waiting === 'account') this.continueStart(i, a);
      return;
    }
    if (i === null || !a || a.waiting !== 'slot' || this.terminal) return;
    a.slot = 'held';
    this.continueStart(i, a);
  }

  private onSuperseded(by: string): void {
    const i = this.st.current;
    const a = i === null ? undefined : this.latest(i);
    if (this.terminal || i === null || !a || a.waiting !== 'slot') throw new FerryError('WRONG_STATE', 'only a run waiting behind another deployment can be superseded');
    this.releaseMappingSlot(i, a);
    this.moveAttempt(i, a, 'NotDeployed/Canceled', `superseded by ${by}`);
    a.waiting = null;
    transitionStage(this.stage(i), 'Canceled', `superseded by ${by}`, this.now);
    this.st.supersededBy = by;
    this.st.current = null;
    this.finishExecution('Superseded', `superseded by ${by}`);
  }

  private requireActive(what: string): void {
    if (this.terminal) throw new FerryError('WRONG_STATE', `cannot ${what}: the execution is ${this.st.status}`);
  }

  /** Non-terminal runs (and failed ones awaiting an intervention) of the attempts under way. */
  private activeRuns(): Array<{ i: number; a: AttemptState; run: StepRun }> {
    const out: Array<{ i: number; a: AttemptState; run: StepRun }> = [];
    const indices = [this.st.current, this.st.rollback?.current ?? null].filter((x): x is number => x !== null);
    for (const i of indices) {
      const a = this.latest(i);
      if (a) for (const run of a.runs) out.push({ i, a, run });
    }
    return out;
  }

  private pickOne<T extends { i: number; a: AttemptState; run: StepRun | null }>(list: T[], stage: string | null, step: string | null, what: string): T {
    const matching = list.filter((x) => (stage === null || this.stage(x.i).id === stage) && (step === null || x.run?.stepId === step));
    const describe = (x: T) => ({ stage: this.stage(x.i).id, step: x.run?.stepId ?? null });
    if (matching.length === 0) {
      const where = [stage && `stage ${stage}`, step && `step ${step}`].filter(Boolean).join(', ');
      throw new FerryError('WRONG_STATE', `nothing waits for ${what}${where ? ` at ${where}` : ''}`, list.length ? { waiting: list.map(describe) } : undefined);
    }
    if (matching.length > 1) {
      const names = matching.map((x) => { const d = describe(x); return d.step ? `${d.stage}/${d.step}` : d.stage; });
      throw new FerryError('AMBIGUOUS', `more than one waits for ${what}: ${names.join(', ')}; name one with --stage and --step`, { waiting: matching.map(describe) });
    }
    return matching[0]!;
  }

  describeRun(id: string): { stageIndex: number; stage: StageDefinition; attempt: AttemptState; run: StepRun; step: StepDefinition } | null {
    const f = this.findRun(id);
    if (!f) return null;
    return { stageIndex: f.i, stage: this.stageDef(f.i), attempt: f.a, run: f.run, step: this.stepDefOf(f.i, f.run) };
  }

  private findRun(id: string): { i: number; a: AttemptState; run: StepRun } | null {
    for (let i = 0; i < this.st.stages.length; i++) {
      for (const a of this.stage(i).attempts) {
        const run = a.runs.find((r) => r.id === id);
        if (run) return { i, a, run };
      }
    }
    return null;
  }

  // ---- driving ----

  private advance(): void {
    for (let guard = 0; guard < 100_000; guard++) {
      if (this.terminal) return;
      if (this.st.rollback) {
        if (!this.driveRollback()) return;
        continue;
      }
      if (this.st.current !== null) {
        if (!this.driveStage(this.st.current)) return;
        continue;
      }
      const next = this.st.stages.findIndex((s) => s.status === 'NotStarted');
      if (next < 0) {
        const partial = this.st.stages.some((s) => s.status === 'PartiallySucceeded');
        this.finishExecution(partial ? 'PartiallySucceeded' : 'Succeeded', 'every stage ran');
        return;
      }
      this.startStage(next);
    }
    throw new Error(`engine: execution ${this.st.id} did not settle`);
  }

  /** Takes the account's running slot, or queues the execution behind the account's limit. */
  takeAccountSlot(reason: string): void {
    const slot: Slot = { kind: 'account' };
    if (this.ctx.slotFree(slot)) {
      this.emit({ type: 'acquireSlot', slot });
      this.st.accountSlot = 'held';
      transitionExecution(this.st, 'Running', reason, this.now);
    } else {
      this.emit({ type: 'requestSlot', slot });
      this.st.accountSlot = 'waiting';
      transitionExecution(this.st, 'Queued', `${reason}; the account's limit of running executions is reached`, this.now);
    }
  }

  private startStage(i: number): void {
    const def = this.stageDef(i);
    const stage = this.stage(i);
    if (def.when !== null && !this.evalWhen(def.when, i, null)) {
      transitionStage(stage, 'Skipped', `when is false: ${def.when}`, this.now);
      return;
    }
    const a: AttemptState = {
      attempt: stage.attempts.length + 1, status: null, operationStatus: null, history: [], startedAt: this.now, finishedAt: null,
      waiting: null, slot: 'none', ran: false, phase: 0, list: 'main', node: 0, nodeStarted: false, pass: 1, listBroken: false,
      failure: null, decision: null, aborting: false, partial: false, paused: null, pauseHandled: -1, rollingBack: false,
      rolledBack: false, rollbackArtifact: null, rollbackFailed: false, color: null, previousColor: null, runs: [],
    };
    stage.attempts.push(a);
    this.st.current = i;
    if (this.st.accountSlot === 'waiting') {
      a.waiting = 'account';
      transitionStage(stage, 'Queued', "the account's limit of running executions is reached", this.now);
      return;
    }
    this.continueStart(i, a);
  }

  /** Past the account's limit: the schedule, then the mapping's concurrency, then work. */
  private continueStart(i: number, a: AttemptState): void {
    const def = this.stageDef(i);
    const stage = this.stage(i);
    a.waiting = null;
    if (def.scheduleAt !== null && def.scheduleAt > this.now) {
      a.waiting = 'schedule';
      this.emit({ type: 'setTimer', key: `schedule:${i}:${a.attempt}`, at: def.scheduleAt });
      transitionStage(stage, 'Scheduled', `scheduled for ${new Date(def.scheduleAt).toISOString()}`, this.now);
      return;
    }
    if (def.deploy && a.slot === 'none') {
      const slot = this.mappingSlot(i);
      if (this.ctx.slotFree(slot)) {
        this.emit({ type: 'acquireSlot', slot });
        a.slot = 'held';
      } else {
        this.emit({ type: 'requestSlot', slot });
        a.slot = 'waiting';
        a.waiting = 'slot';
        transitionStage(stage, 'Queued', `waiting behind another deployment to ${mappingKey(def.deploy)}`, this.now);
        return;
      }
    }
    if (def.strategy.type === 'blueGreen' && def.deploy) {
      const live = this.ctx.liveColor?.(def.deploy) ?? null;
      a.previousColor = live;
      a.color = live === 'blue' ? 'green' : 'blue';
    }
    transitionStage(stage, 'InProgress', 'started', this.now);
  }

  private mappingSlot(i: number): Slot {
    const d = this.stageDef(i).deploy!;
    const env = this.def.environments[d.environment];
    return {
      kind: 'mapping', key: mappingKey(d), mapping: { service: d.service, environment: d.environment, infrastructure: d.infrastructure },
      capacity: env?.concurrency ?? 1, deployLatestOnly: env?.deployLatestOnly ?? false, stage: this.stage(i).id,
    };
  }

  /** Returns true when the stage's attempt ended. */
  private driveStage(i: number): boolean {
    const a = this.latest(i)!;
    const def = this.stageDef(i);
    if (a.waiting) return false;
    for (;;) {
      if (!this.driveList(i, a)) return false;
      if (a.list === 'rollback') {
        a.rollingBack = false;
        a.rolledBack = !a.rollbackFailed && !a.aborting;
        if (a.aborting) this.finishAborted(i, a);
        else this.finishFailed(i, a);
        return true;
      }
      if (a.aborting) { this.finishAborted(i, a); return true; }
      if (a.decision) { this.finishDecision(i, a); return true; }
      if (a.failure) {
        if (a.failure.action !== 'fail' && this.startRollbackList(i, a)) continue;
        this.finishFailed(i, a);
        return true;
      }
      if (a.list === 'main' && def.strategy.type === 'blueGreen' && def.swapSteps.length > 0) {
        a.list = 'swap'; a.node = 0; a.nodeStarted = false;
        continue;
      }
      if (def.strategy.type === 'canary' && a.phase < def.strategy.phases.length - 1) {
        if (a.paused) return false;
        const pause = def.strategy.phases[a.phase]!.pause;
        if (pause && a.pauseHandled !== a.phase) {
          a.pauseHandled = a.phase;
          const until = pause.durationMs === null ? null : this.now + pause.durationMs;
          a.paused = { phase: a.phase, since: this.now, until };
          if (until !== null) this.emit({ type: 'setTimer', key: `pause:${i}:${a.attempt}:${a.phase}`, at: until });
          return false;
        }
        this.nextPhase(i, a);
        continue;
      }
      this.finishSucceeded(i, a);
      return true;
    }
  }

  private nextPhase(i: number, a: AttemptState): void {
    if (a.ran) {
      this.moveAttempt(i, a, 'InProgress/PhaseSucceeded', `phase ${a.phase} passed`);
    }
    a.phase++;
    a.node = 0;
    a.nodeStarted = false;
    a.pauseHandled = -1;
  }

  private startRollbackList(i: number, a: AttemptState): boolean {
    const nodes = this.listNodes(i, { ...a, list: 'rollback' });
    if (nodes.length === 0) return false;
    a.list = 'rollback';
    a.node = 0;
    a.nodeStarted = false;
    a.listBroken = false;
    a.rollingBack = true;
    a.rollbackArtifact = this.rollbackArtifact(i);
    return true;
  }

  /** pipelineRollback: earlier completed deploy stages, newest first. Returns false when blocked. */
  private driveRollback(): boolean {
    const rb = this.st.rollback!;
    for (;;) {
      if (rb.current === null) {
        const next = rb.queue.shift();
        if (next === undefined) {
          this.st.rollback = null;
          this.finishExecution(this.st.abort ? 'Aborted' : 'Failed', this.st.abort ? `aborted by ${this.st.abort.by}` : 'a stage failed; the pipeline was rolled back');
          return true;
        }
        rb.current = next;
        const a = this.latest(next)!;
        a.list = 'rollback';
        a.node = 0;
        a.nodeStarted = false;
        a.listBroken = false;
        a.rollingBack = true;
        // blue/green: previousColor stays the colour live before this stage; the swap back goes there
        a.rollbackArtifact = this.rollbackArtifact(next);
      }
      const i = rb.current;
      const a = this.latest(i)!;
      if (!this.driveList(i, a)) return false;
      a.rollingBack = false;
      a.rolledBack = !a.rollbackFailed && !a.aborting;
      this.recordDeployment(i, a.rolledBack ? 'rolledBack' : 'failed');
      const d = this.stageDef(i);
      if (d.strategy.type === 'blueGreen' && d.deploy && a.rolledBack && a.previousColor) {
        this.emit({ type: 'setLiveColor', mapping: d.deploy, color: a.previousColor });
      }
      rb.current = null;
    }
  }

  /** Returns true when every node of the attempt's current list has settled. */
  private driveList(i: number, a: AttemptState): boolean {
    const nodes = this.listNodes(i, a);
    while (a.node < nodes.length) {
      if (!a.nodeStarted) {
        a.nodeStarted = true;
        this.startNode(i, a, nodes[a.node]!);
      }
      if (!this.currentRuns(a).every((r) => this.settled(a, r))) return false;
      a.node++;
      a.nodeStarted = false;
    }
    return true;
  }

  private settled(a: AttemptState, r: StepRun): boolean {
    switch (r.status) {
      case 'Succeeded': return !(r.approval?.deferUntil && r.approval.deferUntil > this.now && !a.aborting);
      case 'Failed': return r.intervention === null;
      case 'Skipped': case 'Ignored': case 'Canceled': case 'Expired': return true;
      default: return false;
    }
  }

  /** The latest try of each step of the current node. */
  private currentRuns(a: AttemptState): StepRun[] {
    const byStep = new Map<string, StepRun>();
    for (const r of a.runs) {
      if (r.list !== a.list || r.phase !== a.phase || r.pass !== a.pass || r.node !== a.node) continue;
      const prev = byStep.get(r.stepId);
      if (!prev || r.try > prev.try) byStep.set(r.stepId, r);
    }
    return [...byStep.values()];
  }

  /** The nodes of a list, including the synthetic approval and verification steps. */
  private listNodes(i: number, a: Pick<AttemptState, 'list' | 'phase'>): StepNode[] {
    const def = this.stageDef(i);
    if (def.type === 'approval') {
      if (a.list !== 'main') return [];
      return [{ parallel: false, steps: [{ ...stepDefaults(APPROVAL_STEP_ID), type: 'approval', approval: def.approvers!, timeoutMs: def.timeoutMs }] }];
    }
    const verifyNode = (cfg: VerifyConfig): StepNode => ({ parallel: false, steps: [{ ...stepDefaults(VERIFY_STEP_ID), type: 'verify', verify: cfg }] });
    switch (a.list) {
      // blue/green: the swap back to the colour that was live (nothing to swap back to on a first deployment)
      case 'rollback': return def.strategy.type === 'blueGreen' ? (this.latest(i)?.previousColor ? def.swapSteps : []) : def.rollbackSteps;
      case 'swap': return def.swapSteps;
      case 'main': {
        const s = def.strategy;
        const verify = s.type === 'canary' ? s.phases[a.phase]?.verify ?? null : s.type === 'blueGreen' ? s.verify : null;
        return verify ? [...def.steps, verifyNode(verify)] : def.steps;
      }
    }
  }

  private stepDefOf(i: number, run: StepRun): StepDefinition {
    const nodes = this.listNodes(i, { list: run.list, phase: run.phase });
    const step = nodes[run.node]?.steps.find((s) => s.id === run.stepId);
    if (!step) throw new Error(`engine: no step ${run.stepId} in ${this.stage(i).id}/${run.list}[${run.node}]`);
    return step;
  }

  private startNode(i: number, a: AttemptState, node: StepNode): void {
    for (const step of node.steps) {
      if (a.listBroken && !step.alwaysRun) continue;
      const skip = step.when !== null && !this.evalWhen(step.when, i, a);
      this.createRun(i, a, step, { skip, try: 1, retries: {}, retryAt: null, list: a.list, phase: a.phase, pass: a.pass, node: a.node });
    }
  }

  private createRun(
    i: number, a: AttemptState, step: StepDefinition,
    o: { skip: boolean; try: number; retries: Record<string, number>; retryAt: number | null; list: ListName; phase: number; pass: number; node: number },
  ): StepRun {
    const run: StepRun = {
      id: `${this.st.id}.${++this.st.seq}`, stepId: step.id, type: step.type, list: o.list, phase: o.phase, pass: o.pass,
      node: o.node, try: o.try, alwaysRun: step.alwaysRun, task: !['approval', 'wait'].includes(step.type),
      status: 'Waiting', queuedAt: null, startedAt: null, finishedAt: null, exitCode: null, delegate: null, error: null,
      retryAt: null, outputs: {}, retries: o.retries, intervention: null, interventions: [], approval: null, waitUntil: null,
      verification: null, cancelRequested: false,
      color: o.list === 'rollback' && this.stageDef(i).strategy.type === 'blueGreen' ? a.previousColor : a.color,
    };
    a.runs.push(run);
    if (o.skip) {
      run.status = 'Skipped';
      run.finishedAt = this.now;
      return run;
    }
    switch (step.type) {
      case 'approval': {
        const ap = step.approval!;
        run.status = 'Running';
        run.startedAt = this.now;
        const timeoutAt = step.timeoutMs !== null ? this.now + step.timeoutMs : null;
        run.approval = { minimumCount: ap.minimumCount, disallowExecutor: ap.disallowExecutor, users: ap.users, decisions: [], deferUntil: null, timeoutAt };
        if (timeoutAt !== null) this.emit({ type: 'setTimer', key: `approval:${run.id}`, at: timeoutAt });
        break;
      }
      case 'wait': {
        const ms = step.wait?.durationMs ?? 0;
        run.startedAt = this.now;
        a.ran = true;
        if (ms <= 0) {
          run.status = 'Succeeded';
          run.finishedAt = this.now;
        } else {
          run.status = 'Running';
          run.waitUntil = this.now + ms;
          this.emit({ type: 'setTimer', key: `wait:${run.id}`, at: run.waitUntil });
        }
        break;
      }
      default:
        if (o.retryAt !== null && o.retryAt > this.now) {
          run.retryAt = o.retryAt;
          this.emit({ type: 'setTimer', key: `retry:${run.id}`, at: o.retryAt });
        } else {
          this.queueTask(i, a, run);
        }
    }
    return run;
  }

  private queueTask(i: number, a: AttemptState, run: StepRun): void {
    const step = this.stepDefOf(i, run);
    const def = this.stageDef(i);
    transitionStep(run, 'QueuedForAgent', 'queued');
    run.queuedAt = this.now;
    const env = this.stepEnv(i, a, run, step);
    const task: TaskRequest = {
      taskId: run.id,
      executionId: this.st.id,
      account: this.st.account,
      stage: def.id,
      step: step.id,
      attempt: a.attempt,
      try: run.try,
      phase: def.strategy.type === 'canary' ? run.phase : null,
      kind: step.type === 'shell' ? 'shell' : step.type === 'http' ? 'http' : step.type === 'verify' ? 'verify' : 'noop',
      spec: this.taskSpec(step, env),
      env,
      secretNames: [...step.secrets, ...(step.verify?.source.bearerTokenSecret ? [step.verify.source.bearerTokenSecret] : [])],
      selectors: [...new Set([...def.delegateSelectors, ...step.delegateSelectors])],
      timeoutMs: step.timeoutMs ?? (step.verify ? step.verify.durationMs + 120_000 : null),
      queueTimeoutMs: step.queueTimeoutMs ?? def.queueTimeoutMs ?? DEFAULT_QUEUE_TIMEOUT_MS,
    };
    this.emit({ type: 'enqueueTask', task });
  }

  private taskSpec(step: StepDefinition, env: Record<string, string>): TaskSpec {
    const expand = (s: string) => s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m, name: string) => env[name] ?? m);
    switch (step.type) {
      case 'shell':
        return { kind: 'shell', script: step.shell!.script, ...(step.shell!.shell ? { shell: step.shell!.shell } : {}) };
      case 'http': {
        const h = step.http!;
        return {
          kind: 'http', url: expand(h.url), method: h.method,
          headers: Object.fromEntries(Object.entries(h.headers).map(([k, v]) => [k, expand(v)])),
          ...(h.body !== null ? { body: expand(h.body) } : {}),
          ...(h.expectStatus ? { expectStatus: h.expectStatus } : {}),
          ...(h.expectBody !== null ? { expectBody: h.expectBody } : {}),
        };
      }
      case 'verify': {
        const v = step.verify!;
        // ${FERRY_VAR_X} in the url and queries, as in an http step; `$role` is the delegate's.
        // The bearer token travels as a secret of this task (TaskRequest.secretNames), never in
        // the stored spec: the spec names it (bearerTokenSecret) for the delegate to look up in
        // the assignment's secrets.
        const named = v.source.bearerTokenSecret ? { bearerTokenSecret: v.source.bearerTokenSecret } : {};
        return {
          kind: 'verify', source: { type: 'prometheus', url: expand(v.source.url), ...named },
          metrics: v.metrics.map((m) => ({ name: m.name, query: expand(m.query) })),
          roles: ['baseline', 'canary'], durationMs: v.durationMs, intervalMs: v.intervalMs,
        };
      }
      default: {
        const n = step.noop ?? { sleepMs: 0, lines: 0, fail: false };
        return { kind: 'noop', sleepMs: n.sleepMs, lines: n.lines, fail: n.fail };
      }
    }
  }

  /** Every FERRY_* variable of CONTRACT §5 (FERRY_OUTPUT is the delegate's: a file it owns). */
  private stepEnv(i: number, a: AttemptState, run: StepRun, step: StepDefinition): Record<string, string> {
    const def = this.stageDef(i);
    const env: Record<string, string> = {
      FERRY_EXECUTION_ID: this.st.id,
      FERRY_PIPELINE: this.st.pipeline,
      FERRY_STAGE_ID: def.id,
      FERRY_STEP_ID: step.id,
      FERRY_ATTEMPT: String(a.attempt),
      FERRY_TRY: String(run.try),
      FERRY_ARTIFACT: this.st.artifact ?? '',
      FERRY_ROLLBACK_ARTIFACT: '',
      FERRY_CANARY_WEIGHT: '',
    };
    if (def.deploy) {
      env.FERRY_SERVICE = def.deploy.service;
      env.FERRY_ENVIRONMENT = def.deploy.environment;
      env.FERRY_ENVIRONMENT_TYPE = def.deploy.environmentType;
      env.FERRY_INFRASTRUCTURE = def.deploy.infrastructure;
      env.FERRY_CANARY_WEIGHT = def.strategy.type === 'canary' ? String(def.strategy.phases[run.phase]?.weight ?? 100) : '100';
      if (run.list === 'rollback') {
        env.FERRY_ROLLBACK_ARTIFACT = a.rollbackArtifact ?? '';
        if (a.rollbackArtifact === null) {
          this.emit({ type: 'systemLog', stepRunId: run.id, line: `no earlier successful deployment of ${this.rollbackScopeText(i)} on ${mappingKey(def.deploy)}: FERRY_ROLLBACK_ARTIFACT is empty` });
        } else {
          this.emit({ type: 'systemLog', stepRunId: run.id, line: `rolling back to ${a.rollbackArtifact}, the last successful deployment of ${this.rollbackScopeText(i)} on ${mappingKey(def.deploy)}` });
        }
      } else {
        env.FERRY_ROLLBACK_ARTIFACT = this.rollbackArtifact(i) ?? '';
      }
      if (run.color) env.FERRY_COLOR = run.color;
    }
    for (const [name, v] of Object.entries(this.st.inputs)) env[`FERRY_VAR_${envName(name)}`] = String(v);
    for (const [stepId, outputs] of this.visibleOutputs(i, a).merged) {
      for (const [k, v] of Object.entries(outputs)) env[`FERRY_OUT_${envName(stepId)}_${k.toUpperCase().replace(/[^A-Z0-9_]/g, '_')}`] = v;
    }
    return { ...env, ...step.env };
  }

  private rollbackScopeText(i: number): string {
    return this.stageDef(i).deploy?.rollbackScope === 'infrastructure' ? 'any pipeline' : `pipeline ${this.st.pipeline}`;
  }

  private rollbackArtifact(i: number): string | null {
    const d = this.stageDef(i).deploy;
    if (!d) return null;
    return pickRollbackArtifact(this.ctx.deployments(d), {
      pipeline: this.st.pipeline, scope: d.rollbackScope, executionId: this.st.id, exclude: this.st.artifact,
    });
  }

  /**
   * Outputs visible to a step of stage i: the latest attempt of every earlier stage that
   * ran in this run of the execution (not NotStarted, not Skipped), then the steps of the
   * current attempt; later ones win. After a resume, the resumed stages' earlier attempts
   * are not visible: a new attempt starts with no outputs of its own.
   */
  private visibleOutputs(i: number, a: AttemptState | null): { merged: Map<string, Record<string, string>>; byStage: Map<string, Map<string, Record<string, string>>> } {
    const merged = new Map<string, Record<string, string>>();
    const byStage = new Map<string, Map<string, Record<string, string>>>();
    const take = (stageId: string, att: AttemptState) => {
      const m = byStage.get(stageId) ?? new Map<string, Record<string, string>>();
      byStage.set(stageId, m);
      for (const r of att.runs) {
        if (r.list === 'rollback' || (r.status !== 'Succeeded' && r.status !== 'Ignored') || Object.keys(r.outputs).length === 0) continue;
        m.set(r.stepId, r.outputs);
        merged.delete(r.stepId); // keep insertion order = recency
        merged.set(r.stepId, r.outputs);
      }
    };
    for (let j = 0; j < i; j++) {
      const s = this.stage(j);
      if (s.status === 'NotStarted' || s.status === 'Skipped') continue;
      const att = this.latest(j);
      if (att) take(s.id, att);
    }
    if (a) take(this.stage(i).id, a);
    return { merged, byStage };
  }

  private evalWhen(src: string, i: number, a: AttemptState | null): boolean {
    const outs = this.visibleOutputs(i, a);
    const lookup = (m: Record<string, string> | undefined, key: string): string | null => {
      if (!m) return null;
      if (key in m) return m[key]!;
      const k = Object.keys(m).find((x) => x.toLowerCase() === key.toLowerCase());
      return k === undefined ? null : m[k]!;
    };
    try {
      return evaluateCondition(src, {
        artifact: this.st.artifact,
        vars: this.st.inputs as Record<string, Value>,
        out: (stage, step, key) => lookup(stage === null ? outs.merged.get(step) : outs.byStage.get(stage)?.get(step), key),
      });
    } catch {
      return false; // checked at apply; a file stored before a grammar change reads as false
    }
  }

  // ---- failures ----

  private failRun(i: number, a: AttemptState, run: StepRun, error: StepError): void {
    run.error = error;
    const step = this.stepDefOf(i, run);
    if (step.continueOnError) {
      transitionStep(run, 'Ignored', `failed (${error.kind}); continueOnError`);
      a.partial = true;
      return;
    }
    const match = this.findStrategy(i, run, step, error.kind);
    if (!match) {
      transitionStep(run, 'Failed', `failed (${error.kind}); no failure strategy`);
      this.setFailure(a, 'fail', error, run);
      return;
    }
    const { strategy, key } = match;
    switch (strategy.action) {
      case 'retry': {
        transitionStep(run, 'Failed', `failed (${error.kind}); retry`);
        const used = run.retries[key] ?? 0;
        const interval = strategy.intervalsMs[Math.min(used, strategy.intervalsMs.length - 1)] ?? 0;
        this.retryRun(i, a, run, { ...run.retries, [key]: used + 1 }, interval);
        return;
      }
      case 'ignore':
        transitionStep(run, 'Ignored', `failed (${error.kind}); ignore`);
        a.partial = true;
        return;
      case 'manualIntervention': {
        transitionStep(run, 'Failed', `failed (${error.kind}); manual intervention`);
        const timeoutAt = strategy.timeoutMs !== null ? this.now + strategy.timeoutMs : null;
        run.intervention = { since: this.now, timeoutAt, onTimeout: strategy.onTimeout };
        if (timeoutAt !== null) this.emit({ type: 'setTimer', key: `intervention:${run.id}`, at: timeoutAt });
        return;
      }
      case 'abort':
        transitionStep(run, 'Failed', `failed (${error.kind}); abort`);
        this.abortExecution(`failure strategy of ${this.stage(i).id}/${run.stepId}`);
        return;
      case 'stageRollback':
      case 'pipelineRollback':
        transitionStep(run, 'Failed', `failed (${error.kind}); ${strategy.action}`);
        this.setFailure(a, strategy.action, error, run);
        return;
    }
  }

  private retryRun(i: number, a: AttemptState, run: StepRun, retries: Record<string, number>, intervalMs: number): void {
    const step = this.stepDefOf(i, run);
    this.createRun(i, a, step, {
      skip: false, try: run.try + 1, retries, retryAt: intervalMs > 0 ? this.now + intervalMs : null,
      list: run.list, phase: run.phase, pass: run.pass, node: run.node,
    });
  }

  /** A step's own strategies, then its stage's; a retry whose count is used up falls through. */
  private findStrategy(i: number, run: StepRun, step: StepDefinition, kind: string): { strategy: FailureStrategy; key: string } | null {
    const scopes: Array<[string, FailureStrategy[]]> = [['step', step.failureStrategies]];
    // rollback steps use their own strategies only: a stage's strategy would roll back again
    if (run.list !== 'rollback') scopes.push(['stage', this.stageDef(i).failureStrategies]);
    for (const [scope, list] of scopes) {
      for (const [j, s] of list.entries()) {
        if (!s.on.includes('AllErrors') && !(s.on as string[]).includes(kind)) continue;
        const key = `${scope}:${j}`;
        if (s.action === 'retry' && (run.retries[key] ?? 0) >= s.count) continue;
        // a rollback step that fails does not roll back again: it fails
        if (run.list === 'rollback' && (s.action === 'stageRollback' || s.action === 'pipelineRollback')) return null;
        return { strategy: s, key };
      }
    }
    return null;
  }

  private setFailure(a: AttemptState, action: 'fail' | 'stageRollback' | 'pipelineRollback', error: StepError, run: StepRun | null): void {
    a.listBroken = true;
    if (run?.list === 'rollback' || a.list === 'rollback') {
      a.rollbackFailed = true;
      return;
    }
    if (!a.failure) a.failure = { action, kind: error.kind, message: error.message, stepId: run?.stepId ?? null };
    else if (SEVERITY[action] > SEVERITY[a.failure.action]) a.failure.action = action;
  }

  // ---- abort ----

  private abortExecution(by: string): void {
    if (this.st.abort) return;
    this.st.abort = { by, at: this.now };
    if (this.st.rollback) this.st.rollback.queue = [];
    const indices = [this.st.current, this.st.rollback?.current ?? null].filter((x): x is number => x !== null);
    for (const i of indices) {
      const a = this.latest(i)!;
      if (a.waiting) {
        // nothing ran: <NotDeployed, Canceled> straight from the waiting pair
        if (a.waiting === 'schedule') this.emit({ type: 'clearTimer', key: `schedule:${i}:${a.attempt}` });
        this.finishAborted(i, a);
        a.waiting = null;
        continue;
      }
      this.cancelAttempt(i, a, by);
    }
  }

  /** Cancels what runs; alwaysRun steps that run go on, and later ones still start. */
  private cancelAttempt(i: number, a: AttemptState, by: string): void {
    a.aborting = true;
    a.listBroken = true;
    if (a.paused) {
      this.emit({ type: 'clearTimer', key: `pause:${i}:${a.attempt}:${a.paused.phase}` });
      a.paused = null;
    }
    for (const r of a.runs) {
      if (r.intervention) {
        this.emit({ type: 'clearTimer', key: `intervention:${r.id}` });
        r.intervention = null;
      }
      if (r.approval?.deferUntil && r.approval.deferUntil > this.now) this.emit({ type: 'clearTimer', key: `defer:${r.id}` });
      if (isTerminalStep(r.status) || r.alwaysRun) continue;
      const reason = `aborted by ${by}`;
      if (r.status === 'Waiting') {
        this.emit({ type: 'clearTimer', key: `retry:${r.id}` });
        transitionStep(r, 'Canceled', reason);
        r.finishedAt = this.now;
      } else if (r.status === 'QueuedForAgent') {
        this.emit({ type: 'cancelTask', taskId: r.id, reason });
        transitionStep(r, 'Canceled', reason);
        r.finishedAt = this.now;
      } else if (r.task) {
        // running on a delegate: Canceled when its result comes back
        r.cancelRequested = true;
        this.emit({ type: 'cancelTask', taskId: r.id, reason });
      } else {
        if (r.type === 'approval') this.emit({ type: 'clearTimer', key: `approval:${r.id}` });
        if (r.type === 'wait') this.emit({ type: 'clearTimer', key: `wait:${r.id}` });
        transitionStep(r, 'Canceled', reason);
        r.finishedAt = this.now;
      }
    }
  }

  // ---- endings ----

  private finishSucceeded(i: number, a: AttemptState): void {
    const partial = a.partial;
    this.moveAttempt(i, a, partial ? 'PartiallySucceeded/PhasePartiallySucceeded' : 'Succeeded/Approved', partial ? 'a step failed and was ignored' : 'every step succeeded');
    transitionStage(this.stage(i), partial ? 'PartiallySucceeded' : 'Succeeded', 'attempt ended', this.now);
    const def = this.stageDef(i);
    if (def.deploy) {
      this.recordDeployment(i, 'succeeded');
      if (def.strategy.type === 'blueGreen' && a.color) {
        this.emit({ type: 'setLiveColor', mapping: def.deploy, color: a.color });
      }
    }
    this.releaseMappingSlot(i, a);
    this.st.current = null;
  }

  private finishFailed(i: number, a: AttemptState): void {
    const gates = a.failure?.kind === 'Verification';
    this.moveAttempt(i, a, gates ? 'Failed/GatesFailed' : 'Failed/PhaseFailed', a.failure ? `${a.failure.stepId ?? 'stage'}: ${a.failure.message}` : 'failed');
    transitionStage(this.stage(i), 'Failed', 'attempt failed', this.now);
    if (this.stageDef(i).deploy && a.ran) this.recordDeployment(i, a.rolledBack ? 'rolledBack' : 'failed');
    const bg = this.stageDef(i).strategy.type === 'blueGreen';
    if (bg && a.rolledBack && a.previousColor && this.stageDef(i).deploy) {
      this.emit({ type: 'setLiveColor', mapping: this.stageDef(i).deploy!, color: a.previousColor });
    }
    this.releaseMappingSlot(i, a);
    this.st.current = null;
    if (a.failure?.action === 'pipelineRollback') {
      const queue: number[] = [];
      for (let j = i - 1; j >= 0; j--) {
        const s = this.stage(j);
        const prev = this.latest(j);
        const def = this.stageDef(j);
        if (!def.deploy || !prev || (s.status !== 'Succeeded' && s.status !== 'PartiallySucceeded') || prev.rolledBack) continue;
        if (this.listNodes(j, { list: 'rollback', phase: prev.phase }).length === 0) continue;
        queue.push(j);
      }
      if (queue.length > 0) {
        this.st.rollback = { queue, current: null };
        return;
      }
    }
    this.finishExecution('Failed', `stage ${this.stage(i).id} failed`);
  }

  private finishDecision(i: number, a: AttemptState): void {
    const decision = a.decision!;
    this.moveAttempt(i, a, a.ran ? 'Failed/Rejected' : 'NotDeployed/Rejected', decision === 'Rejected' ? 'approval rejected' : 'approval timed out');
    transitionStage(this.stage(i), decision, decision === 'Rejected' ? 'approval rejected' : 'approval timed out', this.now);
    if (this.stageDef(i).deploy && a.ran) this.recordDeployment(i, 'failed');
    this.releaseMappingSlot(i, a);
    this.st.current = null;
    this.finishExecution(decision, decision === 'Rejected' ? 'an approval was rejected' : 'an approval timed out');
  }

  private finishAborted(i: number, a: AttemptState): void {
    const by = this.st.abort?.by ?? 'unknown';
    if (!isTerminalAttempt(a)) {
      this.moveAttempt(i, a, a.ran ? 'Failed/Canceled' : 'NotDeployed/Canceled', `aborted by ${by}`);
      transitionStage(this.stage(i), 'Canceled', `aborted by ${by}`, this.now);
      this.releaseMappingSlot(i, a);
    }
    if (this.st.current === i) this.st.current = null;
    if (this.st.rollback) return; // driveRollback ends the execution
    this.finishExecution('Aborted', `aborted by ${by}`);
  }

  private releaseMappingSlot(i: number, a: AttemptState): void {
    if (a.slot === 'none') return;
    this.emit({ type: 'releaseSlot', slot: this.mappingSlot(i) });
    a.slot = 'none';
  }

  private recordDeployment(i: number, status: 'succeeded' | 'failed' | 'rolledBack'): void {
    const d = this.stageDef(i).deploy;
    if (!d || !this.st.artifact) return;
    this.emit({
      type: 'recordDeployment', mapping: { service: d.service, environment: d.environment, infrastructure: d.infrastructure },
      pipeline: this.st.pipeline, artifact: this.st.artifact, stage: this.stage(i).id, status,
    });
  }

  private finishExecution(status: ExecutionStatus, reason: string): void {
    transitionExecution(this.st, status, reason, this.now);
    this.st.finishedAt = this.now;
    if (this.st.accountSlot !== 'none') {
      this.emit({ type: 'releaseSlot', slot: { kind: 'account' } });
      this.st.accountSlot = 'none';
    }
    this.emit({ type: 'finished', status });
  }

  // ---- pairs ----

  private sync(): void {
    let paused = false;
    for (let i = 0; i < this.st.stages.length; i++) {
      const a = this.latest(i);
      if (!a || isTerminalAttempt(a)) continue;
      if (this.stage(i).status === 'NotStarted' || this.stage(i).status === 'Skipped') continue;
      this.syncAttempt(i, a);
      if (a.operationStatus === 'ManualInterventionPending') paused = true;
    }
    if (this.terminal) return;
    const target: ExecutionStatus = this.st.accountSlot === 'waiting' ? 'Queued' : paused ? 'Paused' : 'Running';
    transitionExecution(this.st, target, paused ? 'waits for a manual intervention or a promote' : 'running', this.now);
  }

  /**
   * An explicit move (Approved, PhaseSucceeded, the end of an attempt): straight from the
   * current pair when the table allows it, else by way of the derived pair.
   */
  private moveAttempt(i: number, a: AttemptState, to: AttemptPair, reason: string): void {
    if (a.status === null || a.operationStatus === null || !ATTEMPT_TRANSITIONS[pairOf(a.status, a.operationStatus)].includes(to)) {
      this.syncAttempt(i, a);
    }
    transitionAttempt(a, to, reason, this.now);
  }

  private syncAttempt(i: number, a: AttemptState): void {
    if (isTerminalAttempt(a)) return;
    const [pair, reason] = this.derivePair(i, a);
    transitionAttempt(a, pair, reason, this.now);
  }

  /** The pair that describes an attempt under way (CONTRACT §6, the situation table). */
  private derivePair(i: number, a: AttemptState): [AttemptPair, string] {
    const def = this.stageDef(i);
    if (a.waiting === 'account') return ['NotDeployed/QueuedForPipeline', "the account's limit of running executions is reached"];
    if (a.waiting === 'schedule') return ['NotDeployed/Scheduled', `scheduled for ${new Date(def.scheduleAt ?? 0).toISOString()}`];
    if (a.waiting === 'slot') return ['NotDeployed/Queued', `waiting behind another deployment to ${def.deploy ? mappingKey(def.deploy) : '?'}`];
    const live = a.runs.filter((r) => !isTerminalStep(r.status));
    const named = (rs: StepRun[]) => rs.map((r) => r.stepId).join(', ');
    if (a.aborting && a.ran) return ['InProgress/Cancelling', `aborted by ${this.st.abort?.by ?? '?'}`];
    const interventions = a.runs.filter((r) => r.intervention);
    if (interventions.length > 0) return ['InProgress/ManualInterventionPending', `${named(interventions)} failed; waits for a manual intervention`];
    if (a.paused && a.paused.until === null) return ['InProgress/ManualInterventionPending', `phase ${a.paused.phase} paused; waits for promote`];
    if (a.failure?.kind === 'Verification') return ['InProgress/GatesFailed', `verification failed${a.rollingBack ? '; rolling back' : ''}`];
    if (a.paused) return ['InProgress/PhaseSucceeded', `phase ${a.paused.phase} passed; paused until ${new Date(a.paused.until ?? 0).toISOString()}`];
    const verifying = live.filter((r) => r.type === 'verify' && r.status === 'Running');
    if (verifying.length) return ['InProgress/EvaluatingGates', `${named(verifying)} verifying`];
    const approvals = live.filter((r) => r.type === 'approval' && r.status === 'Running');
    if (approvals.length) return [a.ran ? 'InProgress/Pending' : 'NotDeployed/Pending', `${named(approvals)} waits for approval`];
    const running = live.filter((r) => r.status === 'Running');
    if (running.length) return ['InProgress/PhaseInProgress', `${named(running)} running${a.rollingBack ? ' (rollback)' : ''}`];
    const queued = live.filter((r) => r.status === 'QueuedForAgent');
    if (queued.length) return [a.ran ? 'InProgress/QueuedForAgent' : 'NotDeployed/QueuedForAgent', `${named(queued)} waits for a delegate`];
    const retrying = live.filter((r) => r.status === 'Waiting');
    if (retrying.length) return ['InProgress/PhaseInProgress', `${named(retrying)} waits to retry`];
    const deferred = a.runs.find((r) => r.approval?.deferUntil && r.approval.deferUntil > this.now && r.status === 'Succeeded');
    if (deferred && !a.aborting) {
      const until = new Date(deferred.approval!.deferUntil!).toISOString();
      return [a.ran ? 'InProgress/PhaseInProgress' : 'NotDeployed/Deferred', `approved, deferred until ${until}`];
    }
    if (a.ran) return ['InProgress/PhaseInProgress', 'running'];
    // before any work: an approval's pair stays; otherwise cleared to start
    if (a.status === 'NotDeployed' && ['Pending', 'Deferred', 'Approved', 'QueuedForAgent'].includes(a.operationStatus ?? '')) {
      return [`NotDeployed/${a.operationStatus!}` as AttemptPair, 'unchanged'];
    }
    return ['NotDeployed/Approved', 'cleared to start'];
  }
}
