/**
 * The execution engine through real processes (`ferry server`, `ferry-delegate`, the CLI):
 * a table of scenarios, each asserting the exact sequence of <status, operationStatus>
 * pairs its stage attempts went through (CONTRACT §6) — as recorded in the execution
 * document, and as a user polling GET /api/v1/executions/:id saw them — plus what a user
 * checks: execution, stage and step statuses, logs, who decided what.
 *
 * Scenarios use their own pipeline (so their own infrastructure mapping) and run
 * concurrently against one server and one delegate. On SQLite here; engine-scenarios-pg
 * runs them again on PostgreSQL (FERRY_SCENARIOS_DB=postgres).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createDelegateToken, ferryCli, startDelegate, startServer, useProcessGuard, waitFor, waitForDelegates,
  type FerryDelegate, type FerryServer,
} from './support/processes.js';
import { EngineClient, expectPairs, FAST_DELEGATE, Gate, stage, steps, userToken, type ExecDoc } from './engine-helpers.js';
import { createDatabase, dropDatabase } from './support/postgres.js';

useProcessGuard();

let server: FerryServer;
let delegate: FerryDelegate;
let c: EngineClient;
let database: string | undefined;

beforeAll(async () => {
  if (process.env.FERRY_SCENARIOS_DB === 'postgres') database = await createDatabase({ prefix: 'scenarios' });
  server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '1s' }, ...(database ? { databaseUrl: database } : {}) });
  delegate = startDelegate({ url: server.url, token: await createDelegateToken(server), name: 'engine-runner', capacity: 16, env: FAST_DELEGATE });
  await waitForDelegates(server, { names: ['engine-runner'] });
  c = new EngineClient(server);
});

afterAll(async () => {
  await delegate?.stop();
  await server?.stop();
  if (database) await dropDatabase(database);
});

const cli = (args: string[], token?: string) => ferryCli(args, { url: server.url, token: token ?? server.adminToken });

/** A deploy stage of its own mapping (service = the pipeline's name). */
const deployStage = (pipeline: string, id: string, body: string, env = 'dev'): string => `
  - id: ${id}
    type: deploy
    service: ${pipeline}
    environment: ${env}
    infrastructure: local
${body}`;

// Pairs, as the tests write them.
const QFA = 'NotDeployed/QueuedForAgent';
const IQFA = 'InProgress/QueuedForAgent';
const PIP = 'InProgress/PhaseInProgress';
const OK = 'Succeeded/Approved';
const MIP = 'InProgress/ManualInterventionPending';

