/**
 * Verification edge cases and the other canary / blue-green paths (issue 6), end to end:
 * a query that matches nothing with and without `failOnNoData`, a blue/green stage whose
 * verification fails and swaps back without redeploying (the example's blue-green.yaml
 * against a real Prometheus), and a paused canary phase that `ferry promote` continues.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, makeTempDir, useProcessGuard, waitFor, type FerryDelegate, type FerryServer } from './support/processes.js';
import { describeWithPrometheus, startPrometheus, type PrometheusHandle } from './support/prometheus.js';
import {
  EXAMPLE, applyPipeline, execution, fastPipeline, pairs, runFollow, servedVersion, startStack, stopExample,
  type ExecutionDoc,
} from './canary-helpers.js';

useProcessGuard();

let server: FerryServer;
let delegate: FerryDelegate;

beforeAll(async () => {
  ({ server, delegate } = await startStack());
});
afterAll(async () => {
  await delegate?.stop();
  await server?.stop();
});

const lines = (file: string): string[] => {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
};

async function runJson(pipeline: string, artifact: string, inputs: Record<string, string | number> = {}): Promise<string> {
  const args = ['run', pipeline, '--artifact', artifact, ...Object.entries(inputs).flatMap(([k, v]) => ['--input', `${k}=${v}`]), '--json'];
  return (await server.cli(args)).json<ExecutionDoc>().id;
}

/** The execution document from the API (polling through the CLI costs a process per look). */
const fetchDoc = async (id: string): Promise<ExecutionDoc> => {
  const r = await server.api<ExecutionDoc>('GET', `executions/${id}`);
  if (r.status !== 200) throw new Error(`GET executions/${id}: ${r.status} ${r.text}`);
  return r.body;
};

const ended = (id: string, timeout = 60_000) => waitFor(async () => {
  const d = await fetchDoc(id);
  return d.finishedAt ? d : undefined;
}, { timeout, interval: 300, message: `execution ${id} to end` });

