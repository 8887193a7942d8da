/**
 * Issue 5's incident as an end-to-end test: a delegate version whose `http` handler fails
 * at run time because a module it loads lazily is missing from the bundle (its
 * self-checks pass, so probation lets it through). It is rolled out to ring0, where
 * delegates of two accounts run it, while ring1's delegates still run the good version.
 * The control plane must find the regression in the `http` kind only, halt the rollout
 * and roll ring0 back by itself; the delegates return to the good version and later http
 * tasks pass. No human step after `ferry ring rollout`.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { useProcessGuard, startServer, startDelegate, createDelegateToken, waitFor, type FerryServer, type FerryDelegate } from './support/processes.js';
import {
  FAST_DELEGATE, buildBundle, publish, ringHistory, ringStatus, submitTask, untilDone, waitOnVersion, type TaskView,
} from './rings-helpers.js';

useProcessGuard();

const GOOD = '2.0.0-good';
const BAD = '2.1.0-bad';

let server: FerryServer;
const running: FerryDelegate[] = [];

beforeAll(async () => {
  const good = buildBundle(GOOD);
  const bad = buildBundle(BAD, { fault: 'missing-lazy-http-module' });
  server = await startServer({
    env: {
      FERRY_HEARTBEAT_INTERVAL: '500ms', FERRY_DELEGATE_GRACE: '3s',
      FERRY_RING_MIN_SAMPLE: '5', FERRY_RING_CHECK_INTERVAL: '1s',
    },
  });
  await publish(server, good);
  await publish(server, bad);
});
afterAll(async () => {
  for (const d of running) await d.stop().catch(() => d.kill());
  await server?.stop();
});

it('a version whose http tasks fail is halted and rolled back by the control plane alone', async () => {
  const accounts = { acme: 'ring0', globex: 'ring0', later: 'ring1' } as const;
  for (const [a, ring] of Object.entries(accounts)) await server.cli(['account', 'create', a, '--ring', ring]).then((r) => r.ok());
  for (const ring of ['ring0', 'ring1']) await server.cli(['ring', 'set', ring, '--version', GOOD]).then((r) => r.ok());
  for (const a of Object.keys(accounts)) {
    const token = await createDelegateToken(server, a);
    running.push(startDelegate({ url: server.url, token, name: `${a}-1`, capacity: 4, env: FAST_DELEGATE }));
  }
  const ring0 = ['acme-1', 'globex-1'];
  await waitOnVersion(server, [...ring0, 'later-1'], GOOD);

  const healthz = `${server.url}/healthz`;
  const batch = async (account: string, n: number) => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      ids.push(await submitTask(server, { kind: 'http', url: healthz }, account));
      ids.push(await submitTask(server, { kind: 'shell', script: `echo ${account}-${i}` }, account));
    }
    return ids;
  };
  // the good version's record before the rollout (every task passes)
  for (const t of await Promise.all((await batch('acme', 3)).map((id) => untilDone(server, id)))) expect(t.status).toBe('succeeded');

  const t0 = Date.now();
  await server.cli(['ring', 'rollout', BAD, '--soak', '30s', '--json']).then((r) => r.ok());
  await waitOnVersion(server, ring0, BAD);
  const upgradedMs = Date.now() - t0;
  expect((await ringStatus(server, 'ring0')).rollout).toMatchObject({ version: BAD, state: 'soaking' });

  // traffic on both versions, from both ring0 accounts and from ring1
  const ids = [...await batch('acme', 6), ...await batch('globex', 6), ...await batch('later', 6)];
  const done: TaskView[] = await Promise.all(ids.map((id) => untilDone(server, id, 90_000)));
  const onBad = done.filter((t) => t.delegateVersion === BAD);
  expect(onBad.length).toBeGreaterThan(0);
  // on the bad version http fails with the missing module, shell passes; on the good one everything passes
  for (const t of onBad) {
    if (t.kind === 'http') expect(t.result?.error?.message, JSON.stringify(t)).toMatch(/Cannot find module|ERR_MODULE_NOT_FOUND|http-report/);
    else expect(t.status).toBe('succeeded');
  }
  for (const t of done.filter((x) => x.delegateVersion === GOOD)) expect(t.status, JSON.stringify(t)).toBe('succeeded');

  // the control plane halts and rolls back by itself
  const ring = await waitFor(async () => {
    const r = await ringStatus(server, 'ring0');
    return r.rollout?.state === 'rolledBack' ? r : undefined;
  }, { timeout: 60_000, message: 'the automatic rollback of ring0' });
  const detectedMs = Date.now() - t0;
  expect(ring.version).toBe(GOOD);
  const hist = await ringHistory(server, 'ring0');
  const auto = hist.find((h) => h.by === 'ferry' && h.from === BAD && h.to === GOOD);
  expect(auto, JSON.stringify(hist, null, 2)).toBeDefined();
  expect(auto!.reason).toMatch(/automatic rollback: http tasks fail more on 2\.1\.0-bad/);
  const ev = auto!.evidence as { kind: string; new: { version: string; failed: number; total: number }; old: { version: string; failed: number; total: number }; pValue: number; others: unknown[] };
  expect(ev).toMatchObject({ kind: 'http', new: { version: BAD }, old: { version: GOOD, failed: 0 } });
  expect(ev.new.failed).toBeGreaterThanOrEqual(5);
  expect(ev.pValue).toBeLessThanOrEqual(0.01);
  expect(ev.others).toEqual([]);
  // ring1 never got the bad version
  expect((await ringStatus(server, 'ring1')).version).toBe(GOOD);

  // the delegates return to the good version, and http tasks pass again
  await waitOnVersion(server, ring0, GOOD);
  const returnedMs = Date.now() - t0;
  const after = await Promise.all([...await batch('acme', 2), ...await batch('globex', 2)].map((id) => untilDone(server, id)));
  for (const t of after) expect(t, JSON.stringify(t)).toMatchObject({ status: 'succeeded', delegateVersion: GOOD });
  const log = server.output.text();
  expect(log).toMatch(/rollout halted: automatic rollback: http tasks fail more/);
  console.log(`[rings-incident] rollout→ring0 on ${BAD}: ${upgradedMs} ms; rolled back automatically ${detectedMs} ms after the rollout; delegates back on ${GOOD}: ${returnedMs} ms; evidence ${JSON.stringify({ new: ev.new, old: ev.old, pValue: ev.pValue })}`);
});