describe.concurrent('scenarios', () => {
  it('success: every stage <NotDeployed, QueuedForAgent> → <InProgress, PhaseInProgress> → <Succeeded, Approved>; outputs and when; ferry logs --follow exits 0', async () => {
    await c.apply(`pipeline: sc-success
stages:${deployStage('sc-success', 'deploy', `    steps:
      - { id: work, type: shell, script: 'echo "deploying $FERRY_ARTIFACT"; echo "RESULT=ok-$FERRY_ARTIFACT" >> "$FERRY_OUTPUT"; sleep 0.3' }`)}
  - id: smoke
    type: custom
    steps:
      - { id: check, type: shell, script: 'echo "checked $FERRY_OUT_WORK_RESULT"; sleep 0.2' }
      - { id: never, type: shell, when: 'out.work.RESULT != "ok-1.0.0"', script: 'echo never' }
  - id: hotfix-only
    type: custom
    when: 'startsWith(artifact, "hotfix-")'
    steps: [ { id: say, type: shell, script: 'echo hotfix' } ]
`);
    const run = await c.run('sc-success', { artifact: '1.0.0' });
    const obs = c.observe(run.id);
    const follow = await cli(['logs', run.id, '--follow']);
    expect(follow.code, follow.stderr).toBe(0);
    expect(follow.stdout).toContain('[deploy/work] deploying 1.0.0');
    expect(follow.stdout).toContain('[smoke/check] checked ok-1.0.0');
    await obs.stop();
    const d = await c.ended(run.id, 'Succeeded');
    expectPairs(d, obs, 'deploy', [QFA, PIP, OK]);
    expectPairs(d, obs, 'smoke', [QFA, PIP, OK]);
    expect(steps(d, 'smoke').map((s) => [s.id, s.status])).toEqual([['check', 'Succeeded'], ['never', 'Skipped']]);
    expect(stage(d, 'hotfix-only')).toMatchObject({ status: 'Skipped', attempts: [] });
    expect(steps(d, 'deploy', 'work')[0]!.outputs).toEqual({ RESULT: 'ok-1.0.0' });
    expect(steps(d, 'deploy', 'work')[0]).toMatchObject({ status: 'Succeeded', exitCode: 0, attempt: 1, try: 1, delegate: 'engine-runner' });
    expect(await c.log(run.id, 'deploy', 'work')).toBe('deploying 1.0.0\n');
    expect(obs.executionStatuses).toEqual(['Running', 'Succeeded']);
  });

  it('step failure then retry success: the retry waits its interval (Waiting, retryAt) and runs as try 2', async () => {
    await c.apply(`pipeline: sc-retry
stages:${deployStage('sc-retry', 'deploy', `    steps:
      - id: flaky
        type: shell
        script: 'echo "try $FERRY_TRY"; [ "$FERRY_TRY" -ge 2 ]'
        failureStrategies:
          - on: [StepFailed]
            action: { type: retry, count: 2, interval: 2s }`)}
`);
    const run = await c.run('sc-retry', { artifact: '2.0.0' });
    const obs = c.observe(run.id);
    const waiting = await c.until(run.id, (d) => steps(d, 'deploy', 'flaky').some((s) => s.try === 2 && s.status === 'Waiting'), 'try 2 to wait out its interval');
    const [t1, t2] = steps(waiting, 'deploy', 'flaky');
    expect(t1).toMatchObject({ try: 1, status: 'Failed', exitCode: 1, error: { kind: 'StepFailed' } });
    expect(t2!.retryAt).toBeTruthy();
    expect(Date.parse(t2!.retryAt!) - Date.parse(t1!.finishedAt!)).toBeGreaterThanOrEqual(1900);
    expect(waiting.status).toBe('Running');
    const d = await c.ended(run.id, 'Succeeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', [QFA, PIP, IQFA, PIP, OK]);
    expect(steps(d, 'deploy', 'flaky').map((s) => [s.try, s.status])).toEqual([[1, 'Failed'], [2, 'Succeeded']]);
    expect(Date.parse(steps(d, 'deploy', 'flaky')[1]!.queuedAt!)).toBeGreaterThanOrEqual(Date.parse(t2!.retryAt!));
    expect(await c.log(run.id, 'deploy', 'flaky')).toBe('try 2\n');
  });

  it('parallel group with continueOnError: PartiallySucceeded, the failed step Ignored, later steps still run', async () => {
    await c.apply(`pipeline: sc-partial
stages:${deployStage('sc-partial', 'deploy', `    steps:
      - parallel:
          - { id: main, type: shell, script: 'sleep 0.5; echo main done' }
          - { id: extras, type: shell, script: 'sleep 0.5; echo extras broke; exit 4', continueOnError: true }
      - { id: after, type: shell, script: 'echo after ran' }`)}
`);
    const run = await c.run('sc-partial', { artifact: '3.0.0' });
    const obs = c.observe(run.id);
    const follow = await cli(['logs', run.id, '--follow']);
    expect(follow.code, 'ferry logs --follow exits 0 for PartiallySucceeded').toBe(0);
    const d = await c.ended(run.id, 'PartiallySucceeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', [QFA, PIP, IQFA, PIP, 'PartiallySucceeded/PhasePartiallySucceeded']);
    expect(stage(d, 'deploy').status).toBe('PartiallySucceeded');
    expect(steps(d, 'deploy').map((s) => [s.id, s.status])).toEqual(expect.arrayContaining([['main', 'Succeeded'], ['extras', 'Ignored'], ['after', 'Succeeded']]));
    expect(steps(d, 'deploy', 'extras')[0]).toMatchObject({ exitCode: 4, error: { kind: 'StepFailed' } });
    // the two parallel steps ran at the same time
    const [m, e] = [steps(d, 'deploy', 'main')[0]!, steps(d, 'deploy', 'extras')[0]!];
    expect(Date.parse(e.startedAt!)).toBeLessThan(Date.parse(m.finishedAt!));
    expect(await c.log(run.id, 'deploy', 'after')).toBe('after ran\n');
  });

  it('a scheduled stage waits <NotDeployed, Scheduled> until its time', async () => {
    const at = new Date(Date.now() + 5000).toISOString();
    await c.apply(`pipeline: sc-schedule
stages:${deployStage('sc-schedule', 'deploy', `    schedule: { at: "${at}" }
    steps:
      - { id: work, type: shell, script: 'echo on time' }`)}
`);
    const run = await c.run('sc-schedule', { artifact: 's1' });
    const obs = c.observe(run.id);
    const waiting = await c.atPair(run.id, 'deploy', 'NotDeployed/Scheduled');
    expect(waiting.status).toBe('Running');
    expect(stage(waiting, 'deploy').status).toBe('Scheduled');
    expect(steps(waiting, 'deploy', 'work')[0]!.status).toBe('Waiting');
    const d = await c.ended(run.id, 'Succeeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', ['NotDeployed/Scheduled', QFA, PIP, OK]);
    expect(Date.parse(steps(d, 'deploy', 'work')[0]!.queuedAt!)).toBeGreaterThanOrEqual(Date.parse(at));
  });

  it('pipelineRollback: the failed stage and every completed deploy stage before it roll back, newest first', async () => {
    await c.apply(`pipeline: sc-prb
stages:${deployStage('sc-prb', 'one', `    steps:
      - { id: install, type: shell, script: 'echo one' }
    rollbackSteps:
      - { id: undo, type: shell, script: 'echo "undo one to [$FERRY_ROLLBACK_ARTIFACT]"; sleep 0.2' }`)}
  - id: gate
    type: approval
    approvers: { minimumCount: 1 }
${deployStage('sc-prb', 'two', `    steps:
      - { id: install, type: shell, script: 'echo two; exit 5' }
    rollbackSteps:
      - { id: undo, type: shell, script: 'echo "undo two to [$FERRY_ROLLBACK_ARTIFACT]"; sleep 0.2' }
    failureStrategies:
      - on: [StepFailed]
        action: { type: pipelineRollback }`, 'staging')}
`);
    const run = await c.run('sc-prb', { artifact: 'p1' });
    await c.atPair(run.id, 'gate', 'NotDeployed/Pending');
    await c.command(run.id, 'approve');
    const d = await c.ended(run.id, 'Failed');
    expectPairs(d, null, 'two', [QFA, PIP, IQFA, PIP, 'Failed/PhaseFailed']);
    expect(stage(d, 'two')).toMatchObject({ status: 'Failed', rolledBack: true, failure: expect.objectContaining({ action: 'pipelineRollback', kind: 'StepFailed' }) });
    // the earlier stage keeps its result (it succeeded) and says it was rolled back
    expect(stage(d, 'one')).toMatchObject({ status: 'Succeeded', rolledBack: true, rollbackArtifact: null });
    expectPairs(d, null, 'one', [QFA, PIP, OK]);
    expect(stage(d, 'gate').status).toBe('Succeeded');
    const [undoTwo] = steps(d, 'two').filter((s) => s.rollback);
    const [undoOne] = steps(d, 'one').filter((s) => s.rollback);
    expect(undoTwo).toMatchObject({ id: 'undo', status: 'Succeeded' });
    expect(undoOne).toMatchObject({ id: 'undo', status: 'Succeeded' });
    expect(Date.parse(undoOne!.startedAt!)).toBeGreaterThanOrEqual(Date.parse(undoTwo!.finishedAt!));
    expect(await c.log(run.id, 'one', 'undo')).toBe('undo one to []\n');
  });

  describe('manual intervention', () => {
    const pipeline = (name: string, timeout: string) => `pipeline: ${name}
stages:${deployStage(name, 'deploy', `    steps:
      - { id: migrate, type: shell, script: 'echo "try $FERRY_TRY"; [ "$FERRY_TRY" -ge 2 ]' }
      - { id: finish, type: shell, script: 'echo finished' }
    rollbackSteps:
      - { id: undo, type: shell, script: 'echo "undo to [$FERRY_ROLLBACK_ARTIFACT]"' }
    failureStrategies:
      - on: [AllErrors]
        action: { type: manualIntervention, timeout: ${timeout}, onTimeout: ignore }`)}
  - id: next
    type: custom
    steps: [ { id: done, type: shell, script: 'echo next ran' } ]
`;
    /** Runs until the intervention waits: the execution is Paused, the step Failed with its intervention. */
    async function untilIntervention(name: string, timeout = '1h'): Promise<{ id: string; obs: ReturnType<EngineClient['observe']> }> {
      await c.apply(pipeline(name, timeout));
      const run = await c.run(name, { artifact: 'v9' });
      const obs = c.observe(run.id);
      const d = await c.atPair(run.id, 'deploy', MIP);
      expect(d.status).toBe('Paused');
      expect(steps(d, 'deploy', 'migrate')[0]).toMatchObject({ status: 'Failed', exitCode: 1, intervention: expect.objectContaining({ onTimeout: 'ignore' }) });
      if (timeout === '1h') {
        const tree = await cli(['execution', run.id]);
        expect(tree.stdout).toMatch(/deploy\s+InProgress\s+.*<InProgress, ManualInterventionPending>/);
        expect(tree.stdout).toMatch(/migrate\s+Failed\s+.*waits for ferry intervene/);
      }
      return { id: run.id, obs };
    }
    const before = [QFA, PIP, MIP];

    it.each([
      ['retry', 'Succeeded', 'Succeeded', [IQFA, PIP, IQFA, PIP, OK]],
      ['ignore', 'PartiallySucceeded', 'PartiallySucceeded', [IQFA, PIP, 'PartiallySucceeded/PhasePartiallySucceeded']],
      ['abort', 'Aborted', 'Canceled', ['InProgress/Cancelling', 'Failed/Canceled']],
      ['rollback', 'Failed', 'Failed', [IQFA, PIP, 'Failed/PhaseFailed']],
    ] as const)('ferry intervene --action %s', async (action, execStatus, stageStatus, after) => {
      const { id, obs } = await untilIntervention(`sc-mi-${action}`);
      const r = await cli(['intervene', id, '--action', action]);
      expect(r.code, r.stderr).toBe(0);
      const d = await c.ended(id, execStatus);
      await obs.stop();
      expectPairs(d, obs, 'deploy', [...before, ...after]);
      expect(stage(d, 'deploy').status).toBe(stageStatus);
      const migrate = steps(d, 'deploy', 'migrate');
      expect(migrate[0]!.interventions).toEqual([expect.objectContaining({ by: 'admin', action })]);
      const undo = steps(d, 'deploy').filter((s) => s.rollback);
      if (action === 'retry') {
        expect(migrate.map((s) => [s.try, s.status])).toEqual([[1, 'Failed'], [2, 'Succeeded']]);
        expect(stage(d, 'next').status).toBe('Succeeded');
      } else if (action === 'ignore') {
        expect(migrate[0]!.status).toBe('Ignored');
        expect(steps(d, 'deploy', 'finish')[0]!.status).toBe('Succeeded');
        expect(stage(d, 'next').status).toBe('Succeeded');
      } else if (action === 'abort') {
        expect(undo).toEqual([]);
        expect(stage(d, 'deploy').rolledBack).toBe(false);
        expect(stage(d, 'next').status).toBe('NotStarted');
      } else {
        expect(undo.map((s) => [s.id, s.status])).toEqual([['undo', 'Succeeded']]);
        expect(stage(d, 'deploy')).toMatchObject({ rolledBack: true, rollbackArtifact: null });
        expect(await c.log(id, 'deploy', 'undo')).toBe('undo to []\n');
        expect(await c.allLogs(id)).toMatch(/\[deploy\/undo\] no earlier successful deployment of pipeline sc-mi-rollback on sc-mi-rollback\/dev\/local: FERRY_ROLLBACK_ARTIFACT is empty/);
        expect(stage(d, 'next').status).toBe('NotStarted');
      }
    });

    it('its timeout applies onTimeout (ignore) when nobody intervenes', async () => {
      const { id, obs } = await untilIntervention('sc-mi-timeout', '3s');
      const d = await c.ended(id, 'PartiallySucceeded');
      await obs.stop();
      expectPairs(d, obs, 'deploy', [...before, IQFA, PIP, 'PartiallySucceeded/PhasePartiallySucceeded']);
      const m = steps(d, 'deploy', 'migrate')[0]!;
      expect(m.status).toBe('Ignored');
      expect(Date.parse(steps(d, 'deploy', 'finish')[0]!.queuedAt!) - Date.parse(m.finishedAt!)).toBeGreaterThanOrEqual(2900);
      // nobody intervened: a late intervene is refused
      const late = await cli(['intervene', id, '--action', 'retry']);
      expect(late.code).toBe(1);
      expect(late.stderr).toMatch(/^error: WRONG_STATE: /m);
    });

    it('two interventions waiting at once: ferry intervene without --step refuses with the list; each is resolved on its own', async () => {
      await c.apply(`pipeline: sc-mi-two
stages:${deployStage('sc-mi-two', 'deploy', `    steps:
      - parallel:
          - { id: east, type: shell, script: 'sleep 0.3; echo "east try $FERRY_TRY"; exit 1' }
          - { id: west, type: shell, script: 'sleep 0.3; echo "west try $FERRY_TRY"; [ "$FERRY_TRY" -ge 2 ]' }
    failureStrategies:
      - on: [AllErrors]
        action: { type: manualIntervention }`)}
`);
      const run = await c.run('sc-mi-two', { artifact: 't1' });
      const obs = c.observe(run.id);
      await c.until(run.id, (d) => steps(d, 'deploy').filter((s) => s.intervention).length === 2, 'both interventions to wait');
      const both = await cli(['intervene', run.id, '--action', 'ignore']);
      expect(both.code).toBe(1);
      expect(both.stderr).toMatch(/^error: AMBIGUOUS: more than one waits for a manual intervention: deploy\/east, deploy\/west; name one with --stage and --step/m);
      expect((await cli(['intervene', run.id, '--action', 'ignore', '--step', 'east'])).code).toBe(0);
      const half = await c.get(run.id);
      expect(half.status).toBe('Paused');
      expect(stage(half, 'deploy').attempts[0]!.operationStatus).toBe('ManualInterventionPending');
      expect((await cli(['intervene', run.id, '--action', 'retry', '--stage', 'deploy', '--step', 'west'])).code).toBe(0);
      const d = await c.ended(run.id, 'PartiallySucceeded');
      await obs.stop();
      expectPairs(d, obs, 'deploy', [QFA, PIP, MIP, IQFA, PIP, 'PartiallySucceeded/PhasePartiallySucceeded']);
      expect(steps(d, 'deploy').map((s) => [s.id, s.try, s.status])).toEqual([['east', 1, 'Ignored'], ['west', 1, 'Failed'], ['west', 2, 'Succeeded']]);
    });
  });

  it('a first step that never gets a delegate (NoEligibleDelegate after its queueTimeout) waits for an intervention too', async () => {
    await c.apply(`pipeline: sc-nodelegate
stages:${deployStage('sc-nodelegate', 'deploy', `    steps:
      - { id: gpu, type: shell, script: 'echo never', delegateSelectors: [gpu], queueTimeout: 1s }
    failureStrategies:
      - on: [NoEligibleDelegate]
        action: { type: manualIntervention }`)}
`);
    const run = await c.run('sc-nodelegate', { artifact: 'n1' });
    const obs = c.observe(run.id);
    const waiting = await c.until(run.id, (d) => steps(d, 'deploy', 'gpu')[0]?.status === 'QueuedForAgent' && steps(d, 'deploy', 'gpu')[0]?.queue !== null, 'the step to wait for a delegate');
    expect(steps(waiting, 'deploy', 'gpu')[0]!.queue!.reason).toMatch(/gpu/);
    const d1 = await c.atPair(run.id, 'deploy', MIP);
    expect(d1.status).toBe('Paused');
    expect(steps(d1, 'deploy', 'gpu')[0]).toMatchObject({ status: 'Failed', startedAt: null, error: { kind: 'NoEligibleDelegate' } });
    expect((await cli(['intervene', run.id, '--action', 'ignore'])).code).toBe(0);
    const d = await c.ended(run.id, 'PartiallySucceeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', [QFA, MIP, 'PartiallySucceeded/PhasePartiallySucceeded']);
  });

  describe('approvals', () => {
    const pipeline = (name: string, timeout: string) => `pipeline: ${name}
stages:
  - id: gate
    type: approval
    approvers: { minimumCount: 1, disallowExecutor: true }
    timeout: ${timeout}
${deployStage(name, 'deploy', `    steps:
      - { id: work, type: shell, script: 'echo deployed' }`)}
`;
    async function untilPending(name: string, timeout = '1h') {
      await c.apply(pipeline(name, timeout));
      const run = await c.run(name, { artifact: 'a1' });
      const obs = c.observe(run.id);
      const d = await c.atPair(run.id, 'gate', 'NotDeployed/Pending');
      expect(d.status).toBe('Running');
      expect(stage(d, 'gate').status).toBe('InProgress');
      expect(steps(d, 'gate')[0]!.status).toBe('Running');
      return { id: run.id, obs };
    }

    it('approved (not by the executor: disallowExecutor); who and when is kept', async () => {
      const alice = await userToken(server, 'alice', 'deployer');
      const { id, obs } = await untilPending('sc-appr-ok');
      const self = await cli(['approve', id], server.adminToken);
      expect(self.code).toBe(1);
      expect(self.stderr).toMatch(/^error: FORBIDDEN: "admin" ran this execution and may not approve it \(disallowExecutor\)/m);
      const ok = await cli(['approve', id, '--comment', 'ship it'], alice);
      expect(ok.code, ok.stderr).toBe(0);
      const d = await c.ended(id, 'Succeeded');
      await obs.stop();
      expectPairs(d, obs, 'gate', ['NotDeployed/Pending', OK]);
      expectPairs(d, obs, 'deploy', [QFA, PIP, OK]);
      expect(steps(d, 'gate')[0]!.approvals).toEqual([expect.objectContaining({ by: 'alice', decision: 'approved', comment: 'ship it' })]);
      expect(Date.parse(steps(d, 'gate')[0]!.approvals![0]!.at!)).toBeGreaterThan(Date.parse(d.createdAt));
      const tree = await cli(['execution', id]);
      expect(tree.stdout).toMatch(/approval\s+Succeeded\s+approved by alice \("ship it"\)/);
    });

    it('rejected: <NotDeployed, Rejected>, the execution Rejected, later stages not started', async () => {
      const { id, obs } = await untilPending('sc-appr-reject');
      const r = await cli(['reject', id, '--comment', 'not today']);
      expect(r.code, r.stderr).toBe(0);
      const d = await c.ended(id, 'Rejected');
      await obs.stop();
      expectPairs(d, obs, 'gate', ['NotDeployed/Pending', 'NotDeployed/Rejected']);
      expect(stage(d, 'gate').status).toBe('Rejected');
      expect(steps(d, 'gate')[0]).toMatchObject({ status: 'Failed', approvals: [expect.objectContaining({ by: 'admin', decision: 'rejected', comment: 'not today' })] });
      expect(stage(d, 'deploy')).toMatchObject({ status: 'NotStarted', attempts: [] });
      // a Rejected execution can be resumed: the approval is asked again, as attempt 2
      await c.command(id, 'resume', { fromStage: 'gate' });
      const again = await c.atPair(id, 'gate', 'NotDeployed/Pending');
      expect(stage(again, 'gate').attempts.map((a) => a.attempt)).toEqual([1, 2]);
      expect(steps(again, 'gate')[0]).toMatchObject({ status: 'Running', attempt: 2, approvals: [] });
      await c.command(id, 'approve', {}, 200, await userToken(server, 'bob', 'deployer'));
      const end = await c.ended(id, 'Succeeded');
      expectPairs(end, null, 'gate', ['NotDeployed/Pending', OK], 2);
    });

    it('expired: its timeout passes, <NotDeployed, Rejected>, the stage and the execution Expired', async () => {
      const { id, obs } = await untilPending('sc-appr-expire', '3s');
      const d = await c.ended(id, 'Expired');
      await obs.stop();
      expectPairs(d, obs, 'gate', ['NotDeployed/Pending', 'NotDeployed/Rejected']);
      expect(stage(d, 'gate').status).toBe('Expired');
      expect(steps(d, 'gate')[0]!.status).toBe('Expired');
      expect(Date.parse(d.finishedAt!) - Date.parse(d.createdAt)).toBeGreaterThanOrEqual(2900);
      expect(stage(d, 'deploy').status).toBe('NotStarted');
      // an Expired execution can be resumed too: a new attempt, with its own timeout
      await c.command(id, 'resume', { fromStage: 'gate' });
      expect((await c.get(id)).status).toBe('Running');
      const again = await c.ended(id, 'Expired');
      expect(stage(again, 'gate').attempts.map((a) => [a.attempt, a.status, a.operationStatus])).toEqual([[1, 'NotDeployed', 'Rejected'], [2, 'NotDeployed', 'Rejected']]);
      expectPairs(again, null, 'gate', ['NotDeployed/Pending', 'NotDeployed/Rejected'], 2);
    });

    it('deferred: an approval step approved with --defer-until waits <NotDeployed, Deferred>, then the stage goes on', async () => {
      await c.apply(`pipeline: sc-appr-defer
stages:${deployStage('sc-appr-defer', 'deploy', `    steps:
      - { id: ok, type: approval, approvers: { minimumCount: 1 }, timeout: 1h }
      - { id: work, type: shell, script: 'echo deployed' }`)}
`);
      const run = await c.run('sc-appr-defer', { artifact: 'd1' });
      const obs = c.observe(run.id);
      await c.atPair(run.id, 'deploy', 'NotDeployed/Pending');
      const until = new Date(Date.now() + 5000).toISOString();
      const r = await cli(['approve', run.id, '--defer-until', until, '--comment', 'after the window opens']);
      expect(r.code, r.stderr).toBe(0);
      const deferred = await c.get(run.id);
      expect(stage(deferred, 'deploy').attempts[0]).toMatchObject({ status: 'NotDeployed', operationStatus: 'Deferred' });
      expect(deferred.status).toBe('Running');
      expect(steps(deferred, 'deploy', 'ok')[0]).toMatchObject({ status: 'Succeeded', approvals: [expect.objectContaining({ decision: 'approved', deferUntil: until })] });
      expect(steps(deferred, 'deploy', 'work')[0]!.status).toBe('Waiting');
      const d = await c.ended(run.id, 'Succeeded');
      await obs.stop();
      expectPairs(d, obs, 'deploy', ['NotDeployed/Pending', 'NotDeployed/Deferred', QFA, PIP, OK]);
      expect(Date.parse(steps(d, 'deploy', 'work')[0]!.queuedAt!)).toBeGreaterThanOrEqual(Date.parse(until));
    });
  });

  describe('approval steps', () => {
    it('the last step, after a delegate step ran, approved: <InProgress, Pending> → <Succeeded, Approved>', async () => {
      await c.apply(`pipeline: sc-appr-last
stages:${deployStage('sc-appr-last', 'deploy', `    steps:
      - { id: install, type: shell, script: 'echo installed' }
      - { id: sign-off, type: approval }`)}
`);
      const run = await c.run('sc-appr-last', { artifact: 't0' });
      const obs = c.observe(run.id);
      const w = await c.atPair(run.id, 'deploy', 'InProgress/Pending');
      expect(w.status).toBe('Running');
      expect((await cli(['approve', run.id, '--comment', 'looks right'])).code).toBe(0);
      const d = await c.ended(run.id, 'Succeeded');
      await obs.stop();
      expectPairs(d, obs, 'deploy', [QFA, PIP, 'InProgress/Pending', OK]);
    });

    it('rejected after a delegate step ran: <InProgress, Pending> → <Failed, Rejected>', async () => {
      await c.apply(`pipeline: sc-appr-late
stages:${deployStage('sc-appr-late', 'deploy', `    steps:
      - { id: canary, type: shell, script: 'echo canary deployed' }
      - { id: ok, type: approval }
      - { id: rest, type: shell, script: 'echo rest' }`)}
`);
      const run = await c.run('sc-appr-late', { artifact: 't2' });
      const obs = c.observe(run.id);
      await c.atPair(run.id, 'deploy', 'InProgress/Pending');
      expect((await cli(['reject', run.id, '--comment', 'canary looks wrong'])).code).toBe(0);
      const d = await c.ended(run.id, 'Rejected');
      await obs.stop();
      expectPairs(d, obs, 'deploy', [QFA, PIP, 'InProgress/Pending', 'Failed/Rejected']);
      expect(stage(d, 'deploy').status).toBe('Rejected');
      expect(steps(d, 'deploy').map((s) => [s.id, s.status])).toEqual([['canary', 'Succeeded'], ['ok', 'Failed'], ['rest', 'Skipped']]);
    });

    it('aborted while it waits, before any step ran: <NotDeployed, Pending> → <NotDeployed, Canceled>', async () => {
      await c.apply(`pipeline: sc-appr-abort
stages:${deployStage('sc-appr-abort', 'deploy', `    steps:
      - { id: ok, type: approval }
      - { id: work, type: shell, script: 'echo deployed' }`)}
`);
      const run = await c.run('sc-appr-abort', { artifact: 't3' });
      const obs = c.observe(run.id);
      await c.atPair(run.id, 'deploy', 'NotDeployed/Pending');
      expect((await cli(['abort', run.id])).code).toBe(0);
      const d = await c.ended(run.id, 'Aborted');
      await obs.stop();
      expectPairs(d, obs, 'deploy', ['NotDeployed/Pending', 'NotDeployed/Canceled']);
      expect(stage(d, 'deploy').status).toBe('Canceled');
      expect(steps(d, 'deploy').map((s) => [s.id, s.status])).toEqual([['ok', 'Canceled'], ['work', 'Canceled']]);
    });
  });

  it('abort during a running step: <InProgress, Cancelling>, alwaysRun steps run, no rollback, <Failed, Canceled>', async () => {
    await c.apply(`pipeline: sc-abort
stages:${deployStage('sc-abort', 'deploy', `    steps:
      - { id: work, type: shell, script: 'echo started; sleep 60; echo never' }
      - { id: cleanup, type: shell, alwaysRun: true, script: 'echo "cleanup ran"' }
      - { id: later, type: shell, script: 'echo later' }
    rollbackSteps:
      - { id: undo, type: shell, script: 'echo undo' }
    failureStrategies:
      - on: [AllErrors]
        action: { type: stageRollback }`)}
  - id: next
    type: custom
    steps: [ { id: done, type: shell, script: 'echo next' } ]
`);
    const run = await c.run('sc-abort', { artifact: 'x1' });
    const obs = c.observe(run.id);
    await c.until(run.id, (d) => steps(d, 'deploy', 'work')[0]?.status === 'Running', 'the step to run');
    await waitFor(async () => (await c.log(run.id, 'deploy', 'work')).includes('started'), { message: 'the step to print "started"' });
    const r = await cli(['abort', run.id]);
    expect(r.code, r.stderr).toBe(0);
    const d = await c.ended(run.id, 'Aborted');
    await obs.stop();
    expectPairs(d, obs, 'deploy', [QFA, PIP, 'InProgress/Cancelling', 'Failed/Canceled']);
    expect(stage(d, 'deploy')).toMatchObject({ status: 'Canceled', rolledBack: false, rollingBack: false });
    expect(steps(d, 'deploy').map((s) => [s.id, s.status, Boolean(s.rollback)])).toEqual([
      ['work', 'Canceled', false], ['cleanup', 'Succeeded', false], ['later', 'Canceled', false],
    ]);
    expect(await c.log(run.id, 'deploy', 'cleanup')).toBe('cleanup ran\n');
    expect(await c.log(run.id, 'deploy', 'work')).not.toContain('never');
    expect(d.abortedBy).toBe('admin');
    expect(stage(d, 'next')).toMatchObject({ status: 'NotStarted', attempts: [] });
  });

  it('a run queued behind a running one (environment concurrency 1): <NotDeployed, Queued> until the first ends', async () => {
    const gate = new Gate('queue');
    await c.apply(`pipeline: sc-queue
variables:
  gate: { type: string, required: true }
environments:
  prod: { type: production, concurrency: 1 }
stages:${deployStage('sc-queue', 'deploy', `    steps:
      - { id: work, type: shell, script: 'echo "deploying $FERRY_ARTIFACT"; ${gate.wait.replaceAll("'", "''")}' }`, 'prod')}
`);
    const first = await c.run('sc-queue', { artifact: 'q1', inputs: { gate: gate.path } });
    await c.atPair(first.id, 'deploy', PIP);
    const second = await c.run('sc-queue', { artifact: 'q2', inputs: { gate: gate.path } });
    const obs = c.observe(second.id);
    const queued = await c.atPair(second.id, 'deploy', 'NotDeployed/Queued');
    expect(queued.status).toBe('Running');
    expect(stage(queued, 'deploy').status).toBe('Queued');
    expect(steps(queued, 'deploy', 'work')[0]!.status).toBe('Waiting');
    const tree = await cli(['execution', second.id]);
    expect(tree.stdout).toContain('<NotDeployed, Queued> (waiting behind another deployment to sc-queue/prod/local)');
    // a third waits behind both, and is aborted while it waits: it gives its place up
    const third = await c.run('sc-queue', { artifact: 'q3', inputs: { gate: gate.path } });
    await c.atPair(third.id, 'deploy', 'NotDeployed/Queued');
    await c.command(third.id, 'abort');
    const t = await c.ended(third.id, 'Aborted');
    expectPairs(t, null, 'deploy', ['NotDeployed/Queued', 'NotDeployed/Canceled']);
    expect(steps(t, 'deploy', 'work')[0]).toMatchObject({ status: 'Canceled', startedAt: null });
    // it stays queued while the first runs
    await new Promise((r) => setTimeout(r, 700));
    expect(stage(await c.get(second.id), 'deploy').attempts[0]!.operationStatus).toBe('Queued');
    gate.open();
    const a = await c.ended(first.id, 'Succeeded');
    const b = await c.ended(second.id, 'Succeeded');
    await obs.stop();
    expectPairs(b, obs, 'deploy', ['NotDeployed/Queued', QFA, PIP, OK]);
    expect(Date.parse(steps(b, 'deploy', 'work')[0]!.queuedAt!)).toBeGreaterThanOrEqual(Date.parse(stage(a, 'deploy').attempts[0]!.finishedAt!));
  });

  it('deployLatestOnly: a waiting run is Superseded by a newer one (supersededBy), the newest deploys', async () => {
    const gate = new Gate('latest');
    await c.apply(`pipeline: sc-latest
variables:
  gate: { type: string, required: true }
environments:
  prod: { type: production, concurrency: 1, deployLatestOnly: true }
stages:${deployStage('sc-latest', 'deploy', `    steps:
      - { id: work, type: shell, script: 'echo "deploying $FERRY_ARTIFACT"; ${gate.wait.replaceAll("'", "''")}' }`, 'prod')}
`);
    const first = await c.run('sc-latest', { artifact: 'l1', inputs: { gate: gate.path } });
    await c.atPair(first.id, 'deploy', PIP);
    const middle = await c.run('sc-latest', { artifact: 'l2', inputs: { gate: gate.path } });
    const obsMiddle = c.observe(middle.id);
    await c.atPair(middle.id, 'deploy', 'NotDeployed/Queued');
    const last = await c.run('sc-latest', { artifact: 'l3', inputs: { gate: gate.path } });
    const obsLast = c.observe(last.id);
    const m = await c.ended(middle.id, 'Superseded');
    await obsMiddle.stop();
    expect(m.supersededBy).toBe(last.id);
    expectPairs(m, obsMiddle, 'deploy', ['NotDeployed/Queued', 'NotDeployed/Canceled']);
    expect(stage(m, 'deploy').status).toBe('Canceled');
    expect(steps(m, 'deploy', 'work')[0]).toMatchObject({ status: 'Canceled', startedAt: null });
    expect((await c.get(last.id)).status).toBe('Running');
    gate.open();
    await c.ended(first.id, 'Succeeded');
    const l = await c.ended(last.id, 'Succeeded');
    await obsLast.stop();
    expectPairs(l, obsLast, 'deploy', ['NotDeployed/Queued', QFA, PIP, OK]);
    const list = (await c.api<Array<{ id: string; status: string }>>('GET', 'executions?pipeline=sc-latest')).body;
    expect(list.map((e) => [e.id, e.status])).toEqual([[last.id, 'Succeeded'], [middle.id, 'Superseded'], [first.id, 'Succeeded']]);
  });

  describe('resume', () => {
    // one pipeline (so one set of mappings) per test: the two run at once
    const yaml = (name: string) => `pipeline: ${name}
variables:
  fail-at: { type: string, default: none }
stages:
  - id: build
    type: custom
    steps: [ { id: compile, type: shell, script: 'echo "build attempt $FERRY_ATTEMPT"' } ]
${deployStage(name, 'dev', `    steps:
      - id: mark
        type: shell
        script: |
          echo "dev attempt $FERRY_ATTEMPT"
          if [ "$FERRY_ATTEMPT" = 1 ]; then echo "STAMP=from-attempt-1" >> "$FERRY_OUTPUT"; fi
      - id: migrate
        type: shell
        script: |
          if [ "$FERRY_VAR_FAIL_AT" = dev ] && [ "$FERRY_ATTEMPT" = 1 ]; then echo "migration failed"; exit 2; fi
          echo migrated`)}
${deployStage(name, 'prod', `    steps:
      - id: show
        type: shell
        script: |
          echo "stamp=\${FERRY_OUT_MARK_STAMP:-none} attempt=$FERRY_ATTEMPT"
          if [ "$FERRY_VAR_FAIL_AT" = prod ] && [ "$FERRY_ATTEMPT" = 1 ]; then exit 3; fi`, 'prod')}
`;

    it('from the failed stage: earlier stages are not run again, a new attempt, no stale outputs, history keeps every attempt', async () => {
      await c.apply(yaml('sc-resume-a'));
      const run = await c.run('sc-resume-a', { artifact: 'r1', inputs: { 'fail-at': 'dev' } });
      const failed = await c.ended(run.id, 'Failed');
      expectPairs(failed, null, 'dev', [QFA, PIP, IQFA, PIP, 'Failed/PhaseFailed']);
      expect(stage(failed, 'prod')).toMatchObject({ status: 'NotStarted', attempts: [] });
      // prod never ran: no resume from there
      const never = await c.command(run.id, 'resume', { fromStage: 'prod' }, 409);
      expect(never.text).toMatch(/never ran/);

      const obs = c.observe(run.id);
      const r = await cli(['resume', run.id, '--from-stage', 'dev', '--follow']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).not.toContain('build attempt');
      const d = await c.ended(run.id, 'Succeeded');
      await obs.stop();
      expect(d.resumedFrom).toMatchObject({ stage: 'dev', by: 'admin' });
      expect(stage(d, 'build').attempts.map((a) => a.attempt)).toEqual([1]);
      expect(stage(d, 'dev').attempts.map((a) => [a.attempt, a.status, a.operationStatus])).toEqual([[1, 'Failed', 'PhaseFailed'], [2, 'Succeeded', 'Approved']]);
      expectPairs(d, obs, 'dev', [QFA, PIP, IQFA, PIP, OK], 2);
      expectPairs(d, obs, 'prod', [QFA, PIP, OK], 1);
      expect(await c.log(run.id, 'dev', 'mark')).toBe('dev attempt 2\n');
      expect(await c.log(run.id, 'dev', 'mark', 1)).toBe('dev attempt 1\n');
      // the failed attempt's output (STAMP) does not reach the new run
      expect(await c.log(run.id, 'prod', 'show')).toBe('stamp=none attempt=1\n');
      // steps: the latest attempt; ?history=true: every attempt
      expect(steps(d, 'dev').map((s) => [s.id, s.attempt, s.status])).toEqual([['mark', 2, 'Succeeded'], ['migrate', 2, 'Succeeded']]);
      const h = await c.get(run.id, true);
      expect(steps(h, 'dev').map((s) => [s.id, s.attempt, s.status])).toEqual([
        ['mark', 1, 'Succeeded'], ['migrate', 1, 'Failed'], ['mark', 2, 'Succeeded'], ['migrate', 2, 'Succeeded'],
      ]);
      // a Succeeded execution cannot be resumed
      const again = await cli(['resume', run.id, '--from-stage', 'dev']);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/^error: WRONG_STATE: only Failed, Aborted, Expired and Rejected executions can be resumed/m);
    });

    it('from an earlier stage than the failed one: that stage and every later one get a new attempt', async () => {
      await c.apply(yaml('sc-resume-b'));
      const run = await c.run('sc-resume-b', { artifact: 'r2', inputs: { 'fail-at': 'prod' } });
      const failed = await c.ended(run.id, 'Failed');
      expect(await c.log(run.id, 'prod', 'show')).toBe('stamp=from-attempt-1 attempt=1\n');
      expectPairs(failed, null, 'prod', [QFA, PIP, 'Failed/PhaseFailed']);
      await c.command(run.id, 'resume', { fromStage: 'dev' });
      const d = await c.ended(run.id, 'Succeeded');
      expect(stage(d, 'build').attempts).toHaveLength(1);
      expect(stage(d, 'dev').attempts.map((a) => `${a.attempt}:${a.status}`)).toEqual(['1:Succeeded', '2:Succeeded']);
      expect(stage(d, 'prod').attempts.map((a) => `${a.attempt}:${a.status}`)).toEqual(['1:Failed', '2:Succeeded']);
      expectPairs(d, null, 'prod', [QFA, PIP, OK], 2);
      expect(await c.log(run.id, 'prod', 'show')).toBe('stamp=none attempt=2\n');
      expect(await c.log(run.id, 'prod', 'show', 1)).toBe('stamp=from-attempt-1 attempt=1\n');
      // inputs, artifact and pipeline version are the execution's own
      expect(d).toMatchObject({ artifact: 'r2', inputs: { 'fail-at': 'prod' }, pipelineVersion: run.pipelineVersion });
      // listings show each execution once, with its latest state
      const list = (await c.api<Array<{ id: string; status: string }>>('GET', 'executions?pipeline=sc-resume-b')).body;
      expect(list).toEqual([expect.objectContaining({ id: run.id, status: 'Succeeded' })]);
    });
  });

  it('rollback picks the last good artifact: same pipeline, or any pipeline with rollbackScope infrastructure, never a bad one', async () => {
    const file = (name: string, scope: string) => `pipeline: ${name}
variables:
  fail: { type: boolean, default: false }
stages:
  - id: deploy
    type: deploy
    service: sc-rb
    environment: prod
    infrastructure: local
    rollbackScope: ${scope}
    steps:
      - { id: install, type: shell, script: 'echo "install $FERRY_ARTIFACT"; [ "$FERRY_VAR_FAIL" != true ]' }
    rollbackSteps:
      - { id: restore, type: shell, script: 'echo "restore to [$FERRY_ROLLBACK_ARTIFACT]"' }
    failureStrategies:
      - on: [AllErrors]
        action: { type: stageRollback }
`;
    await c.apply(file('sc-rb-own', 'pipeline'));
    await c.apply(file('sc-rb-any', 'infrastructure'));
    const deploy = async (pipeline: string, artifact: string, fail: boolean): Promise<ExecDoc> => {
      const run = await c.run(pipeline, { artifact, inputs: { fail } });
      return c.ended(run.id, fail ? 'Failed' : 'Succeeded');
    };
    const rolledBackTo = async (d: ExecDoc): Promise<string | null> => {
      expect(stage(d, 'deploy').rolledBack).toBe(true);
      expectPairs(d, null, 'deploy', [QFA, PIP, IQFA, PIP, 'Failed/PhaseFailed']);
      const seen = /^restore to \[(.*)\]$/.exec((await c.log(d.id, 'deploy', 'restore')).trim())?.[1];
      expect(stage(d, 'deploy').rollbackArtifact).toBe(seen === '' ? null : seen);
      return stage(d, 'deploy').rollbackArtifact;
    };

    // nothing succeeded yet: empty, and the log says so
    const first = await deploy('sc-rb-own', 'a0', true);
    expect(await rolledBackTo(first)).toBeNull();
    expect(await c.allLogs(first.id)).toContain('no earlier successful deployment of pipeline sc-rb-own on sc-rb/prod/local: FERRY_ROLLBACK_ARTIFACT is empty');

    await deploy('sc-rb-own', 'a1', false);
    await deploy('sc-rb-any', 'b1', false);
    await deploy('sc-rb-own', 'a2', false);
    // pipeline scope: not the artifact being rolled back (a2), not another pipeline's (b1)
    expect(await rolledBackTo(await deploy('sc-rb-own', 'a2', true))).toBe('a1');
    // a2's latest deployment was rolled back: a2 is bad, although it once succeeded
    expect(await rolledBackTo(await deploy('sc-rb-own', 'a3', true))).toBe('a1');
    await deploy('sc-rb-own', 'a4', false);
    // infrastructure scope: the newest good one of any pipeline on the mapping (a4, not its own b1)
    const any = await deploy('sc-rb-any', 'b2', true);
    expect(await rolledBackTo(any)).toBe('a4');
    expect(await c.allLogs(any.id)).toContain('rolling back to a4, the last successful deployment of any pipeline on sc-rb/prod/local');
  });
});
