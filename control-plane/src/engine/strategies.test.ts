/**
 * Canary, blue/green and verification paths of the pure machine and the pipeline parser
 * (issue 6): health sources per environment, variables in a verification's source and
 * queries, the bearer token secret, the verdict's evidence, blue/green pipeline rollbacks
 * and pauses. The end-to-end tests against a real Prometheus are test/canary-*.test.ts.
 */
import { describe, expect, test } from 'vitest';
import { FerryError } from '@ferry/shared';
import { parsePipeline } from './pipeline/index.js';
import { apply, start } from './machine.js';
import { toExecutionDocument } from './document.js';
import { judgeData, toVerification } from './runtime.js';
import type { Effect, ExecutionState, MachineContext, MachineEvent, TaskRequest } from './state.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');

class Sim {
  state: ExecutionState;
  effects: Effect[] = [];
  now = T0;
  color: string | null;
  readonly ctx: MachineContext = { deployments: () => [], slotFree: () => true, liveColor: () => this.color };

  constructor(yaml: string, opts: { color?: string; inputs?: Record<string, unknown> } = {}) {
    this.color = opts.color ?? null;
    const definition = parsePipeline(yaml);
    const t = start({
      id: 'ex1', account: 'default', pipeline: definition.pipeline, pipelineVersion: 1, definition,
      inputs: opts.inputs ?? {}, artifact: '2.0.0', executor: 'alice',
    }, this.now, this.ctx);
    this.state = t.state;
    this.effects.push(...t.effects);
  }

  send(e: MachineEvent): void {
    const t = apply(this.state, e, this.now, this.ctx);
    this.state = JSON.parse(JSON.stringify(t.state)) as ExecutionState;
    this.effects.push(...t.effects);
  }

  tasks(): TaskRequest[] {
    return this.effects.filter((e): e is Extract<Effect, { type: 'enqueueTask' }> => e.type === 'enqueueTask').map((e) => e.task);
  }

  task(step: string, stage?: string): TaskRequest {
    const t = this.tasks().filter((x) => x.step === step && (stage === undefined || x.stage === stage)).pop();
    if (!t) throw new Error(`no task for ${stage ?? ''}/${step}`);
    return t;
  }

  run(step: string, status: 'Succeeded' | 'Failed' = 'Succeeded', o: { stage?: string; verdict?: string; kind?: string } = {}): void {
    const t = this.task(step, o.stage);
    this.send({ type: 'taskStarted', stepRunId: t.taskId, delegate: 'd1' });
    this.send({
      type: 'taskFinished', stepRunId: t.taskId,
      result: { status, exitCode: status === 'Succeeded' ? 0 : 1, outputs: {}, error: status === 'Failed' ? { kind: o.kind ?? 'StepFailed', message: `${step} failed` } : null },
      ...(o.verdict ? { verification: { verdict: o.verdict as 'Healthy' } } : {}),
    });
  }

  fire(prefix: string): void {
    const set = this.effects.filter((e): e is Extract<Effect, { type: 'setTimer' }> => e.type === 'setTimer' && e.key.startsWith(prefix)).pop();
    if (!set) throw new Error(`no timer ${prefix}`);
    this.now = Math.max(this.now, set.at);
    this.send({ type: 'timer', key: set.key });
  }

  stageDoc(id: string) { return toExecutionDocument(this.state).stages.find((s) => s.id === id)!; }
  pairs(stage: string): string[] {
    const s = this.state.stages.find((x) => x.id === stage)!;
    return s.attempts[s.attempts.length - 1]!.history.map((h) => `${h.status}/${h.operationStatus}`);
  }
}

const metrics = `
              metrics:
                - { name: errors, query: 'sum(rate(errors_total{role="$role",job="\${FERRY_VAR_JOB}"}[1m]))', allowedIncrease: 1.5 }`;

