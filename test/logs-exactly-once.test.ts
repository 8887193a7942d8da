/**
 * Step logs with nothing lost: 100,000 numbered lines from one step arrive complete, in
 * order, once each, while (a) the delegate's connection is cut several times through a
 * fault-injecting TCP proxy, (b) the control plane is killed -9 and restarted mid-step,
 * (c) the delegate is restarted with SIGTERM mid-step.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  useProcessGuard, startServer, startDelegate, createDelegateToken, waitFor, apiRequest,
  type FerryServer, type FerryDelegate,
} from './support/processes.js';
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js';

useProcessGuard();

const LINES = 100_000;
// Prints 100,000 numbered lines over roughly ten seconds (bursts of 5,000 with pauses).
const SCRIPT = `i=0; while [ $i -lt ${LINES} ]; do seq $((i+1)) $((i+5000)) | sed 's/^/line /'; i=$((i+5000)); sleep 0.5; done`;

let server: FerryServer | undefined;
let delegate: FerryDelegate | undefined;
let proxy: FaultProxy | undefined;

afterEach(async () => {
  await delegate?.stop({ timeout: 30_000 }).catch(() => delegate?.kill());
  await proxy?.close();
  await server?.stop().catch(() => server?.kill());
  server = delegate = proxy = undefined;
});

async function setup(env: Record<string, string> = {}) {
  server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '1s', ...env } });
  proxy = await startFaultProxy({ port: server.port });
  const token = await createDelegateToken(server);
  delegate = startDelegate({
    url: proxy.url, token, name: 'logger', capacity: 1,
    env: { FERRY_RECONNECT_BASE: '100ms', FERRY_RECONNECT_MAX: '1s', FERRY_DRAIN_TIMEOUT: '2m' },
  });
  await waitFor(async () => {
    const r = await apiRequest<Array<{ connected: boolean }>>(server!.url, 'GET', '/api/v1/delegates', undefined, { token: server!.adminToken });
    return r.body.some((d) => d.connected);
  }, { timeout: 20_000 });
  const t = await apiRequest<{ id: string }>(server.url, 'POST', '/api/v1/tasks', { spec: { kind: 'shell', script: SCRIPT }, timeout: '5m' }, { token: server.adminToken });
  expect(t.status).toBe(201);
  return t.body.id;
}

async function task(id: string) {
  return (await apiRequest<{ status: string; lastSeq: number; result: { exitCode: number } | null }>(server!.url, 'GET', `/api/v1/tasks/${id}`, undefined, { token: server!.adminToken })).body;
}

async function waitRunningWithOutput(id: string, minSeq: number) {
  await waitFor(async () => {
    const t = await task(id);
    return t.status === 'running' && t.lastSeq >= minSeq ? t : undefined;
  }, { timeout: 30_000, interval: 100, message: 'task never produced output' });
}

async function expectCompleteLog(id: string) {
  const done = await waitFor(async () => {
    const t = await task(id).catch(() => undefined);
    return t && ['succeeded', 'failed', 'canceled'].includes(t.status) ? t : undefined;
  }, { timeout: 120_000, interval: 250, message: 'task did not finish' });
  expect(done.status).toBe('succeeded');
  const log = await apiRequest<string>(server!.url, 'GET', `/api/v1/tasks/${id}/logs`, undefined, { token: server!.adminToken });
  const lines = log.text.split('\n');
  expect(lines.pop()).toBe('');
  expect(lines.length).toBe(LINES);
  for (let i = 0; i < LINES; i++) {
    if (lines[i] !== `line ${i + 1}`) {
      expect.fail(`line ${i + 1} is ${JSON.stringify(lines[i])} (lost, duplicated or out of order)`);
    }
  }
}

describe('100,000 lines arrive complete, in order, once each', () => {
  it('while the delegate connection is cut several times', async () => {
    const id = await setup();
    await waitRunningWithOutput(id, 1);
    for (let k = 0; k < 4; k++) {
      await new Promise((r) => setTimeout(r, 1200));
      expect(proxy!.cutAll()).toBeGreaterThanOrEqual(0);
    }
    expect(proxy!.stats.cut).toBeGreaterThanOrEqual(3);
    await expectCompleteLog(id);
  });

  it('while the control plane is killed -9 and restarted mid-step', async () => {
    const id = await setup();
    await waitRunningWithOutput(id, 3);
    await server!.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 1000));
    await server!.restart();
    await expectCompleteLog(id);
  });

  it('while the delegate is restarted with SIGTERM mid-step', async () => {
    const id = await setup();
    await waitRunningWithOutput(id, 3);
    const exit = await delegate!.stop({ timeout: 60_000 });
    expect(exit.code).toBe(0);
    await delegate!.restart();
    await expectCompleteLog(id);
  });
});
