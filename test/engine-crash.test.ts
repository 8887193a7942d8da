/**
 * The engine's crash safety and the things that need a server of their own: kill -9 of
 * the control plane mid-run at several points (a step running, an approval waiting, a
 * retry waiting out its interval, a run waiting for the account's limit, repeatedly
 * during a run), each followed by a restart on the same data dir and port — the
 * delegate reconnects by itself and the execution finishes correctly, with the exact
 * attempt pairs and no step run twice. Also permission refusals (403 with the reason) and
 * the account's limit of running executions (FERRY_ACCOUNT_RUNNING_LIMIT →
 * <NotDeployed, QueuedForPipeline>).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createDelegateToken, ferryCli, sleep, startDelegate, startServer, useProcessGuard, waitFor, waitForDelegates,
  type FerryDelegate, type FerryServer,
} from './support/processes.js';
import { EngineClient, expectPairs, FAST_DELEGATE, Gate, stage, steps, TERMINAL, userToken } from './engine-helpers.js';

useProcessGuard();

let server: FerryServer;
let delegate: FerryDelegate;
let c: EngineClient;

beforeAll(async () => {
  server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '1s' } });
  delegate = startDelegate({ url: server.url, token: await createDelegateToken(server), name: 'crash-runner', capacity: 8, env: FAST_DELEGATE });
  await waitForDelegates(server, { names: ['crash-runner'] });
  c = new EngineClient(server);
});

afterAll(async () => {
  await delegate?.stop();
  await server?.stop();
});

const cli = (args: string[], token?: string) => ferryCli(args, { url: server.url, token: token ?? server.adminToken });

const QFA = 'NotDeployed/QueuedForAgent';
const IQFA = 'InProgress/QueuedForAgent';
const PIP = 'InProgress/PhaseInProgress';
const OK = 'Succeeded/Approved';

/** kill -9 (the whole process group), then start again on the same data dir and port. */
async function crashAndRestart(downMs = 0, env?: Record<string, string>): Promise<void> {
  await server.kill('SIGKILL');
  if (downMs) await sleep(downMs);
  await server.restart(env ? { env } : {});
  await waitFor(async () => {
    const r = await c.api<Array<{ name: string; connected: boolean }>>('GET', 'delegates');
    return r.status === 200 && r.body.some((d) => d.name === 'crash-runner' && d.connected);
  }, { timeout: 30_000, interval: 100, message: 'the delegate to reconnect' });
}

describe('permissions', () => {
  it('a deployer scoped to preproduction cannot run, approve, abort or resume a production stage; a viewer cannot run (403 with the reason)', async () => {
    const pre = await userToken(server, 'pre-deployer', 'deployer', { environmentType: 'preproduction' });
    const viewer = await userToken(server, 'watcher', 'viewer');
    const stages = (name: string) => `
  - id: dev
    type: deploy
    service: ${name}
    environment: dev
    infrastructure: local
    steps: [ { id: work, type: shell, script: 'echo dev' } ]`;
    await c.apply(`pipeline: perm-dev
stages:${stages('perm-dev')}
`);
    await c.apply(`pipeline: perm
variables:
  fail: { type: boolean, default: false }
environments:
  prod: { type: production }
stages:${stages('perm')}
  - id: approve-prod
    type: approval
  - id: prod
    type: deploy
    service: perm
    environment: prod
    infrastructure: local
    steps: [ { id: work, type: shell, script: 'echo prod; [ "$FERRY_VAR_FAIL" != true ]' } ]
`);
    const refusal = /^error: FORBIDDEN: cannot run stage prod: the token is scoped to preproduction environments, and this is a production environment$/m;
    const run = await cli(['run', 'perm'], pre);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(refusal);
    const api = await c.api<{ error: { code: string; message: string; details: { reason: string } } }>('POST', 'pipelines/perm/executions', {}, pre);
    expect(api.status).toBe(403);
    expect(api.body.error).toMatchObject({ code: 'FORBIDDEN', details: { reason: 'the token is scoped to preproduction environments, and this is a production environment' } });
    // within its scope it may
    const ok = await cli(['run', 'perm-dev', '--json'], pre);
    expect(ok.code, ok.stderr).toBe(0);
    const devRun = ok.json<{ id: string; createdBy: string }>();
    expect(devRun.createdBy).toBe('pre-deployer');
    await c.ended(devRun.id, 'Succeeded');

    // the approval before prod is judged by prod
    const gated = await c.run('perm', { artifact: 'p1' });
    await c.atPair(gated.id, 'approve-prod', 'NotDeployed/Pending');
    for (const [verb, args] of [['approve', []], ['reject', []], ['abort', []]] as const) {
      const r = await cli([verb, gated.id, ...args], pre);
      expect(r.code, `${verb}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^error: FORBIDDEN: cannot ${verb} stage approve-prod \\(it leads to prod\\): the token is scoped to preproduction environments`, 'm'));
    }
    // a viewer reads, and may do nothing else
    expect((await c.api('GET', `executions/${gated.id}`, undefined, viewer)).status).toBe(200);
    const vr = await cli(['run', 'perm-dev'], viewer);
    expect(vr.code).toBe(1);
    expect(vr.stderr).toMatch(/^error: FORBIDDEN: /m);
    expect((await c.api('POST', `executions/${gated.id}/approve`, {}, viewer)).status).toBe(403);
    const still = await c.get(gated.id);
    expect(stage(still, 'approve-prod').attempts[0]).toMatchObject({ status: 'NotDeployed', operationStatus: 'Pending' });
    expect(steps(still, 'approve-prod')[0]!.approvals).toEqual([]);
    await c.command(gated.id, 'approve', { comment: 'admin approves' });
    await c.ended(gated.id, 'Succeeded');

    // resume: from prod, or from dev (it would reach prod)
    const failing = await c.run('perm', { artifact: 'p2', inputs: { fail: true } });
    await c.atPair(failing.id, 'approve-prod', 'NotDeployed/Pending');
    await c.command(failing.id, 'approve');
    await c.ended(failing.id, 'Failed');
    for (const from of ['prod', 'dev']) {
      const r = await c.command(failing.id, 'resume', { fromStage: from }, 403, pre);
      expect(r.text).toContain('the token is scoped to preproduction environments, and this is a production environment');
    }
    expect((await c.get(failing.id)).status).toBe('Failed');
  });
});

