/**
 * Delegate self-upgrade end to end (CONTRACT §8, issue 5 items 1-3, 5): real bundles
 * built by the bundle script, published with `ferry release publish`, real delegate
 * supervisors. A ring's target moves its delegates (download, verify, probation, switch);
 * `ferry ring rollback` moves them back without losing a task; a bundle whose worker
 * cannot start is refused by probation, never runs a task and is not offered again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useProcessGuard, startServer, startDelegate, createDelegateToken, waitFor, type FerryServer, type FerryDelegate } from './support/processes.js';
import {
  FAST_DELEGATE, buildBundle, delegates, getTask, publish, ringHistory, ringStatus, submitTask, untilDone, waitOnVersion,
} from './rings-helpers.js';

useProcessGuard();

const V1 = '1.1.0-e2e';
const V2 = '1.2.0-e2e';
const CRASH = '1.3.0-crash';

let server: FerryServer;
const running: FerryDelegate[] = [];
const bundles: Record<string, string> = {};

beforeAll(async () => {
  // V1 through the documented command (pnpm … bundle -- --version V --out DIR)
  bundles[V1] = buildBundle(V1, { viaPnpm: true });
  bundles[V2] = buildBundle(V2);
  bundles[CRASH] = buildBundle(CRASH, { fault: 'crash-on-start' });
  server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '500ms', FERRY_RING_CHECK_INTERVAL: '1s', FERRY_DELEGATE_GRACE: '3s' } });
  for (const v of [V1, V2, CRASH]) expect((await publish(server, bundles[v]!)).version).toBe(v);
});
afterAll(async () => {
  for (const d of running) await d.stop().catch(() => d.kill());
  await server?.stop();
});

describe('ring target, set and rollback', () => {
  it('moves every delegate of the ring to the target, back on rollback, and loses no task on the way', async () => {
    await server.cli(['account', 'create', 'upg']).then((r) => r.ok());
    const token = await createDelegateToken(server, 'upg');
    const names = ['upg-a', 'upg-b'];
    for (const name of names) running.push(startDelegate({ url: server.url, token, name, capacity: 2, env: FAST_DELEGATE }));
    const first = await waitOnVersion(server, names, '0.1.0');
    expect(first.every((d) => d.ring === 'ring0' && d.upgrade === null)).toBe(true);

    const t0 = Date.now();
    await server.cli(['ring', 'set', 'ring0', '--version', V1, '--json']).then((r) => r.ok());
    const onV1 = await waitOnVersion(server, names, V1);
    const setMs = Date.now() - t0;
    expect(onV1.map((d) => d.upgrade)).toEqual([{ version: V1, state: 'succeeded', error: null }, { version: V1, state: 'succeeded', error: null }]);
    expect((await ringStatus(server, 'ring0')).delegates).toMatchObject({ onTarget: 2, failed: 0, upgrading: 0 });

    await server.cli(['ring', 'set', 'ring0', '--version', V2]).then((r) => r.ok());
    await waitOnVersion(server, names, V2);
    const before = await Promise.all([1, 2].map(() => submitTask(server, { kind: 'shell', script: 'echo start; sleep 0.5; echo end' }, 'upg')));
    for (const id of before) expect((await untilDone(server, id)).delegateVersion).toBe(V2);

    // a long task runs on V2 when the rollback starts (the drain waits for it); more are
    // queued while the delegates switch
    const long = await submitTask(server, { kind: 'shell', script: 'echo begin; sleep 3; echo finish' }, 'upg');
    await waitFor(async () => (await getTask(server, long)).status === 'running', { timeout: 20_000, message: 'the long task to run' });
    const t1 = Date.now();
    await server.cli(['ring', 'rollback', 'ring0', '--json']).then((r) => r.ok());
    const during: string[] = [];
    for (let i = 0; i < 4; i++) during.push(await submitTask(server, { kind: 'shell', script: `echo queued-${i}` }, 'upg'));
    const back = await waitOnVersion(server, names, V1);
    const rollbackMs = Date.now() - t1;
    expect(back.every((d) => d.connected && d.version === V1)).toBe(true);

    const longDone = await untilDone(server, long);
    expect(longDone).toMatchObject({ status: 'succeeded', delegateVersion: V2 });
    expect((await server.api('GET', `/api/v1/tasks/${long}/logs`)).text).toBe('begin\nfinish\n');
    for (const [i, id] of during.entries()) {
      const t = await untilDone(server, id);
      expect(t.status, JSON.stringify(t)).toBe('succeeded');
      expect([V1, V2]).toContain(t.delegateVersion);
      expect((await server.api('GET', `/api/v1/tasks/${id}/logs`)).text).toBe(`queued-${i}\n`);
    }

    const ring = await ringStatus(server, 'ring0');
    expect(ring).toMatchObject({ version: V1, delegates: { total: 2, onTarget: 2 } });
    const hist = await ringHistory(server, 'ring0');
    expect(hist.slice(0, 3).map((h) => [h.from, h.to, h.by])).toEqual([[V2, V1, 'admin'], [V1, V2, 'admin'], [null, V1, 'admin']]);
    expect(hist[0]!.reason).toMatch(/rolled back/);
    console.log(`[rings-upgrade] set ring0 → ${V1}: ${setMs} ms (download + probation); rollback ${V2} → ${V1} with a 3 s task draining: ${rollbackMs} ms`);
  });
});

describe('probation', () => {
  it('refuses a worker that cannot start: the delegate stays on its version, runs nothing on the bad one, and is not offered it again', async () => {
    // its own account in ring1, so that the first test's ring is left alone
    await server.cli(['account', 'create', 'prob', '--ring', 'ring1']).then((r) => r.ok());
    const token = await createDelegateToken(server, 'prob');
    const d = startDelegate({ url: server.url, token, name: 'prob-a', env: FAST_DELEGATE });
    running.push(d);
    await server.cli(['ring', 'set', 'ring1', '--version', V1]).then((r) => r.ok());
    await waitOnVersion(server, ['prob-a'], V1);

    const mark = d.output.mark();
    await server.cli(['ring', 'set', 'ring1', '--version', CRASH]).then((r) => r.ok());
    const failed = await waitFor(async () => {
      const x = (await delegates(server)).find((y) => y.name === 'prob-a');
      return x?.upgrade?.version === CRASH && x.upgrade.state === 'failed' && x.connected ? x : undefined;
    }, { timeout: 60_000, message: 'the upgrade to fail' });
    expect(failed.version).toBe(V1);
    expect(failed.upgrade!.error).toMatch(/probation failed: the worker exited during probation \(exit code 1.*rolled back to 1\.1\.0-e2e/);
    const ring = await ringStatus(server, 'ring1');
    expect(ring).toMatchObject({ version: CRASH, delegates: { total: 1, failed: 1, onTarget: 0 } });

    // tasks run on the old version
    const ids = await Promise.all([1, 2, 3].map((i) => submitTask(server, { kind: 'shell', script: `echo ok-${i}` }, 'prob')));
    for (const id of ids) expect(await untilDone(server, id)).toMatchObject({ status: 'succeeded', delegateVersion: V1 });

    // not offered again: not by the periodic pass, not after a restart of the delegate
    await new Promise((r) => setTimeout(r, 3000));
    await d.restart();
    await waitOnVersion(server, ['prob-a'], V1);
    await new Promise((r) => setTimeout(r, 3000));
    const offers = d.output.text(mark).split('\n').filter((l) => l.includes('upgrade requested') && l.includes(CRASH));
    // the worker logs the offer once and the supervisor once
    expect(offers.length, offers.join('\n')).toBeLessThanOrEqual(2);
    const after = (await delegates(server)).find((y) => y.name === 'prob-a')!;
    expect(after).toMatchObject({ version: V1, connected: true });
    expect(after.upgrade).toMatchObject({ version: CRASH, state: 'failed' });
    const more = await submitTask(server, { kind: 'shell', script: 'echo still-fine' }, 'prob');
    expect(await untilDone(server, more)).toMatchObject({ status: 'succeeded', delegateVersion: V1 });
  });
});
