/**
 * `pnpm demo` (scripts/demo.mjs) end to end, and the CLI of the engine as a user meets it:
 * pipeline files (an error names the line and the field; every apply is a new version,
 * an execution keeps the version it started with), `ferry run --follow` (live progress and
 * logs, exit 0 or 1), `ferry run --json`, `ferry executions --json`.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cleanEnv, createDelegateToken, ferryCli, makeTempDir, REPO_ROOT, spawnTracked, startDelegate, startServer, useProcessGuard,
  waitForDelegates, OutputBuffer, type FerryDelegate, type FerryServer,
} from './support/processes.js';
import { EngineClient, FAST_DELEGATE, Gate, stage, steps } from './engine-helpers.js';

useProcessGuard();

describe('pnpm demo', () => {
  it('deploys v1, rolls v2 back to v1 after its failed health check, resumes after the fix, exits 0 and leaves nothing running', async () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.demo).toBe('node scripts/demo.mjs');
    const output = new OutputBuffer();
    const proc = spawnTracked(process.execPath, [join(REPO_ROOT, 'scripts', 'demo.mjs')], {
      name: 'pnpm demo', env: cleanEnv({ NO_COLOR: '1' }), output, cwd: REPO_ROOT,
    });
    const exit = await proc.waitExit(170_000);
    if (!exit) {
      await proc.killHard();
      throw new Error(`the demo did not finish within 170 s:\n${output.tail(80)}`);
    }
    const text = output.text();
    expect(exit.code, output.tail(80)).toBe(0);
    // nothing it started is left: server, delegate, CLI, the demo service's processes
    expect(await proc.waitGone(5_000), `left running: ${proc.members().map((p) => p.cmdline).join(', ')}`).toBe(true);
    proc.untrack();

    // 1: v1 through dev, the approval and prod
    expect(text).toMatch(/\$ ferry approve \S+ --stage approve-prod --comment 'v1 looks good in dev'/);
    expect(text).toMatch(/\[prod\/deploy\] started v1 on port \d+/);
    expect(text).toContain('# prod answers: hello from v1');
    // 2: v2 fails its health check in prod and is rolled back to v1
    expect(text).toContain('[prod/health] health check 1: {"version":"v2","healthy":false,"reason":"config-v2 is missing"} HTTP 503');
    expect(text).toContain('[prod/restore] rolling back to v1, the last successful deployment of pipeline local-service on local-service/prod/local');
    expect(text).toMatch(/prod\s+Failed\s+local-service\/prod\/local\s+attempt 1 <Failed, PhaseFailed>\s+rolled back to v1/);
    expect(text).toMatch(/error: EXECUTION_FAILED: execution \S+ ended Failed/);
    expect(text).toContain('# prod was rolled back and answers: hello from v1');
    // 3: the fix and the resume from prod
    expect(text).toMatch(/\$ ferry resume \S+ --from-stage prod --follow/);
    expect(text).toMatch(/resumed from prod; dev, approve-prod keep their results/);
    expect(text).toContain('# prod answers: hello from v2');
    // the final status trees
    expect(text).toMatch(/\$ ferry execution \S+\nexecution \S+ {2}local-service \(pipeline version 1\) {2}Succeeded/);
    expect(text).toMatch(/prod\s+Succeeded\s+local-service\/prod\/local\s+attempt 2 <Succeeded, Approved>/);
    expect(text).toMatch(/approval\s+Succeeded\s+approved by admin \("v2 looks good in dev"\)/);
    expect(text).toMatch(/# stopped \d service process\(es\), the delegate and the server/);
    expect(text).toMatch(/demo finished in \d+ s/);
  }, 180_000);
});

describe('the CLI: pipeline files, ferry run --follow', () => {
  let server: FerryServer;
  let delegate: FerryDelegate;
  let c: EngineClient;
  const dir = makeTempDir('ferry-pipelines-');
  const cli = (args: string[]) => ferryCli(args, { url: server.url, token: server.adminToken });
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  beforeAll(async () => {
    server = await startServer();
    delegate = startDelegate({ url: server.url, token: await createDelegateToken(server), name: 'cli-runner', env: FAST_DELEGATE });
    await waitForDelegates(server, { names: ['cli-runner'] });
    c = new EngineClient(server);
  });
  afterAll(async () => {
    await delegate?.stop();
    await server?.stop();
  });

  it('an invalid pipeline file: exit 1, `error: INVALID_PIPELINE: …` naming the line, the field and what was expected', async () => {
    const bad = file('bad.yaml', `pipeline: broken
stages:
  - id: dev
    type: deploy
    service: broken
    environment: dev
    infrastructure: local
    steps:
      - id: deploy
        type: shell
        script: ./deploy.sh
        timeout: 5 minutes
        retries: 3
`);
    const r = await cli(['pipeline', 'apply', '-f', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: INVALID_PIPELINE: line 12: stages\[0\]\.steps\[0\]\.timeout: expected a duration such as 500ms, 30s, 5m, 1h or 1d \(got "5 minutes"\)/m);
    expect(r.stderr).toMatch(/line 13: stages\[0\]\.steps\[0\]\.retries: unknown field "retries"/);
    const yaml = await cli(['pipeline', 'apply', '-f', file('notyaml.yaml', 'pipeline: broken\nstages: [\n')]);
    expect(yaml.code).toBe(1);
    expect(yaml.stderr).toMatch(/^error: INVALID_PIPELINE: line 3: not valid YAML/m);
    // nothing was stored
    expect((await cli(['pipeline', 'list', '--json'])).json<unknown[]>().some((p) => (p as { name: string }).name === 'broken')).toBe(false);
    // the schema it is checked against is published
    const schema = await c.api<{ properties: Record<string, unknown> }>('GET', 'schema/pipeline');
    expect(schema.status).toBe(200);
    expect(Object.keys(schema.body.properties)).toEqual(expect.arrayContaining(['pipeline', 'stages', 'variables', 'environments']));
  });

  it('every apply is a new version; an execution keeps the version it started with', async () => {
    const gate = new Gate('version');
    const v = (n: number) => `pipeline: versioned
stages:
  - id: work
    type: custom
    steps: [ { id: say, type: shell, script: 'echo "version ${n}"; ${gate.wait.replaceAll("'", "''")}' } ]
`;
    const a1 = await cli(['pipeline', 'apply', '-f', file('v1.yaml', v(1))]);
    expect(a1.stdout.trim()).toBe('pipeline versioned version 1 applied');
    const run = (await cli(['run', 'versioned', '--json'])).json<{ id: string; pipelineVersion: number; status: string; stages: unknown[] }>();
    expect(run).toMatchObject({ pipelineVersion: 1, status: 'Running' });
    expect(run.stages).toHaveLength(1);
    const a2 = await cli(['pipeline', 'apply', '-f', file('v2.yaml', v(2)), '--json']);
    expect(a2.json()).toMatchObject({ name: 'versioned', version: 2 });
    expect((await cli(['pipeline', 'show', 'versioned', '--json'])).json()).toMatchObject({ name: 'versioned', version: 2 });
    expect((await cli(['pipeline', 'list', '--json'])).json()).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'versioned', version: 2 })]));
    gate.open();
    const d = await c.ended(run.id, 'Succeeded');
    expect(d.pipelineVersion).toBe(1);
    expect(await c.log(run.id, 'work', 'say')).toBe('version 1\n');
  });

  it('ferry run --follow streams stage and step progress with the logs, prints the tree, exits 0 when it succeeded and 1 when it failed', async () => {
    const yaml = (name: string, exit: number) => `pipeline: ${name}
stages:
  - id: deploy
    type: deploy
    service: ${name}
    environment: dev
    infrastructure: local
    steps:
      - { id: install, type: shell, script: 'echo "installing $FERRY_ARTIFACT"; sleep 0.3; echo installed' }
      - { id: check, type: shell, script: 'echo "checking"; exit ${exit}' }
  - id: notify
    type: custom
    steps: [ { id: say, type: shell, script: 'echo notified' } ]
`;
    await c.apply(yaml('follow-ok', 0));
    await c.apply(yaml('follow-bad', 7));
    const ok = await ferryCli(['run', 'follow-ok', '--artifact', '4.2.0', '--follow'], { url: server.url, token: server.adminToken });
    expect(ok.code, ok.stderr).toBe(0);
    const lines = ok.stdout.split('\n');
    expect(lines[0]).toMatch(/^execution \S+ of follow-ok \(pipeline version 1\), artifact 4\.2\.0$/);
    const at = (re: RegExp) => {
      const i = lines.findIndex((l) => re.test(l));
      expect(i, `no line matches ${re}\n${ok.stdout}`).toBeGreaterThanOrEqual(0);
      return i;
    };
    // progress and logs in the order they happened
    const order = [
      at(/^== deploy: InProgress </),
      at(/^ {3}deploy\/install: Running \(on cli-runner\)$/),
      at(/^\[deploy\/install\] installing 4\.2\.0$/),
      at(/^\[deploy\/install\] installed$/),
      at(/^\[deploy\/check\] checking$/),
      at(/^== deploy: Succeeded <Succeeded, Approved>$/),
      at(/^\[notify\/say\] notified$/),
      at(/^execution \S+ {2}follow-ok \(pipeline version 1\) {2}Succeeded$/),
    ];
    expect([...order].sort((a, b) => a - b)).toEqual(order);

    const bad = await ferryCli(['run', 'follow-bad', '--artifact', '4.2.1', '--follow'], { url: server.url, token: server.adminToken });
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/^ {3}deploy\/check: Failed \(on cli-runner; exit 7; StepFailed: exit code 7\)$/m);
    expect(bad.stdout).toMatch(/^== deploy: Failed <Failed, PhaseFailed>$/m);
    expect(bad.stdout).not.toContain('notified');
    expect(bad.stderr).toMatch(/^error: EXECUTION_FAILED: execution \S+ ended Failed$/m);

    // the listing: newest first, one entry per execution
    const list = (await cli(['executions', '--json'])).json<Array<Record<string, unknown>>>();
    const mine = list.filter((e) => String(e.pipeline).startsWith('follow-'));
    expect(mine.map((e) => [e.pipeline, e.status, e.artifact])).toEqual([['follow-bad', 'Failed', '4.2.1'], ['follow-ok', 'Succeeded', '4.2.0']]);
    for (const e of mine) expect(Object.keys(e)).toEqual(expect.arrayContaining(['id', 'pipeline', 'status', 'artifact', 'createdAt', 'finishedAt']));
    const failed = await c.get(String(mine[0]!.id));
    expect(stage(failed, 'notify')).toMatchObject({ status: 'NotStarted', attempts: [] });
    expect(steps(failed, 'deploy', 'check')[0]).toMatchObject({ status: 'Failed', exitCode: 7, error: { kind: 'StepFailed' } });
  });
});