describe('health sources', () => {
  const canary = (verify: string, env = '') => `
pipeline: p
variables:
  prom: { type: string, default: "http://prom.internal:9090" }
  job: { type: string, default: api }
environments:
  prod:
    type: production
${env}stages:
  - id: prod
    type: deploy
    service: api
    environment: prod
    infrastructure: local
    strategy:
      canary:
        phases:
          - weight: 10
            verify:
${verify}${metrics}
              duration: 30s
              interval: 5s
          - weight: 100
    steps:
      - { id: deploy, type: shell, script: ./deploy.sh }
`;

  test("a verification without a source uses its stage environment's healthSource, variables expanded", () => {
    const yaml = canary('', '    healthSource: { type: prometheus, url: "${FERRY_VAR_PROM}", bearerTokenSecret: PROM_TOKEN }\n');
    const def = parsePipeline(yaml);
    expect(def.environments.prod!.healthSource).toEqual({ type: 'prometheus', url: '${FERRY_VAR_PROM}', bearerTokenSecret: 'PROM_TOKEN' });
    const sim = new Sim(yaml, { inputs: { prom: 'http://10.1.2.3:9090/' } });
    sim.run('deploy');
    const t = sim.task('verify');
    expect(t.kind).toBe('verify');
    expect(t.spec).toEqual({
      kind: 'verify', source: { type: 'prometheus', url: 'http://10.1.2.3:9090/', bearerTokenSecret: 'PROM_TOKEN' },
      metrics: [{ name: 'errors', query: 'sum(rate(errors_total{role="$role",job="api"}[1m]))' }],
      roles: ['baseline', 'canary'], durationMs: 30_000, intervalMs: 5_000,
    });
    // the token's secret goes with this task only (its value is added at assignment, never stored)
    expect(t.secretNames).toEqual(['PROM_TOKEN']);
    expect(t.env.PROM_TOKEN).toBeUndefined();
    expect(sim.task('deploy').secretNames).toEqual([]);
  });

  test("the verification's own source wins over the environment's", () => {
    const sim = new Sim(canary('              source: { type: prometheus, url: "http://own:9090" }\n', '    healthSource: { type: prometheus, url: "http://env:9090" }\n'));
    sim.run('deploy');
    expect(sim.task('verify').spec).toMatchObject({ source: { url: 'http://own:9090' } });
    expect(sim.task('verify').secretNames).toEqual([]);
  });

  test('no source anywhere is refused at apply, naming the field', () => {
    let err: unknown;
    try { parsePipeline(canary('')); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).message).toMatch(/stages\[0\]\.strategy\.canary\.phases\[0\]\.verify: missing required field "source".*healthSource/);
  });

  test('a verify step in a custom stage needs its own source', () => {
    const yaml = `
pipeline: p
stages:
  - id: check
    type: custom
    steps:
      - { id: v, type: verify, metrics: [{ name: m, query: 'up' }], duration: 10s }
`;
    expect(() => parsePipeline(yaml)).toThrow(/missing required field "source"/);
    const ok = parsePipeline(yaml.replace("type: verify,", 'type: verify, source: { type: prometheus, url: "http://p:9090" },'));
    expect(ok.stages[0]!.steps[0]!.steps[0]!.verify?.source.url).toBe('http://p:9090');
  });
});

describe("the verdict's evidence", () => {
  test('keeps per metric the points, medians, statistic, p-value, effect size and why', () => {
    const cfg = parsePipeline(`
pipeline: p
stages:
  - id: prod
    type: deploy
    service: api
    environment: prod
    infrastructure: local
    strategy:
      canary:
        phases:
          - weight: 10
            verify:
              source: { type: prometheus, url: "http://p" }
              metrics:
                - { name: errors, query: 'e', critical: true }
                - { name: latency, query: 'l', allowedIncrease: 3 }
          - weight: 100
    steps: [{ id: deploy, type: shell, script: x }]
`).stages[0]!.strategy;
    if (cfg.type !== 'canary') throw new Error('canary');
    const base = [0.1, 0.11, 0.12, 0.1, 0.13, 0.11, 0.12, 0.1];
    const data = {
      start: 0, end: 1, stepSeconds: 1,
      metrics: [
        { name: 'errors', role: 'baseline', points: base.map(() => 0), nulls: 0, series: 1 },
        { name: 'errors', role: 'canary', points: base.map(() => 0), nulls: 0, series: 1 },
        { name: 'latency', role: 'baseline', points: base, nulls: 0, series: 1 },
        { name: 'latency', role: 'canary', points: base.map((v) => v * 2), nulls: 0, series: 1 },
      ],
    };
    const v = toVerification(judgeData(cfg.phases[0]!.verify!, data));
    expect(v.verdict).toBe('Healthy'); // latency doubled, but 3x is tolerated
    const latency = (v.metrics as Array<Record<string, unknown>>)[1]!;
    expect(latency).toMatchObject({
      name: 'latency', classification: 'Pass', baseline: { points: 8, median: 0.11 }, canary: { points: 8, median: 0.22 },
    });
    expect(latency.statistic).toBe(64);
    expect(latency.effectSize).toBeCloseTo(2, 5);
    expect(latency.pValue as number).toBeLessThan(0.001);
    expect(latency.reason).toMatch(/within the tolerated 3/);
  });
});