describeWithPrometheus('verification against Prometheus', () => {
  let prom: PrometheusHandle;
  let bluePort: number;
  let greenPort: number;
  let state: string;

  beforeAll(async () => {
    bluePort = await freePort();
    greenPort = await freePort();
    state = makeTempDir('ferry-bluegreen-state-');
    prom = await startPrometheus({ targets: [`127.0.0.1:${bluePort}`, `127.0.0.1:${greenPort}`], interval: '1s' });
  });
  afterAll(async () => {
    if (state) stopExample(state);
    await prom?.stop();
  });

  /** A canary stage whose one metric matches no series at all. */
  const GHOST = 'sum(rate(ferry_no_such_metric_total{role="$role"}[5s]))';
  const noDataPipeline = (name: string, failOnNoData: boolean, query = GHOST) => `
pipeline: ${name}
environments:
  staging:
    # the strict one names its own source: the environment's would be unreachable
    healthSource: { type: prometheus, url: "${failOnNoData ? 'http://127.0.0.1:1' : prom.url}", bearerTokenSecret: PROM_TOKEN }
stages:
  - id: canary
    type: deploy
    service: ${name}
    environment: staging
    infrastructure: local
    strategy:
      canary:
        phases:
          - weight: 50
            verify:
              ${failOnNoData ? `source: { type: prometheus, url: "\${FERRY_VAR_PROM}" }` : ''}
              metrics:
                - name: ghost
                  query: '${query}'
                  direction: increase
              duration: 3s
              interval: 1s
              failOnNoData: ${failOnNoData}
          - weight: 100
    steps:
      - { id: deploy, type: shell, script: 'echo "weight $FERRY_CANARY_WEIGHT"' }
${failOnNoData ? `variables:\n  prom: { type: string, default: "http://127.0.0.1:1" }\n` : ''}`;

  it('no data: passes without failOnNoData (verdict NoData), fails the gate with it; a refused query fails either way', async () => {
    // the lenient one reads a source with a bearer token: a secret, never stored in clear
    const token = 'prom-Bearer-t0ken-4711';
    (await server.cli(['secret', 'set', 'PROM_TOKEN'], { input: `${token}\n` })).ok();
    await applyPipeline(server, noDataPipeline('ghost-lenient', false));
    await applyPipeline(server, noDataPipeline('ghost-strict', true));
    await applyPipeline(server, noDataPipeline('ghost-typo', false, GHOST.slice(0, -1))); // unbalanced parenthesis
    const [lenientId, strictId, typoId] = await Promise.all([
      runJson('ghost-lenient', 'g1'),
      runJson('ghost-strict', 'g1', { prom: prom.url }),
      runJson('ghost-typo', 'g1'),
    ]);

    const lenient = await ended(lenientId);
    expect(lenient.status).toBe('Succeeded');
    const lv = lenient.stages[0]!.steps.find((s) => s.id === 'verify')!;
    expect(lv.status).toBe('Succeeded');
    expect(lv.verification).toMatchObject({ verdict: 'NoData', score: 0 });
    expect(lv.verification!.metrics).toHaveLength(1);
    expect(lv.verification!.metrics[0]).toMatchObject({
      name: 'ghost', classification: 'NoData', baseline: { points: 0, median: null }, canary: { points: 0, median: null }, pValue: null,
    });
    expect(lv.verification!.metrics[0]!.reason).toMatch(/no data.*failOnNoData is off/);
    expect(lenient.stages[0]!.steps.filter((s) => s.id === 'deploy').map((s) => s.status)).toEqual(['Succeeded', 'Succeeded']);
    const lenientLog = (await server.cli(['logs', lenientId, '--stage', 'canary'])).ok().stdout;
    expect(lenientLog).toMatch(/\[canary\/verify@0\] ghost \[baseline\]: 0 point\(s\)/);
    expect(lenientLog).toMatch(/\[canary\/verify@0\] verification NoData/);
    for (const file of ['ferry.db', 'ferry.db-wal']) {
      const p = join(server.dataDir, file);
      if (existsSync(p)) expect(readFileSync(p).toString('latin1').includes(token), `${file} holds the token in clear`).toBe(false);
    }

    const strict = await ended(strictId);
    expect(strict.status).toBe('Failed');
    const stage = strict.stages[0]!;
    expect(stage.status).toBe('Failed');
    expect(stage.rolledBack).toBe(false); // nothing to roll back with: no rollback steps
    const attempt = stage.attempts[0]!;
    expect(`${attempt.status}/${attempt.operationStatus}`).toBe('Failed/GatesFailed');
    expect(pairs(attempt)).toContain('InProgress/EvaluatingGates');
    const sv = stage.steps.find((s) => s.id === 'verify')!;
    expect(sv.status).toBe('Failed');
    expect(sv.error?.kind).toBe('Verification');
    expect(sv.verification!.verdict).toBe('Unhealthy');
    expect(sv.verification!.metrics[0]).toMatchObject({ name: 'ghost', classification: 'NoData', failed: true });
    expect(sv.verification!.metrics[0]!.reason).toMatch(/counted as failed \(failOnNoData\)/);
    expect(stage.steps.filter((s) => s.id === 'deploy').map((s) => [s.phase, s.status])).toEqual([[0, 'Succeeded'], [1, 'Skipped']]);

    // a query Prometheus refuses is no "no data": the verification fails, failOnNoData or not
    const typo = await ended(typoId);
    expect(typo.status).toBe('Failed');
    const tv = typo.stages[0]!.steps.find((s) => s.id === 'verify')!;
    expect(tv.error?.kind).toBe('Verification');
    expect(tv.verification!.verdict).toBe('Unhealthy');
    expect(tv.verification!.metrics[0]).toMatchObject({ name: 'ghost', failed: true });
    expect(tv.verification!.metrics[0]!.reason).toMatch(/^the query failed \(baseline: prometheus: bad_data: .*parse error/);
  });

  it('blue/green: a failed verification swaps back to the live colour without redeploying', async () => {
    await applyPipeline(server, fastPipeline('blue-green.yaml', { duration: '6s' }));
    const inputs = { root: EXAMPLE, state, prometheus: prom.url, 'blue-port': bluePort, 'green-port': greenPort };

    // the first deployment goes to blue and makes it live (nothing to compare with yet)
    const first = await runFollow(server, 'blue-green-demo', 'v1', inputs);
    expect(first.code, first.stdout).toBe(0);
    const d1 = await execution(server, first.id);
    expect(d1.stages[0]!.liveColor).toBe('blue');
    expect(d1.stages[0]!.steps.filter((s) => s.id !== 'verify').map((s) => [s.id, s.color, s.status])).toEqual([['deploy', 'blue', 'Succeeded'], ['swap', 'blue', 'Succeeded']]);
    expect(d1.stages[0]!.steps.find((s) => s.id === 'verify')!.verification!.verdict).toBe('NoData');
    expect(readFileSync(join(state, 'live'), 'utf8').trim()).toBe('blue');

    // a bad build goes to the idle colour, green, and fails its verification against blue
    const id = await runJson('blue-green-demo', 'v2-bad', inputs);
    await waitFor(async () => {
      const d = await fetchDoc(id);
      return d.stages[0]!.attempts[0]?.operationStatus === 'EvaluatingGates' ? d : undefined;
    }, { timeout: 30_000, interval: 200, message: 'the verification to run' });
    const deploysBefore = lines(join(state, 'deploy.runs'));
    expect(deploysBefore).toHaveLength(2);
    expect(deploysBefore[1]).toMatch(/v2-bad green$/);
    expect(await servedVersion(greenPort)).toBe('v2-bad');

    const doc = await ended(id);
    expect(doc.status).toBe('Failed');
    const stage = doc.stages[0]!;
    expect(stage.rolledBack).toBe(true);
    expect(stage.liveColor).toBe('blue');
    expect(`${stage.attempts[0]!.status}/${stage.attempts[0]!.operationStatus}`).toBe('Failed/GatesFailed');
    const verify = stage.steps.find((s) => s.id === 'verify')!;
    expect(verify.verification!.verdict).toBe('Unhealthy');
    expect(verify.verification!.metrics.find((m) => m.name === 'error-rate')!.classification).toBe('High');
    // the rollback ran the swap back to blue, and only that: no deploy ran again
    expect(stage.steps.map((s) => [s.id, s.color ?? null, s.rollback ?? false, s.status])).toEqual([
      ['deploy', 'green', false, 'Succeeded'],
      ['verify', 'green', false, 'Failed'],
      ['swap', 'blue', true, 'Succeeded'],
    ]);
    expect(lines(join(state, 'deploy.runs'))).toEqual(deploysBefore);
    const swaps = lines(join(state, 'swap.runs'));
    expect(swaps).toHaveLength(2);
    expect(swaps[1]).toMatch(/-> blue$/);
    expect(readFileSync(join(state, 'live'), 'utf8').trim()).toBe('blue');
    expect(await servedVersion(bluePort)).toBe('v1');
    const infra = (await server.cli(['infrastructures', '--json'])).json<Array<{ service: string; liveColor: string | null }>>();
    expect(infra.find((m) => m.service === 'blue-green-demo')?.liveColor).toBe('blue');
    const tree = (await server.cli(['execution', id])).ok().stdout;
    expect(tree).toMatch(/live blue/);
  });
});

describe('pause and promote', () => {
  const pipeline = `
pipeline: paused
stages:
  - id: rollout
    type: deploy
    service: paused-svc
    environment: staging
    infrastructure: local
    strategy:
      canary:
        phases:
          - weight: 20
            pause: {}
          - weight: 60
            pause: { duration: 3s }
          - weight: 100
    steps:
      - { id: deploy, type: shell, script: 'echo "weight $FERRY_CANARY_WEIGHT"' }
    rollbackSteps:
      - { id: undo, type: shell, script: 'echo "back to [$FERRY_ROLLBACK_ARTIFACT]"' }
`;

  const pausedAt = (id: string, phase: number) => waitFor(async () => {
    const d = await fetchDoc(id);
    return d.stages[0]!.paused?.phase === phase ? d : undefined;
  }, { timeout: 30_000, interval: 200, message: `phase ${phase} to pause` });

  beforeAll(async () => {
    await applyPipeline(server, pipeline);
  });

  it('a phase paused without a duration waits for ferry promote; a timed pause goes on by itself', async () => {
    const id = await runJson('paused', 'p1');
    const d0 = await pausedAt(id, 0);
    expect(d0.status).toBe('Paused');
    expect(d0.stages[0]!.paused!.until).toBeNull();
    const a0 = d0.stages[0]!.attempts[0]!;
    expect(`${a0.status}/${a0.operationStatus}`).toBe('InProgress/ManualInterventionPending');
    expect(d0.stages[0]!.steps.filter((s) => s.id === 'deploy').map((s) => [s.phase, s.status])).toEqual([[0, 'Succeeded'], [1, 'Waiting'], [2, 'Waiting']]);
    const human = (await server.cli(['execution', id])).ok().stdout;
    expect(human).toMatch(/phase 0 paused: ferry promote/);

    (await server.cli(['promote', id])).ok();
    const d1 = await pausedAt(id, 1);
    expect(d1.status).toBe('Running'); // a timed pause is no manual intervention
    expect(d1.stages[0]!.paused!.until).not.toBeNull();
    expect(d1.stages[0]!.attempts[0]!.operationStatus).toBe('PhaseSucceeded');

    const done = await ended(id);
    expect(done.status).toBe('Succeeded');
    const refused = await server.cli(['promote', id]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: WRONG_STATE: /);
    const deploys = done.stages[0]!.steps.filter((s) => s.id === 'deploy');
    const gap = Date.parse(deploys[2]!.startedAt!) - Date.parse(deploys[1]!.startedAt!);
    expect(gap).toBeGreaterThanOrEqual(2_900);
    expect((await server.cli(['logs', id, '--stage', 'rollout', '--step', 'deploy'])).ok().stdout).toBe('weight 20\nweight 60\nweight 100\n');
    const history = pairs(done.stages[0]!.attempts[0]!);
    expect(history.filter((p) => p === 'InProgress/ManualInterventionPending')).toHaveLength(1);
    expect(history.filter((p) => p === 'InProgress/PhaseSucceeded').length).toBeGreaterThanOrEqual(2);
  });

  it('ferry intervene --action rollback during a pause rolls the stage back', async () => {
    const id = await runJson('paused', 'p2');
    await pausedAt(id, 0);
    (await server.cli(['intervene', id, '--action', 'rollback'])).ok();
    const done = await ended(id);
    expect(done.status).toBe('Failed');
    const stage = done.stages[0]!;
    expect(stage.rolledBack).toBe(true);
    expect(stage.rollbackArtifact).toBe('p1');
    expect((await server.cli(['logs', id, '--stage', 'rollout', '--step', 'undo'])).ok().stdout).toBe('back to [p1]\n');
    expect(stage.steps.filter((s) => s.id === 'deploy').map((s) => [s.phase, s.status])).toEqual([[0, 'Succeeded'], [1, 'Skipped'], [2, 'Skipped']]);
  });
});