describe('kill -9 of the server mid-run', () => {
  it('while a step runs: the delegate reconnects, its result and every log line arrive once, the run goes on', async () => {
    const gate = new Gate('step');
    await c.apply(`pipeline: crash-step
stages:
  - id: deploy
    type: deploy
    service: crash-step
    environment: dev
    infrastructure: local
    steps:
      - { id: work, type: shell, script: 'echo start; ${gate.wait.replaceAll("'", "''")}; echo done' }
  - id: after
    type: custom
    steps: [ { id: check, type: shell, script: 'echo after' } ]
`);
    const run = await c.run('crash-step', { artifact: 'c1' });
    const obs = c.observe(run.id);
    await waitFor(async () => (await c.log(run.id, 'deploy', 'work')) === 'start\n', { message: 'the step to start' });
    // a user follows the run across the crash: the CLI reconnects, prints each line once
    const follow = cli(['logs', run.id, '--follow']);
    await sleep(1000);
    await server.kill('SIGKILL');
    gate.open(); // the step ends while the control plane is down
    await sleep(500);
    await server.restart();
    const d = await c.ended(run.id, 'Succeeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', [QFA, PIP, OK]);
    expectPairs(d, obs, 'after', [QFA, PIP, OK]);
    expect(steps(d, 'deploy', 'work').map((s) => [s.try, s.status, s.exitCode])).toEqual([[1, 'Succeeded', 0]]);
    expect(await c.log(run.id, 'deploy', 'work')).toBe('start\ndone\n');
    const followed = await follow;
    expect(followed.code, followed.stderr).toBe(0);
    expect(followed.stdout).toBe('[deploy/work] start\n[deploy/work] done\n[after/check] after\n');
    await waitForDelegates(server, { names: ['crash-runner'] });
  });

  it('while an approval waits: approved after the restart', async () => {
    await c.apply(`pipeline: crash-approval
stages:
  - id: gate
    type: approval
    timeout: 1h
  - id: deploy
    type: deploy
    service: crash-approval
    environment: dev
    infrastructure: local
    steps: [ { id: work, type: shell, script: 'echo deployed' } ]
`);
    const run = await c.run('crash-approval', { artifact: 'c2' });
    const obs = c.observe(run.id);
    await c.atPair(run.id, 'gate', 'NotDeployed/Pending');
    await crashAndRestart();
    const waiting = await c.get(run.id);
    expect(stage(waiting, 'gate').attempts[0]).toMatchObject({ status: 'NotDeployed', operationStatus: 'Pending' });
    const r = await cli(['approve', run.id, '--comment', 'after the crash']);
    expect(r.code, r.stderr).toBe(0);
    const d = await c.ended(run.id, 'Succeeded');
    await obs.stop();
    expectPairs(d, obs, 'gate', ['NotDeployed/Pending', OK]);
    expectPairs(d, obs, 'deploy', [QFA, PIP, OK]);
  });

  it('while a retry waits out its interval: the retry runs once after the restart (also when its time passed while down)', async () => {
    await c.apply(`pipeline: crash-retry
stages:
  - id: deploy
    type: deploy
    service: crash-retry
    environment: dev
    infrastructure: local
    steps:
      - id: flaky
        type: shell
        script: 'echo "try $FERRY_TRY"; [ "$FERRY_TRY" -ge 2 ]'
        failureStrategies:
          - on: [StepFailed]
            action: { type: retry, count: 3, interval: 2s }
`);
    const run = await c.run('crash-retry', { artifact: 'c3' });
    const obs = c.observe(run.id);
    const w = await c.until(run.id, (d) => steps(d, 'deploy', 'flaky').some((s) => s.try === 2 && s.status === 'Waiting'), 'try 2 to wait');
    const retryAt = Date.parse(steps(w, 'deploy', 'flaky')[1]!.retryAt!);
    await crashAndRestart(2500); // the retry's time passes while the server is down
    const d = await c.ended(run.id, 'Succeeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', [QFA, PIP, IQFA, PIP, OK]);
    const tries = steps(d, 'deploy', 'flaky');
    expect(tries.map((s) => [s.try, s.status])).toEqual([[1, 'Failed'], [2, 'Succeeded']]);
    expect(Date.parse(tries[1]!.queuedAt!)).toBeGreaterThanOrEqual(retryAt);
  });

  it('again and again during a run: every stage ends with its exact pairs, no step runs twice', async () => {
    await c.apply(`pipeline: crash-many
stages:
${['one', 'two', 'three', 'four'].map((s) => `  - id: ${s}
    type: deploy
    service: crash-many-${s}
    environment: dev
    infrastructure: local
    steps:
      - { id: a, type: shell, script: 'echo "${s} a"; sleep 1' }
      - { id: b, type: shell, script: 'echo "${s} b"; sleep 1' }`).join('\n')}
`);
    const run = await c.run('crash-many', { artifact: 'c4' });
    const obs = c.observe(run.id);
    // kill -9 whenever a step runs that no kill hit yet, three times
    const hit = new Set<string>();
    for (let k = 0; k < 3; k++) {
      const d = await c.until(run.id, (x) => TERMINAL.includes(x.status)
        || x.stages.some((s) => s.steps.some((st) => st.status === 'Running' && st.runId && !hit.has(st.runId))), 'a step to run', 60_000);
      if (TERMINAL.includes(d.status)) break;
      for (const s of d.stages) for (const st of s.steps) if (st.status === 'Running' && st.runId) hit.add(st.runId);
      await crashAndRestart();
    }
    expect(hit.size, 'steps the kills hit').toBeGreaterThanOrEqual(2);
    const d = await c.ended(run.id, 'Succeeded', 60_000);
    await obs.stop();
    for (const stageId of ['one', 'two', 'three', 'four']) {
      expectPairs(d, obs, stageId, [QFA, PIP, IQFA, PIP, OK]);
      expect(steps(d, stageId).map((s) => [s.id, s.try, s.status])).toEqual([['a', 1, 'Succeeded'], ['b', 1, 'Succeeded']]);
      expect(await c.log(run.id, stageId, 'a')).toBe(`${stageId} a\n`);
      expect(await c.log(run.id, stageId, 'b')).toBe(`${stageId} b\n`);
    }
  });
});

