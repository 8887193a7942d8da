/**
 * Canary deployments verified against a real Prometheus (issue 6), with the example in
 * examples/canary/ (its pipeline with short windows): a good version goes through
 * 10 → 50 → 100 with a Healthy verdict at each verified phase, and a bad version (more
 * errors, slower) is caught at 10 % and the stage rolls back to the last good artifact.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { freePort, makeTempDir, useProcessGuard, type FerryDelegate, type FerryServer } from './support/processes.js';
import { describeWithPrometheus, startPrometheus, type PrometheusHandle } from './support/prometheus.js';
import {
  EXAMPLE, applyPipeline, execution, fastPipeline, pairs, runFollow, servedVersion, startStack, stopExample,
} from './canary-helpers.js';

useProcessGuard();

describeWithPrometheus('canary deployments verified against Prometheus', () => {
  let prom: PrometheusHandle;
  let server: FerryServer;
  let delegate: FerryDelegate;
  let state: string;
  let inputs: Record<string, string | number>;
  let baselinePort: number;
  let canaryPort: number;

  beforeAll(async () => {
    baselinePort = await freePort();
    canaryPort = await freePort();
    state = makeTempDir('ferry-canary-state-');
    // scrapes the example's fixed ports every second; nothing listens there yet
    prom = await startPrometheus({ targets: [`127.0.0.1:${baselinePort}`, `127.0.0.1:${canaryPort}`], interval: '1s' });
    ({ server, delegate } = await startStack());
    await applyPipeline(server, fastPipeline('pipeline.yaml'));
    inputs = { root: EXAMPLE, state, prometheus: prom.url, 'baseline-port': baselinePort, 'canary-port': canaryPort };
  });

  afterAll(async () => {
    if (state) stopExample(state);
    await delegate?.stop();
    await server?.stop();
    await prom?.stop();
  });

  it('a good version goes 10 → 50 → 100, each verified phase Healthy with its evidence', async () => {
    // the first deployment: the baseline runs v1 too
    const first = await runFollow(server, 'canary-demo', 'v1', inputs);
    expect(first.code, first.stdout).toBe(0);
    expect(await servedVersion(baselinePort)).toBe('v1');

    const run = await runFollow(server, 'canary-demo', 'v2', inputs);
    expect(run.code, run.stdout).toBe(0);
    const doc = await execution(server, run.id);
    expect(doc.status).toBe('Succeeded');
    const stage = doc.stages[0]!;
    expect(stage.status).toBe('Succeeded');
    expect(stage.rolledBack).toBe(false);
    const attempt = stage.attempts[0]!;
    expect(`${attempt.status}/${attempt.operationStatus}`).toBe('Succeeded/Approved');
    // every verified phase evaluated its gates, then passed, before the next phase
    const history = pairs(attempt);
    expect(history.filter((p) => p === 'InProgress/EvaluatingGates')).toHaveLength(2);
    expect(history.filter((p) => p === 'InProgress/PhaseSucceeded')).toHaveLength(2);
    expect(history.indexOf('InProgress/EvaluatingGates')).toBeLessThan(history.indexOf('InProgress/PhaseSucceeded'));

    const deploys = stage.steps.filter((s) => s.id === 'deploy');
    expect(deploys.map((s) => [s.phase, s.weight, s.status])).toEqual([[0, 10, 'Succeeded'], [1, 50, 'Succeeded'], [2, 100, 'Succeeded']]);
    const verifies = stage.steps.filter((s) => s.id === 'verify');
    expect(verifies.map((s) => [s.phase, s.status])).toEqual([[0, 'Succeeded'], [1, 'Succeeded']]);
    for (const v of verifies) {
      const ver = v.verification!;
      expect(ver.verdict, JSON.stringify(ver)).toBe('Healthy');
      expect(ver.score).toBe(100);
      expect(ver.metrics.map((m) => m.name)).toEqual(['error-rate', 'p95-latency']);
      for (const m of ver.metrics) {
        expect(m.classification, m.reason).toBe('Pass');
        expect(m.baseline.points).toBeGreaterThanOrEqual(3);
        expect(m.canary.points).toBeGreaterThanOrEqual(3);
        expect(typeof m.baseline.median).toBe('number');
        expect(typeof m.canary.median).toBe('number');
        expect(typeof m.pValue).toBe('number');
        expect(typeof m.statistic).toBe('number'); // Mann-Whitney U
        expect(m.reason.length).toBeGreaterThan(0);
      }
      const errors = ver.metrics.find((m) => m.name === 'error-rate')!;
      expect(errors.canary.median).toBe(0); // a good version serves without errors
      const p95 = ver.metrics.find((m) => m.name === 'p95-latency')!;
      expect(p95.canary.median!).toBeGreaterThan(0.1); // 110-125 ms: the 0.1-0.25 s bucket
      expect(p95.canary.median!).toBeLessThan(0.25);
    }
    // the verdict is in the step's log, with a line per metric
    const log = (await server.cli(['logs', run.id, '--stage', 'prod'])).ok().stdout;
    expect(log).toMatch(/\[prod\/verify@0\] verification Healthy, score 100/);
    expect(log).toMatch(/\[prod\/verify@1\] verification Healthy, score 100/);
    expect(log).toMatch(/\[prod\/verify@0\] error-rate \*\s+\d+\s+0\s+\d+\s+0\s+[\d.]+\s+Pass/);
    expect(log).toMatch(/\[prod\/verify@0\] p95-latency\s+\d+/);
    // the human status tree says so too
    const tree = (await server.cli(['execution', run.id])).ok().stdout;
    expect(tree).toMatch(/verification Healthy/);

    // at 100 % v2 is the stable version and the canary instance is gone
    expect(await servedVersion(baselinePort)).toBe('v2');
    expect(await servedVersion(canaryPort)).toBeNull();
    expect(readFileSync(join(state, 'stable'), 'utf8').trim()).toBe('v2');
  });

  it('a bad version fails verification at 10 % and the stage rolls back to the last good artifact', async () => {
    const run = await runFollow(server, 'canary-demo', 'v3-bad', inputs);
    expect(run.code, run.stdout).toBe(1);
    const doc = await execution(server, run.id);
    expect(doc.status).toBe('Failed');
    const stage = doc.stages[0]!;
    expect(stage.status).toBe('Failed');
    expect(stage.rolledBack).toBe(true);
    expect(stage.rollbackArtifact).toBe('v2');
    expect(stage.failure).toMatchObject({ kind: 'Verification', step: 'verify', action: 'stageRollback' });
    const attempt = stage.attempts[0]!;
    expect(`${attempt.status}/${attempt.operationStatus}`).toBe('Failed/GatesFailed');
    const history = pairs(attempt);
    expect(history).toContain('InProgress/EvaluatingGates');
    expect(history).toContain('InProgress/GatesFailed');
    expect(history).not.toContain('InProgress/PhaseSucceeded'); // it never went past 10 %

    const verify = stage.steps.find((s) => s.id === 'verify' && s.phase === 0)!;
    expect(verify.status).toBe('Failed');
    expect(verify.error?.kind).toBe('Verification');
    expect(verify.error?.message).toMatch(/the canary is Unhealthy \(score \d+\); failed: error-rate \(critical\)/);
    const ver = verify.verification!;
    expect(ver.verdict).toBe('Unhealthy');
    const errors = ver.metrics.find((m) => m.name === 'error-rate')!;
    expect(errors.classification, errors.reason).toBe('High');
    expect(errors.failed).toBe(true);
    expect(errors.canary.median!).toBeGreaterThan(0.05);
    expect(errors.baseline.median).toBe(0);
    expect(errors.pValue!).toBeLessThan(0.05);
    const p95 = ver.metrics.find((m) => m.name === 'p95-latency')!;
    expect(p95.classification, p95.reason).toBe('High');
    expect(p95.canary.median!).toBeGreaterThan(p95.baseline.median! * 2);

    // phase 1 never ran; the rollback step did, with the last good artifact
    expect(stage.steps.filter((s) => s.id === 'deploy' && s.phase === 1).map((s) => s.status)).toEqual(['Skipped']);
    const rollback = stage.steps.find((s) => s.id === 'rollback')!;
    expect(rollback).toMatchObject({ status: 'Succeeded', rollback: true });
    const rollbackLog = (await server.cli(['logs', run.id, '--stage', 'prod', '--step', 'rollback'])).ok().stdout;
    expect(rollbackLog).toMatch(/stopping canary v3-bad/);
    expect(rollbackLog).toMatch(/rolled back: v2 serves all traffic/);
    const log = (await server.cli(['logs', run.id, '--stage', 'prod'])).ok().stdout;
    expect(log).toMatch(/\[prod\/verify@0\] verification Unhealthy/);
    expect(log).toMatch(/\[prod\/verify@0\] error-rate \*.*High FAIL/);

    // the canary is gone and v2 serves everything
    expect(await servedVersion(canaryPort)).toBeNull();
    expect(await servedVersion(baselinePort)).toBe('v2');
    expect(existsSync(join(state, 'canary.pid'))).toBe(false);
    expect(readFileSync(join(state, 'weight'), 'utf8').trim()).toBe('0');

  });
});
