import { describe, expect, test } from 'vitest';
import { parsePipeline } from './pipeline/index.js';
import { apply, pickRollbackArtifact, start } from './machine.js';
import { toExecutionDocument } from './document.js';
import type { DeploymentRecord, Effect, ExecutionState, MachineContext, MachineEvent, Slot, TaskRequest } from './state.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');

/** Drives the pure machine with synthetic task results. */
class Sim {
  state: ExecutionState;
  effects: Effect[] = [];
  now = T0;
  free: (slot: Slot) => boolean = () => true;
  deployments: DeploymentRecord[] = [];
  color: string | null = null;
  readonly ctx: MachineContext = {
    deployments: () => this.deployments,
    slotFree: (s) => this.free(s),
    liveColor: () => this.color,
  };

  constructor(yaml: string, opts: { inputs?: Record<string, unknown>; artifact?: string | null; executor?: string; free?: (s: Slot) => boolean; deployments?: DeploymentRecord[]; id?: string; color?: string } = {}) {
    if (opts.free) this.free = opts.free;
    if (opts.color) this.color = opts.color;
    if (opts.deployments) this.deployments = opts.deployments;
    const definition = parsePipeline(yaml);
    const t = start({
      id: opts.id ?? 'ex1', account: 'default', pipeline: definition.pipeline, pipelineVersion: 1, definition,
      inputs: opts.inputs ?? {}, artifact: opts.artifact === undefined ? '2.0.0' : opts.artifact, executor: opts.executor ?? 'alice',
    }, this.now, this.ctx);
    this.state = t.state;
    this.effects.push(...t.effects);
    JSON.stringify(this.state); // serialisable
  }

  send(e: MachineEvent): Effect[] {
    const t = apply(this.state, e, this.now, this.ctx);
    this.state = JSON.parse(JSON.stringify(t.state)) as ExecutionState;
    this.effects.push(...t.effects);
    return t.effects;
  }

  advance(ms: number): void { this.now += ms; }

  /** fires every timer due by now */
  fireTimers(): void {
    const set = new Map<string, number>();
    for (const e of this.effects) {
      if (e.type === 'setTimer') set.set(e.key, e.at);
      if (e.type === 'clearTimer') set.delete(e.key);
    }
    for (const [key, at] of [...set.entries()].sort((a, b) => a[1] - b[1])) {
      if (at <= this.now) {
        this.effects.push({ type: 'clearTimer', key });
        this.send({ type: 'timer', key });
      }
    }
  }

  tasks(): TaskRequest[] {
    return this.effects.filter((e): e is Extract<Effect, { type: 'enqueueTask' }> => e.type === 'enqueueTask').map((e) => e.task);
  }

  /** the latest task queued for a step */
  task(step: string, stage?: string): TaskRequest {
    const t = this.tasks().filter((x) => x.step === step && (stage === undefined || x.stage === stage)).pop();
    if (!t) throw new Error(`no task for ${stage ?? ''}/${step}`);
    return t;
  }

  startTask(step: string, stage?: string): void {
    this.send({ type: 'taskStarted', stepRunId: this.task(step, stage).taskId, delegate: 'd1' });
  }

  finish(step: string, status: 'Succeeded' | 'Failed' | 'Canceled' = 'Succeeded', o: { kind?: string; outputs?: Record<string, string>; stage?: string; exitCode?: number } = {}): void {
    this.send({
      type: 'taskFinished', stepRunId: this.task(step, o.stage).taskId,
      result: {
        status, exitCode: o.exitCode ?? (status === 'Succeeded' ? 0 : 1), outputs: o.outputs ?? {},
        error: status === 'Failed' ? { kind: o.kind ?? 'StepFailed', message: `${step} failed` } : null,
      },
    });
  }

  /** start then finish */
  run(step: string, status: 'Succeeded' | 'Failed' = 'Succeeded', o: { kind?: string; outputs?: Record<string, string>; stage?: string } = {}): void {
    this.startTask(step, o.stage);
    this.finish(step, status, o);
  }

  pairs(stage: string, attempt?: number): string[] {
    const s = this.state.stages.find((x) => x.id === stage)!;
    const a = attempt === undefined ? s.attempts[s.attempts.length - 1] : s.attempts[attempt - 1];
    return (a?.history ?? []).map((h) => `${h.status}/${h.operationStatus}`);
  }

  doc(history = false) { return toExecutionDocument(this.state, { history }); }
  stageDoc(id: string, history = false) { return this.doc(history).stages.find((s) => s.id === id)!; }
  stepStatus(stage: string, step: string): string[] { return this.stageDoc(stage).steps.filter((s) => s.id === step).map((s) => s.status); }
  get status() { return this.state.status; }
  stageStatus(id: string) { return this.state.stages.find((s) => s.id === id)!.status; }
}

const deployStage = (id: string, steps: string, extra = '') => `
  - id: ${id}
    type: deploy
    service: api
    environment: ${id}
    infrastructure: local
${extra}    steps:
${steps}`;

const pipeline = (stages: string, head = '') => `pipeline: p\n${head}stages:${stages}`;


const ND = (op: string) => `NotDeployed/${op}`;
const IP = (op: string) => `InProgress/${op}`;
const shell = (id: string, extra = '') => `      - { id: ${id}, type: shell, script: "./${id}.sh"${extra} }\n`;