describe("the account's limit of running executions (FERRY_ACCOUNT_RUNNING_LIMIT)", () => {
  it('a run past the limit waits <NotDeployed, QueuedForPipeline> (execution Queued), also across a kill -9, and runs when a place frees', async () => {
    await crashAndRestart(0, { FERRY_ACCOUNT_RUNNING_LIMIT: '1' });
    const gate = new Gate('limit');
    await c.apply(`pipeline: limited
variables:
  gate: { type: string, required: true }
stages:
  - id: deploy
    type: custom
    steps: [ { id: work, type: shell, script: 'echo "run $FERRY_ARTIFACT"; ${gate.wait.replaceAll("'", "''")}' } ]
`);
    const first = await c.run('limited', { artifact: 'one', inputs: { gate: gate.path } });
    await c.atPair(first.id, 'deploy', PIP);
    const second = await c.run('limited', { artifact: 'two', inputs: { gate: gate.path } });
    expect(second.status).toBe('Queued');
    const obs = c.observe(second.id);
    const q = await c.atPair(second.id, 'deploy', 'NotDeployed/QueuedForPipeline');
    expect(q.status).toBe('Queued');
    expect(stage(q, 'deploy').status).toBe('Queued');
    expect(steps(q, 'deploy', 'work')[0]!.status).toBe('Waiting');
    const tree = await cli(['execution', second.id]);
    expect(tree.stdout).toMatch(/limited \(pipeline version \d+\)\s+Queued/);
    expect(tree.stdout).toContain("<NotDeployed, QueuedForPipeline> (the account's limit of running executions is reached)");
    const listed = await cli(['executions', '--status', 'Queued', '--json']);
    expect(listed.json<Array<{ id: string }>>().map((e) => e.id)).toEqual([second.id]);

    await crashAndRestart();
    expect((await c.get(second.id)).status).toBe('Queued');
    gate.open();
    await c.ended(first.id, 'Succeeded');
    const d = await c.ended(second.id, 'Succeeded');
    await obs.stop();
    expectPairs(d, obs, 'deploy', ['NotDeployed/QueuedForPipeline', QFA, PIP, OK]);
    // what the 50 ms poller saw: Queued first, Succeeded last, Running in between unless
    // the step ran between two polls (it only echoes once the gate is open)
    expect(obs.executionStatuses[0]).toBe('Queued');
    expect(obs.executionStatuses.at(-1)).toBe('Succeeded');
    expect(['Queued,Running,Succeeded', 'Queued,Succeeded']).toContain(obs.executionStatuses.join(','));
    expect(Date.parse(steps(d, 'deploy', 'work')[0]!.queuedAt!)).toBeGreaterThanOrEqual(Date.parse((await c.get(first.id)).finishedAt!));
  });
});