describe('a query Prometheus refused', () => {
  test('fails the verification, also without failOnNoData: a typo is not "no data"', () => {
    const def = parsePipeline(`
pipeline: p
stages:
  - id: check
    type: custom
    steps:
      - id: v
        type: verify
        source: { type: prometheus, url: "http://p" }
        metrics: [{ name: typo, query: 'sum(rate(x[1m])' }, { name: fine, query: 'y' }]
`);
    const cfg = def.stages[0]!.steps[0]!.steps[0]!.verify!;
    const ok = [1, 1, 1, 1, 1];
    const data = {
      start: 0, end: 1, stepSeconds: 1,
      metrics: [
        { name: 'typo', role: 'baseline', points: [], nulls: 0, series: 0, error: 'prometheus: bad_data: 1:16: parse error: unclosed left parenthesis' },
        { name: 'typo', role: 'canary', points: [], nulls: 0, series: 0, error: 'prometheus: bad_data: 1:16: parse error: unclosed left parenthesis' },
        { name: 'fine', role: 'baseline', points: ok, nulls: 0, series: 1 },
        { name: 'fine', role: 'canary', points: ok, nulls: 0, series: 1 },
      ],
    };
    const v = judgeData(cfg, data);
    expect(v.verdict).toBe('Unhealthy');
    expect(v.reason).toMatch(/the query of typo failed \(baseline: prometheus: bad_data/);
    expect(v.metrics[0]).toMatchObject({ name: 'typo', classification: 'NoData', failed: true });
    expect(v.metrics[0]!.reason).toMatch(/^the query failed/);
    expect(v.metrics[1]).toMatchObject({ name: 'fine', classification: 'Pass', failed: false });
    // without errors the same empty series is plain NoData, which passes without failOnNoData
    expect(judgeData(cfg, { metrics: data.metrics.map(({ error: _e, ...m }) => m) }).verdict).toBe('Healthy');
  });
});

describe('blue/green', () => {
  const twoStages = `
pipeline: p
stages:
  - id: web
    type: deploy
    service: web
    environment: prod
    infrastructure: local
    strategy: { blueGreen: {} }
    steps: [{ id: deploy, type: shell, script: './deploy.sh "$FERRY_COLOR"' }]
    swapSteps: [{ id: swap, type: shell, script: './swap.sh "$FERRY_COLOR"' }]
  - id: smoke
    type: custom
    steps: [{ id: check, type: shell, script: ./check.sh }]
    failureStrategies: [{ on: [AllErrors], action: { type: pipelineRollback } }]
`;

  test('a pipeline rollback swaps an earlier blue/green stage back to the colour that was live before', () => {
    const sim = new Sim(twoStages, { color: 'blue' });
    expect(sim.task('deploy').env.FERRY_COLOR).toBe('green');
    sim.run('deploy');
    expect(sim.task('swap').env.FERRY_COLOR).toBe('green');
    sim.run('swap');
    expect(sim.effects).toContainEqual(expect.objectContaining({ type: 'setLiveColor', color: 'green' }));
    expect(sim.stageDoc('web').liveColor).toBe('green');
    sim.run('check', 'Failed');
    // the swap back: to blue, the colour live before this execution
    const back = sim.tasks().filter((t) => t.step === 'swap');
    expect(back).toHaveLength(2);
    expect(back[1]!.env.FERRY_COLOR).toBe('blue');
    sim.run('swap');
    expect(sim.state.status).toBe('Failed');
    expect(sim.effects.filter((e) => e.type === 'setLiveColor').map((e) => (e as { color: string }).color)).toEqual(['green', 'blue']);
    expect(sim.stageDoc('web')).toMatchObject({ rolledBack: true, liveColor: 'blue' });
    expect(sim.tasks().filter((t) => t.step === 'deploy')).toHaveLength(1); // no redeploy
  });
});

describe('pauses', () => {
  const paused = `
pipeline: p
stages:
  - id: prod
    type: deploy
    service: api
    environment: prod
    infrastructure: local
    strategy:
      canary:
        phases:
          - { weight: 10, pause: { duration: 10m } }
          - { weight: 100 }
    steps: [{ id: deploy, type: shell, script: ./deploy.sh }]
`;

  test('a timed pause goes on by itself when its time is up, and `promote` cuts it short', () => {
    const a = new Sim(paused);
    a.run('deploy');
    expect(a.state.status).toBe('Running');
    expect(a.pairs('prod').at(-1)).toBe('InProgress/PhaseSucceeded');
    expect(a.stageDoc('prod').paused).toMatchObject({ phase: 0, until: new Date(T0 + 600_000).toISOString() });
    a.fire('pause:');
    expect(a.task('deploy').env.FERRY_CANARY_WEIGHT).toBe('100');

    const b = new Sim(paused);
    b.run('deploy');
    b.send({ type: 'promote', by: 'bob' });
    expect(b.task('deploy').env.FERRY_CANARY_WEIGHT).toBe('100');
    expect(b.effects).toContainEqual({ type: 'clearTimer', key: 'pause:0:1:0' });
  });
});