interface Scenario {
  name: string;
  yaml: string;
  opts?: ConstructorParameters<typeof Sim>[1];
  drive: (sim: Sim) => void;
  /** the exact sequence of attempt pairs per stage (latest attempt; `stage#n` for attempt n) */
  pairs: Record<string, string[]>;
  execution: string;
  stages?: Record<string, string>;
  check?: (sim: Sim) => void;
}

const retryOnFail = `    failureStrategies:
      - on: [StepFailed]
        action: { type: retry, count: 1, interval: 10s }
`;
const intervention = (onTimeout = '') => `    failureStrategies:
      - on: [AllErrors]
        action: { type: manualIntervention, timeout: 1h${onTimeout ? `, onTimeout: ${onTimeout}` : ''} }
`;
const rollbackSteps = `    rollbackSteps:
      - { id: undo, type: shell, script: './deploy.sh "$FERRY_ROLLBACK_ARTIFACT"' }
`;

const scenarios: Scenario[] = [
  {
    name: 'success',
    yaml: pipeline(deployStage('dev', shell('deploy') + shell('check'))),
    drive: (sim) => { sim.run('deploy'); sim.run('check'); },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
    stages: { dev: 'Succeeded' },
    check: (sim) => {
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Succeeded']);
      expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'recordDeployment', artifact: '2.0.0', status: 'succeeded' }));
      expect(sim.effects.filter((e) => e.type === 'releaseSlot')).toHaveLength(2); // mapping, account
    },
  },
  {
    name: 'step failure then retry success',
    yaml: pipeline(deployStage('dev', shell('deploy'), '') + retryOnFail),
    drive: (sim) => {
      sim.run('deploy', 'Failed');
      const waiting = sim.stageDoc('dev').steps.filter((s) => s.id === 'deploy');
      expect(waiting.map((s) => [s.try, s.status])).toEqual([[1, 'Failed'], [2, 'Waiting']]);
      expect(waiting[1]!.retryAt).toBe(new Date(T0 + 10_000).toISOString());
      expect(sim.pairs('dev').at(-1)).toBe(IP('PhaseInProgress'));
      sim.advance(10_000);
      sim.fireTimers();
      expect(sim.task('deploy').try).toBe(2);
      sim.run('deploy');
    },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
    check: (sim) => expect(sim.stepStatus('dev', 'deploy')).toEqual(['Failed', 'Succeeded']),
  },
  {
    name: 'retries used up: the step fails its stage and the execution',
    yaml: pipeline(deployStage('dev', shell('deploy')) + retryOnFail + deployStage('prod', shell('deploy'))),
    drive: (sim) => {
      sim.run('deploy', 'Failed', { stage: 'dev' });
      sim.advance(10_000); sim.fireTimers();
      sim.run('deploy', 'Failed', { stage: 'dev' });
    },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Failed/PhaseFailed'], prod: [] },
    execution: 'Failed',
    stages: { dev: 'Failed', prod: 'NotStarted' },
    check: (sim) => {
      expect(sim.stepStatus('prod', 'deploy')).toEqual(['Waiting']);
      expect(sim.stageDoc('dev').steps.at(-1)!.error).toEqual({ kind: 'StepFailed', message: 'deploy failed' });
      expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'recordDeployment', status: 'failed' }));
    },
  },
  {
    name: 'parallel group: continueOnError gives partial success',
    yaml: pipeline(deployStage('dev', `      - parallel:
          - { id: smoke, type: shell, script: x }
          - { id: warm, type: shell, script: y, continueOnError: true }
`)),
    drive: (sim) => {
      sim.startTask('smoke'); sim.startTask('warm');
      sim.finish('warm', 'Failed');
      sim.finish('smoke');
    },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), 'PartiallySucceeded/PhasePartiallySucceeded'] },
    execution: 'PartiallySucceeded',
    stages: { dev: 'PartiallySucceeded' },
    check: (sim) => expect(sim.stepStatus('dev', 'warm')).toEqual(['Ignored']),
  },
  {
    name: 'ignore strategy gives partial success and the next step runs',
    yaml: pipeline(deployStage('dev', shell('a', ', failureStrategies: [{ on: [StepFailed], action: { type: ignore } }]') + shell('b'))),
    drive: (sim) => { sim.run('a', 'Failed'); sim.run('b'); },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'PartiallySucceeded/PhasePartiallySucceeded'] },
    execution: 'PartiallySucceeded',
  },
  ...(['retry', 'ignore', 'abort', 'rollback'] as const).map((action): Scenario => ({
    name: `manual intervention: ${action}`,
    yaml: pipeline(deployStage('dev', shell('deploy') + shell('after')) + intervention() + rollbackSteps),
    drive: (sim) => {
      sim.run('deploy', 'Failed');
      expect(sim.status).toBe('Paused');
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Failed']);
      sim.send({ type: 'intervene', action, by: 'bob' });
      if (action === 'retry') { sim.run('deploy'); sim.run('after'); }
      if (action === 'ignore') sim.run('after');
      if (action === 'rollback') sim.run('undo');
    },
    pairs: {
      dev: {
        retry: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('ManualInterventionPending'), IP('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'],
        ignore: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('ManualInterventionPending'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'PartiallySucceeded/PhasePartiallySucceeded'],
        abort: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('ManualInterventionPending'), IP('Cancelling'), 'Failed/Canceled'],
        rollback: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('ManualInterventionPending'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Failed/PhaseFailed'],
      }[action],
    },
    execution: { retry: 'Succeeded', ignore: 'PartiallySucceeded', abort: 'Aborted', rollback: 'Failed' }[action],
    stages: { dev: { retry: 'Succeeded', ignore: 'PartiallySucceeded', abort: 'Canceled', rollback: 'Failed' }[action] },
    check: (sim) => {
      const dev = sim.stageDoc('dev');
      expect(dev.rolledBack).toBe(action === 'rollback');
      if (action === 'abort') expect(sim.stepStatus('dev', 'after')).toEqual(['Canceled']);
      if (action === 'rollback') expect(sim.stepStatus('dev', 'after')).toEqual(['Skipped']);
      expect(dev.steps.find((s) => s.id === 'deploy')!.interventions).toEqual([{ by: 'bob', action, at: new Date(T0).toISOString() }]);
    },
  })),
  {
    name: 'manual intervention timeout: onTimeout stageRollback',
    yaml: pipeline(deployStage('dev', shell('deploy')) + intervention('stageRollback') + rollbackSteps),
    drive: (sim) => {
      sim.run('deploy', 'Failed');
      sim.advance(3_600_000); sim.fireTimers();
      expect(sim.stageDoc('dev').rollingBack).toBe(true);
      sim.run('undo');
    },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('ManualInterventionPending'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Failed/PhaseFailed'] },
    execution: 'Failed',
    check: (sim) => {
      expect(sim.stageDoc('dev')).toMatchObject({ rolledBack: true, rollbackArtifact: null, rollingBack: false });
      expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'recordDeployment', status: 'rolledBack' }));
    },
  },
  {
    name: 'manual intervention timeout without onTimeout fails the stage',
    yaml: pipeline(deployStage('dev', shell('deploy')) + intervention()),
    drive: (sim) => { sim.run('deploy', 'Failed'); sim.advance(3_600_000); sim.fireTimers(); },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('ManualInterventionPending'), 'Failed/PhaseFailed'] },
    execution: 'Failed',
  },
  {
    name: 'a first step that never got a delegate waits for a manual intervention',
    yaml: pipeline(deployStage('dev', shell('deploy')) + intervention()),
    drive: (sim) => { sim.finish('deploy', 'Failed', { kind: 'NoEligibleDelegate' }); },
    pairs: { dev: [ND('QueuedForAgent'), IP('ManualInterventionPending')] },
    execution: 'Paused',
    stages: { dev: 'InProgress' },
    check: (sim) => expect(sim.stepStatus('dev', 'deploy')).toEqual(['Failed']),
  },
  {
    name: 'approval stage approved',
    yaml: pipeline(`
  - id: gate
    type: approval
    approvers: { minimumCount: 2 }
    timeout: 1d`),
    drive: (sim) => {
      expect(sim.stepStatus('gate', 'approval')).toEqual(['Running']);
      sim.send({ type: 'approve', by: 'bob', comment: 'ok' });
      expect(sim.pairs('gate')).toEqual([ND('Pending')]);
      expect(() => sim.send({ type: 'approve', by: 'bob' })).toThrow(/already approved/);
      sim.send({ type: 'approve', by: 'carol' });
    },
    pairs: { gate: [ND('Pending'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
    check: (sim) => {
      const step = sim.stageDoc('gate').steps[0]!;
      expect(step.status).toBe('Succeeded');
      expect(step.approvals!.map((x) => x.by)).toEqual(['bob', 'carol']);
      expect(step.approvals![0]!.comment).toBe('ok');
    },
  },
  {
    name: 'approval stage rejected',
    yaml: pipeline(`
  - id: gate
    type: approval` + deployStage('prod', shell('deploy'))),
    drive: (sim) => sim.send({ type: 'reject', by: 'bob', comment: 'no' }),
    pairs: { gate: [ND('Pending'), ND('Rejected')], prod: [] },
    execution: 'Rejected',
    stages: { gate: 'Rejected', prod: 'NotStarted' },
    check: (sim) => expect(sim.stepStatus('gate', 'approval')).toEqual(['Failed']),
  },
  {
    name: 'approval stage expired',
    yaml: pipeline(`
  - id: gate
    type: approval
    timeout: 1h`),
    drive: (sim) => { sim.advance(3_600_000); sim.fireTimers(); },
    pairs: { gate: [ND('Pending'), ND('Rejected')] },
    execution: 'Expired',
    stages: { gate: 'Expired' },
    check: (sim) => expect(sim.stepStatus('gate', 'approval')).toEqual(['Expired']),
  },
  {
    name: 'approval stage approved with defer-until',
    yaml: pipeline(`
  - id: gate
    type: approval`),
    drive: (sim) => {
      sim.send({ type: 'approve', by: 'bob', deferUntil: T0 + 600_000 });
      expect(sim.stepStatus('gate', 'approval')).toEqual(['Succeeded']);
      expect(sim.status).toBe('Running');
      sim.advance(600_000); sim.fireTimers();
    },
    pairs: { gate: [ND('Pending'), ND('Deferred'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
  },
  {
    name: 'approval step before a delegate step: Pending, Approved, then the steps',
    yaml: pipeline(deployStage('prod', '      - { id: ok, type: approval }\n' + shell('deploy'))),
    drive: (sim) => { sim.send({ type: 'approve', by: 'bob' }); sim.run('deploy'); },
    pairs: { prod: [ND('Pending'), ND('Approved'), ND('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
  },
  {
    name: 'approval step after a delegate step, rejected',
    yaml: pipeline(deployStage('prod', shell('deploy') + '      - { id: ok, type: approval }\n' + shell('after'))),
    drive: (sim) => { sim.run('deploy'); sim.send({ type: 'reject', by: 'bob' }); },
    pairs: { prod: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('Pending'), 'Failed/Rejected'] },
    execution: 'Rejected',
    stages: { prod: 'Rejected' },
    check: (sim) => {
      expect(sim.stepStatus('prod', 'ok')).toEqual(['Failed']);
      expect(sim.stepStatus('prod', 'after')).toEqual(['Skipped']);
    },
  },
  {
    name: 'abort during a running step: alwaysRun runs, no rollback',
    yaml: pipeline(deployStage('dev', shell('deploy') + shell('next') + shell('cleanup', ', alwaysRun: true')) + rollbackSteps),
    drive: (sim) => {
      sim.startTask('deploy');
      const effects = sim.send({ type: 'abort', by: 'bob' });
      expect(effects).toContainEqual({ type: 'cancelTask', taskId: sim.task('deploy').taskId, reason: 'aborted by bob' });
      expect(sim.status).toBe('Running');
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Running']);
      expect(sim.stepStatus('dev', 'next')).toEqual(['Canceled']);
      sim.finish('deploy', 'Canceled');
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Canceled']);
      sim.run('cleanup');
    },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('Cancelling'), 'Failed/Canceled'] },
    execution: 'Aborted',
    stages: { dev: 'Canceled' },
    check: (sim) => {
      expect(sim.stepStatus('dev', 'cleanup')).toEqual(['Succeeded']);
      expect(sim.tasks().map((t) => t.step)).toEqual(['deploy', 'cleanup']); // no undo
      expect(sim.stageDoc('dev').rolledBack).toBe(false);
    },
  },
  {
    name: 'abort before any step ran',
    yaml: pipeline(deployStage('dev', shell('deploy'))),
    drive: (sim) => sim.send({ type: 'abort', by: 'bob' }),
    pairs: { dev: [ND('QueuedForAgent'), ND('Canceled')] },
    execution: 'Aborted',
    stages: { dev: 'Canceled' },
    check: (sim) => expect(sim.stepStatus('dev', 'deploy')).toEqual(['Canceled']),
  },
  {
    name: 'queued behind another deployment (environment concurrency)',
    yaml: pipeline(deployStage('dev', shell('deploy'))),
    opts: { free: (s) => s.kind === 'account' },
    drive: (sim) => {
      expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'requestSlot', slot: expect.objectContaining({ kind: 'mapping', key: 'api/dev/local', capacity: 1 }) }));
      expect(sim.status).toBe('Running');
      expect(sim.stageStatus('dev')).toBe('Queued');
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Waiting']);
      sim.send({ type: 'slotGranted', slot: 'mapping' });
      sim.run('deploy');
    },
    pairs: { dev: [ND('Queued'), ND('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
  },
  {
    name: 'superseded while waiting (deployLatestOnly)',
    yaml: pipeline(deployStage('dev', shell('deploy')), 'environments:\n  dev: { deployLatestOnly: true }\n'),
    opts: { free: (s) => s.kind === 'account' },
    drive: (sim) => {
      expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'requestSlot', slot: expect.objectContaining({ deployLatestOnly: true }) }));
      sim.send({ type: 'superseded', by: 'ex2' });
    },
    pairs: { dev: [ND('Queued'), ND('Canceled')] },
    execution: 'Superseded',
    stages: { dev: 'Canceled' },
    check: (sim) => {
      expect(sim.doc().supersededBy).toBe('ex2');
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Canceled']);
    },
  },
  {
    name: "the account's limit of running executions (QueuedForPipeline)",
    yaml: pipeline(deployStage('dev', shell('deploy'))),
    opts: { free: (s) => s.kind !== 'account' },
    drive: (sim) => {
      expect(sim.status).toBe('Queued');
      expect(sim.stageStatus('dev')).toBe('Queued');
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Waiting']);
      sim.send({ type: 'slotGranted', slot: 'account' });
      expect(sim.status).toBe('Running');
      sim.run('deploy');
    },
    pairs: { dev: [ND('QueuedForPipeline'), ND('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
  },
  {
    name: 'scheduled stage',
    yaml: pipeline(deployStage('dev', shell('deploy'), '    schedule: { at: "2026-01-01T02:00:00Z" }\n')),
    drive: (sim) => {
      expect(sim.stageStatus('dev')).toBe('Scheduled');
      sim.advance(2 * 3_600_000); sim.fireTimers();
      sim.run('deploy');
    },
    pairs: { dev: [ND('Scheduled'), ND('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'] },
    execution: 'Succeeded',
  },
  {
    name: 'when false skips a stage and a step',
    yaml: pipeline(deployStage('dev', shell('deploy', ", when: 'var.n > 5'") + shell('b')) + deployStage('qa', shell('deploy'), "    when: 'artifact == \"1.0\"'\n"),
      'variables:\n  n: { type: number, default: 2 }\n'),
    drive: (sim) => sim.run('b'),
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'], qa: [] },
    execution: 'Succeeded',
    stages: { dev: 'Succeeded', qa: 'Skipped' },
    check: (sim) => {
      expect(sim.stepStatus('dev', 'deploy')).toEqual(['Skipped']);
      expect(sim.stepStatus('qa', 'deploy')).toEqual(['Skipped']);
    },
  },
  {
    name: 'stageRollback on failure runs rollback steps with the last good artifact',
    yaml: pipeline(deployStage('dev', shell('deploy') + shell('cleanup', ', alwaysRun: true')) + `    failureStrategies:
      - on: [AllErrors]
        action: { type: stageRollback }
` + rollbackSteps),
    opts: { deployments: [
      { pipeline: 'p', artifact: '1.9.0', status: 'failed', executionId: 'old3', at: T0 - 1000 },
      { pipeline: 'p', artifact: '1.9.0', status: 'succeeded', executionId: 'old2', at: T0 - 2000 },
      { pipeline: 'p', artifact: '1.8.0', status: 'succeeded', executionId: 'old1', at: T0 - 3000 },
    ] },
    drive: (sim) => {
      sim.run('deploy', 'Failed');
      sim.run('cleanup');
      expect(sim.stageDoc('dev').rollingBack).toBe(true);
      expect(sim.task('undo').env.FERRY_ROLLBACK_ARTIFACT).toBe('1.8.0');
      sim.run('undo');
    },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Failed/PhaseFailed'] },
    execution: 'Failed',
    check: (sim) => {
      expect(sim.stageDoc('dev')).toMatchObject({ rolledBack: true, rollbackArtifact: '1.8.0' });
      expect(sim.stageDoc('dev').steps.find((s) => s.id === 'undo')!.rollback).toBe(true);
    },
  },
  {
    name: 'rollback with no earlier success: empty FERRY_ROLLBACK_ARTIFACT and a log line',
    yaml: pipeline(deployStage('dev', shell('deploy')) + '    failureStrategies: [{ on: [AllErrors], action: { type: stageRollback } }]\n' + rollbackSteps),
    drive: (sim) => { sim.run('deploy', 'Failed'); sim.run('undo'); },
    pairs: { dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Failed/PhaseFailed'] },
    execution: 'Failed',
    check: (sim) => {
      expect(sim.task('undo').env.FERRY_ROLLBACK_ARTIFACT).toBe('');
      expect(sim.effects).toContainEqual({ type: 'systemLog', stepRunId: sim.task('undo').taskId, line: 'no earlier successful deployment of pipeline p on api/dev/local: FERRY_ROLLBACK_ARTIFACT is empty' });
    },
  },
  {
    name: 'pipelineRollback rolls back completed deploy stages newest first',
    yaml: pipeline(deployStage('dev', shell('deploy')) + rollbackSteps + deployStage('qa', shell('deploy')) + rollbackSteps
      + deployStage('prod', shell('deploy')) + '    failureStrategies: [{ on: [AllErrors], action: { type: pipelineRollback } }]\n' + rollbackSteps),
    drive: (sim) => {
      sim.run('deploy', 'Succeeded', { stage: 'dev' });
      sim.run('deploy', 'Succeeded', { stage: 'qa' });
      sim.run('deploy', 'Failed', { stage: 'prod' });
      sim.run('undo', 'Succeeded', { stage: 'prod' });
      expect(sim.stageDoc('qa').rollingBack).toBe(true);
      sim.run('undo', 'Succeeded', { stage: 'qa' });
      sim.run('undo', 'Succeeded', { stage: 'dev' });
    },
    pairs: {
      dev: [ND('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved'],
      prod: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Failed/PhaseFailed'],
    },
    execution: 'Failed',
    stages: { dev: 'Succeeded', qa: 'Succeeded', prod: 'Failed' },
    check: (sim) => {
      expect(sim.tasks().filter((t) => t.step === 'undo').map((t) => t.stage)).toEqual(['prod', 'qa', 'dev']);
      for (const s of ['dev', 'qa', 'prod']) expect(sim.stageDoc(s).rolledBack).toBe(true);
    },
  },
  {
    name: 'verification failed: GatesFailed',
    yaml: pipeline(deployStage('prod', shell('deploy'), `    strategy:
      canary:
        phases:
          - weight: 10
            verify:
              source: { type: prometheus, url: "http://prom:9090" }
              metrics: [{ name: errors, query: 'rate(x{role="$role"}[1m])' }]
              duration: 1m
          - weight: 100
`)),
    drive: (sim) => {
      expect(sim.task('deploy').env.FERRY_CANARY_WEIGHT).toBe('10');
      sim.run('deploy');
      expect(sim.task('verify').kind).toBe('verify');
      sim.startTask('verify');
      expect(sim.pairs('prod').at(-1)).toBe(IP('EvaluatingGates'));
      sim.send({ type: 'taskFinished', stepRunId: sim.task('verify').taskId, result: { status: 'Succeeded', outputs: {} }, verification: { verdict: 'Unhealthy', score: 10 } });
    },
    pairs: { prod: [ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('EvaluatingGates'), IP('GatesFailed'), 'Failed/GatesFailed'] },
    execution: 'Failed',
    check: (sim) => {
      const steps = sim.stageDoc('prod').steps;
      expect(steps.map((s) => [s.id, s.phase, s.status])).toEqual([['deploy', 0, 'Succeeded'], ['verify', 0, 'Failed'], ['deploy', 1, 'Skipped']]);
      expect(steps[1]!.verification).toEqual({ verdict: 'Unhealthy', score: 10 });
    },
  },
  {
    name: 'canary phases: PhaseSucceeded, pause until promote',
    yaml: pipeline(deployStage('prod', shell('deploy'), `    strategy:
      canary:
        phases:
          - weight: 10
          - weight: 50
            pause: {}
          - weight: 100
`)),
    drive: (sim) => {
      sim.run('deploy');
      expect(sim.task('deploy').env.FERRY_CANARY_WEIGHT).toBe('50');
      sim.run('deploy');
      expect(sim.status).toBe('Paused');
      sim.send({ type: 'promote', by: 'bob' });
      expect(sim.task('deploy').env.FERRY_CANARY_WEIGHT).toBe('100');
      sim.run('deploy');
    },
    pairs: { prod: [
      ND('QueuedForAgent'), IP('PhaseInProgress'), IP('PhaseSucceeded'), IP('QueuedForAgent'), IP('PhaseInProgress'),
      IP('ManualInterventionPending'), IP('PhaseSucceeded'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved',
    ] },
    execution: 'Succeeded',
  },
];

describe('execution scenarios: the exact attempt pairs', () => {
  test.each(scenarios.map((s) => [s.name, s] as const))('%s', (_name, s) => {
    const sim = new Sim(s.yaml, s.opts);
    s.drive(sim);
    for (const [stage, pairs] of Object.entries(s.pairs)) expect(sim.pairs(stage), stage).toEqual(pairs);
    expect(sim.status).toBe(s.execution);
    for (const [stage, status] of Object.entries(s.stages ?? {})) expect(sim.stageStatus(stage), stage).toBe(status);
    s.check?.(sim);
    // the document always holds the contract's fields
    const doc = sim.doc();
    expect(Object.keys(doc)).toEqual(expect.arrayContaining(['id', 'pipeline', 'pipelineVersion', 'status', 'artifact', 'inputs', 'createdAt', 'finishedAt', 'resumedFrom', 'stages']));
  });
});

describe('blue/green', () => {
  const bg = pipeline(deployStage('prod', shell('deploy'), `    strategy:
      blueGreen:
        verify:
          source: { type: prometheus, url: "http://prom:9090" }
          metrics: [{ name: errors, query: 'x' }]
    swapSteps:
      - { id: swap, type: shell, script: './swap.sh "$FERRY_COLOR"' }
    failureStrategies: [{ on: [Verification], action: { type: stageRollback } }]
`));
  const verdict = (sim: Sim, v: 'Healthy' | 'Unhealthy') =>
    sim.send({ type: 'taskFinished', stepRunId: sim.task('verify').taskId, result: { status: 'Succeeded', outputs: {} }, verification: { verdict: v } });

  test('deploys to the idle colour, verifies, swaps, records the live colour', () => {
    const sim = new Sim(bg, { color: 'blue' });
    expect(sim.task('deploy').env.FERRY_COLOR).toBe('green');
    sim.run('deploy');
    verdict(sim, 'Healthy');
    expect(sim.task('swap').env.FERRY_COLOR).toBe('green');
    sim.run('swap');
    expect(sim.status).toBe('Succeeded');
    expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'setLiveColor', color: 'green' }));
    expect(sim.stageDoc('prod').liveColor).toBe('green');
  });

  test('a failed verification swaps back only (no redeploy)', () => {
    const sim = new Sim(bg, { color: 'blue' });
    sim.run('deploy');
    verdict(sim, 'Unhealthy');
    expect(sim.task('swap').env.FERRY_COLOR).toBe('blue');
    sim.run('swap');
    expect(sim.status).toBe('Failed');
    expect(sim.pairs('prod').slice(-2)).toEqual(['InProgress/GatesFailed', 'Failed/GatesFailed']);
    expect(sim.tasks().map((t) => t.step)).toEqual(['deploy', 'verify', 'swap']);
    expect(sim.stageDoc('prod')).toMatchObject({ rolledBack: true, liveColor: 'blue' });
  });

  test('first deployment: nothing live, nothing to swap back to', () => {
    const sim = new Sim(bg);
    expect(sim.task('deploy').env.FERRY_COLOR).toBe('blue');
    sim.run('deploy');
    verdict(sim, 'Unhealthy');
    expect(sim.status).toBe('Failed');
    expect(sim.tasks().map((t) => t.step)).toEqual(['deploy', 'verify']);
  });
});

describe('smoke', () => {
  test('one stage one step', () => {
    const sim = new Sim(pipeline(deployStage('dev', '      - { id: deploy, type: shell, script: "echo" }\n')));
    expect(sim.status).toBe('Running');
    expect(sim.pairs('dev')).toEqual(['NotDeployed/QueuedForAgent']);
    sim.run('deploy');
    expect(sim.pairs('dev')).toEqual(['NotDeployed/QueuedForAgent', 'InProgress/PhaseInProgress', 'Succeeded/Approved']);
    expect(sim.status).toBe('Succeeded');
  });
});

describe('resume', () => {
  const yaml = pipeline(
    deployStage('dev', shell('build') + shell('deploy')) + deployStage('qa', shell('deploy', ", when: 'out.build.VERSION == \"7\"'") + shell('test')),
  );

  test('from the failed stage: a new attempt, earlier stages kept, no stale outputs', () => {
    const sim = new Sim(yaml);
    sim.run('build', 'Succeeded', { stage: 'dev', outputs: { VERSION: '7' } });
    sim.run('deploy', 'Succeeded', { stage: 'dev' });
    sim.run('deploy', 'Succeeded', { stage: 'qa', outputs: { URL: 'http://old' } });
    sim.run('test', 'Failed', { stage: 'qa' });
    expect(sim.status).toBe('Failed');
    expect(() => sim.send({ type: 'resume', fromStage: 'nope', by: 'bob' })).toThrow(/no stage/);
    sim.send({ type: 'resume', fromStage: 'qa', by: 'bob' });
    expect(sim.status).toBe('Running');
    expect(sim.doc().resumedFrom).toEqual({ stage: 'qa', at: new Date(T0).toISOString(), by: 'bob' });
    expect(sim.doc().finishedAt).toBeNull();
    // earlier stage: one attempt, untouched; its outputs still reach qa
    expect(sim.state.stages[0]!.attempts).toHaveLength(1);
    const t = sim.task('deploy', 'qa');
    expect(t.attempt).toBe(2);
    expect(t.env.FERRY_OUT_BUILD_VERSION).toBe('7');
    sim.run('deploy', 'Succeeded', { stage: 'qa' });
    // the failed attempt's qa/deploy output (URL) is not visible to the new attempt's test step
    expect(sim.task('test', 'qa').env.FERRY_OUT_DEPLOY_URL).toBeUndefined();
    sim.run('test', 'Succeeded', { stage: 'qa' });
    expect(sim.status).toBe('Succeeded');
    expect(sim.pairs('qa', 1).at(-1)).toBe('Failed/PhaseFailed');
    expect(sim.pairs('qa', 2)).toEqual([ND('QueuedForAgent'), IP('PhaseInProgress'), IP('QueuedForAgent'), IP('PhaseInProgress'), 'Succeeded/Approved']);
    // latest attempt only, unless history
    expect(sim.stageDoc('qa').steps.map((s) => s.attempt)).toEqual([2, 2]);
    expect(sim.stageDoc('qa', true).steps.map((s) => s.attempt)).toEqual([1, 1, 2, 2]);
    expect(sim.stageDoc('qa').attempts.map((a) => [a.attempt, a.status, a.operationStatus])).toEqual([[1, 'Failed', 'PhaseFailed'], [2, 'Succeeded', 'Approved']]);
  });

  test('from an earlier stage: every stage from it gets a new attempt; outputs recomputed', () => {
    const sim = new Sim(yaml);
    sim.run('build', 'Succeeded', { stage: 'dev', outputs: { VERSION: '7' } });
    sim.run('deploy', 'Succeeded', { stage: 'dev' });
    sim.run('deploy', 'Succeeded', { stage: 'qa' });
    sim.run('test', 'Failed', { stage: 'qa' });
    sim.send({ type: 'resume', fromStage: 'dev', by: 'bob' });
    expect(sim.stageStatus('qa')).toBe('NotStarted');
    expect(sim.stepStatus('qa', 'deploy')).toEqual(['Waiting']);
    // this time build writes VERSION=8: qa's deploy `when` sees the new value, not the old
    sim.run('build', 'Succeeded', { stage: 'dev', outputs: { VERSION: '8' } });
    sim.run('deploy', 'Succeeded', { stage: 'dev' });
    expect(sim.stepStatus('qa', 'deploy')).toEqual(['Skipped']);
    expect(sim.task('test', 'qa').env.FERRY_OUT_BUILD_VERSION).toBe('8');
    sim.run('test', 'Succeeded', { stage: 'qa' });
    expect(sim.status).toBe('Succeeded');
    expect(sim.state.stages.map((s) => s.attempts.length)).toEqual([2, 2]);
  });

  test('only Failed, Aborted, Expired and Rejected executions; only stages that ran', () => {
    const sim = new Sim(yaml);
    expect(() => sim.send({ type: 'resume', fromStage: 'dev', by: 'bob' })).toThrow(/only Failed, Aborted, Expired and Rejected/);
    sim.send({ type: 'abort', by: 'bob' });
    expect(sim.status).toBe('Aborted');
    expect(() => sim.send({ type: 'resume', fromStage: 'qa', by: 'bob' })).toThrow(/never ran/);
    sim.send({ type: 'resume', fromStage: 'dev', by: 'bob' });
    expect(sim.pairs('dev', 1)).toEqual([ND('QueuedForAgent'), ND('Canceled')]);
    expect(sim.pairs('dev', 2)).toEqual([ND('QueuedForAgent')]);
  });

  test('a resume waits for the account like a start', () => {
    const sim = new Sim(yaml);
    sim.send({ type: 'abort', by: 'bob' });
    sim.free = (s) => s.kind !== 'account';
    sim.send({ type: 'resume', fromStage: 'dev', by: 'bob' });
    expect(sim.status).toBe('Queued');
    expect(sim.pairs('dev', 2)).toEqual([ND('QueuedForPipeline')]);
  });
});

describe('approvals and interventions: refusals', () => {
  test('disallowExecutor compares with the executor', () => {
    const sim = new Sim(pipeline(`
  - id: gate
    type: approval
    approvers: { disallowExecutor: true }`), { executor: 'alice' });
    expect(() => sim.send({ type: 'approve', by: 'alice' })).toThrow(expect.objectContaining({ code: 'FORBIDDEN' }));
    sim.send({ type: 'approve', by: 'bob' });
    expect(sim.status).toBe('Succeeded');
  });

  test('nothing waits → WRONG_STATE; two waiting interventions → AMBIGUOUS with the list', () => {
    const sim = new Sim(pipeline(deployStage('dev', `      - parallel:
          - { id: a, type: shell, script: x }
          - { id: b, type: shell, script: y }
`) + intervention()));
    expect(() => sim.send({ type: 'approve', by: 'bob' })).toThrow(expect.objectContaining({ code: 'WRONG_STATE' }));
    sim.run('a', 'Failed');
    sim.run('b', 'Failed');
    let err: unknown;
    try { sim.send({ type: 'intervene', action: 'ignore', by: 'bob' }); } catch (e) { err = e; }
    expect(err).toMatchObject({ code: 'AMBIGUOUS', details: { waiting: [{ stage: 'dev', step: 'a' }, { stage: 'dev', step: 'b' }] } });
    sim.send({ type: 'intervene', action: 'ignore', by: 'bob', step: 'a' });
    expect(sim.status).toBe('Paused');
    sim.send({ type: 'intervene', action: 'ignore', by: 'bob', step: 'b' });
    expect(sim.status).toBe('PartiallySucceeded');
  });
});

describe('step environment', () => {
  test('every FERRY_* variable, variables and outputs', () => {
    const sim = new Sim(pipeline(deployStage('dev', shell('build') + `      - { id: my-step, type: shell, script: x, secrets: [TOKEN], delegateSelectors: [linux], timeout: 5m, env: { A: b } }\n`, '    delegateSelectors: [x86]\n'),
      'variables:\n  replicas: { type: number, default: 2 }\n  region-name: eu\n'), { inputs: { replicas: '3' }, artifact: '1.4.2' });
    sim.run('build', 'Succeeded', { outputs: { image: 'img:1', 'my-key': 'v' } });
    const t = sim.task('my-step');
    expect(t.env).toMatchObject({
      FERRY_EXECUTION_ID: 'ex1', FERRY_STAGE_ID: 'dev', FERRY_STEP_ID: 'my-step', FERRY_ARTIFACT: '1.4.2',
      FERRY_ROLLBACK_ARTIFACT: '', FERRY_CANARY_WEIGHT: '100', FERRY_VAR_REPLICAS: '3', FERRY_VAR_REGION_NAME: 'eu',
      FERRY_OUT_BUILD_IMAGE: 'img:1', FERRY_OUT_BUILD_MY_KEY: 'v', A: 'b',
    });
    expect(t.secretNames).toEqual(['TOKEN']);
    expect(t.selectors).toEqual(['x86', 'linux']);
    expect(t.timeoutMs).toBe(300_000);
    expect(t.queueTimeoutMs).toBe(3_600_000);
    expect(t.spec).toEqual({ kind: 'shell', script: 'x' });
  });

  test('inputs are checked', () => {
    const yaml = pipeline(deployStage('dev', shell('a')), 'variables:\n  n: { type: number, required: true }\n');
    expect(() => new Sim(yaml)).toThrow(/"n" is required/);
    expect(() => new Sim(yaml, { inputs: { n: 'x' } })).toThrow(/must be a number/);
    expect(() => new Sim(yaml, { inputs: { n: 1, m: 2 } })).toThrow(/unknown input "m"/);
  });
});

describe('rollback artifact selection', () => {
  const rec = (artifact: string, status: DeploymentRecord['status'], at: number, pipeline = 'p', executionId = `e${at}`): DeploymentRecord => ({ pipeline, artifact, status, executionId, at });
  const pick = (records: DeploymentRecord[], scope: 'pipeline' | 'infrastructure' = 'pipeline', exclude: string | null = '9.9.9') =>
    pickRollbackArtifact(records, { pipeline: 'p', scope, executionId: 'now', exclude });
  test.each([
    ['the last success of the same pipeline', [rec('1.0', 'succeeded', 1), rec('1.1', 'succeeded', 2)], 'pipeline', '1.1'],
    ['never one whose latest deployment failed', [rec('1.0', 'succeeded', 1), rec('1.1', 'succeeded', 2), rec('1.1', 'failed', 3)], 'pipeline', '1.0'],
    ['never one rolled back', [rec('1.0', 'succeeded', 1), rec('1.1', 'succeeded', 2), rec('1.1', 'rolledBack', 3)], 'pipeline', '1.0'],
    ['a failure by another pipeline marks it bad too', [rec('1.0', 'succeeded', 1), rec('1.1', 'succeeded', 2), rec('1.1', 'failed', 3, 'other')], 'pipeline', '1.0'],
    ['pipeline scope ignores other pipelines', [rec('1.0', 'succeeded', 1), rec('2.0', 'succeeded', 2, 'other')], 'pipeline', '1.0'],
    ['infrastructure scope takes any pipeline', [rec('1.0', 'succeeded', 1), rec('2.0', 'succeeded', 2, 'other')], 'infrastructure', '2.0'],
    ['not the artifact being rolled back', [rec('1.0', 'succeeded', 1), rec('9.9.9', 'succeeded', 2)], 'pipeline', '1.0'],
    ['nothing this execution recorded', [rec('1.0', 'succeeded', 1), rec('1.5', 'succeeded', 2, 'p', 'now')], 'pipeline', '1.0'],
    ['none: null', [rec('1.0', 'failed', 1)], 'pipeline', null],
  ] as const)('%s', (_n, records, scope, expected) => {
    expect(pick([...records], scope)).toBe(expected);
  });
});
