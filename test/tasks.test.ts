/**
 * The agent queue and task execution: cancel and timeout reach the whole process group,
 * secrets never reach stored logs or the database in clear, selectors / capabilities /
 * capacity are honoured, another account's delegate never gets a task, the queue
 * reason says why a task waits, and a lost delegate's tasks end DelegateLost.
 */
import { readFileSync, existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  useProcessGuard, startServer, startDelegate, createDelegateToken, ferryCli, waitFor, apiRequest,
  type FerryServer, type FerryDelegate,
} from './support/processes.js';

useProcessGuard();

interface TaskView {
  id: string; status: string; delegate: string | null; queue: { reason: string; position: number } | null;
  result: { status: string; exitCode: number | null; error?: { kind: string; message: string }; outputs: Record<string, string> } | null;
}

let server: FerryServer;
const delegates: FerryDelegate[] = [];
const FAST = { FERRY_RECONNECT_BASE: '100ms', FERRY_RECONNECT_MAX: '1s', FERRY_KILL_GRACE: '2s' };

const api = <T>(method: string, path: string, body?: unknown) => apiRequest<T>(server.url, method, path, body, { token: server.adminToken });
async function submit(body: Record<string, unknown>): Promise<string> {
  const r = await api<{ id: string }>('POST', '/api/v1/tasks', body);
  expect(r.status, r.text).toBe(201);
  return r.body.id;
}
const get = async (id: string) => (await api<TaskView>('GET', `/api/v1/tasks/${id}`)).body;
const untilDone = (id: string, timeout = 30_000) => waitFor(async () => {
  const t = await get(id);
  return ['succeeded', 'failed', 'canceled'].includes(t.status) ? t : undefined;
}, { timeout, interval: 100, message: `task ${id} did not finish` });
const logOf = async (id: string) => (await api<string>('GET', `/api/v1/tasks/${id}/logs`)).text;
const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };

async function connectedNames(): Promise<string[]> {
  const l = (await api<Array<{ name: string; connected: boolean }>>('GET', '/api/v1/delegates')).body;
  return l.filter((d) => d.connected).map((d) => d.name);
}

beforeAll(async () => {
  server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '500ms', FERRY_DELEGATE_GRACE: '3s' } });
});
afterAll(async () => {
  for (const d of delegates) await d.stop().catch(() => d.kill());
  await server?.stop();
});

describe('running tasks on a delegate', () => {
  let token: string;
  beforeAll(async () => {
    token = await createDelegateToken(server);
    delegates.push(startDelegate({ url: server.url, token, name: 'runner', tags: ['linux'], capacity: 2, env: FAST }));
    await waitFor(async () => ((await connectedNames()).includes('runner') ? true : undefined), { timeout: 20_000 });
  });

  it('runs a shell step: exit code, outputs, stdout and stderr lines, FERRY_* env', async () => {
    const id = await submit({ spec: { kind: 'shell', script: 'echo "out $FERRY_STEP_ID"; echo oops >&2; echo "VERSION=1.2.3" >> "$FERRY_OUTPUT"; exit 3' }, env: { FERRY_STEP_ID: 'deploy' } });
    const t = await untilDone(id);
    expect(t.status).toBe('failed');
    expect(t.result).toMatchObject({ status: 'Failed', exitCode: 3, outputs: { VERSION: '1.2.3' }, error: { kind: 'StepFailed' } });
    expect(await logOf(id)).toBe('out deploy\noops\n');
  });

  it('cancel reaches the whole process group: a background child is gone too', async () => {
    const id = await submit({ spec: { kind: 'shell', script: 'sleep 300 & echo "child $!"; wait' } });
    const pid = await waitFor(async () => {
      const m = /child (\d+)/.exec(await logOf(id));
      return m ? Number(m[1]) : undefined;
    }, { timeout: 15_000 });
    expect(alive(pid)).toBe(true);
    const c = await api('POST', `/api/v1/tasks/${id}/cancel`);
    expect(c.status).toBe(200);
    const t = await untilDone(id);
    expect(t.status).toBe('canceled');
    expect(t.result?.status).toBe('Canceled');
    await waitFor(() => (alive(pid) ? undefined : true), { timeout: 5000, message: `background child ${pid} survived the cancel` });
    // Cancelling again is refused: the task is over.
    expect((await api('POST', `/api/v1/tasks/${id}/cancel`)).status).toBe(409);
  });

  it('a timeout kills the process group and reports Timeout', async () => {
    const id = await submit({ spec: { kind: 'shell', script: 'sleep 300 & echo "child $!"; sleep 300' }, timeout: '1500ms' });
    const t = await untilDone(id);
    expect(t.status).toBe('failed');
    expect(t.result?.error?.kind).toBe('Timeout');
    const pid = Number(/child (\d+)/.exec(await logOf(id))?.[1]);
    await waitFor(() => (alive(pid) ? undefined : true), { timeout: 5000, message: 'the timed-out step left a child running' });
  });

  it('masks secrets in every form, and the database never holds them in clear', async () => {
    const value = 'hunter2-Sup3r/S3cret+value';
    const set = await ferryCli(['secret', 'set', 'DB_PASSWORD'], { url: server.url, token: server.adminToken, input: `${value}\n` });
    expect(set.code, set.stderr).toBe(0);
    const b64 = Buffer.from(value).toString('base64');
    const url = encodeURIComponent(value);
    const id = await submit({
      spec: { kind: 'shell', script: 'echo "plain $DB_PASSWORD"; printf "%s" "$DB_PASSWORD" | base64; echo "url ' + url + '"; echo done' },
      secrets: ['DB_PASSWORD'],
    });
    const t = await untilDone(id);
    expect(t.status).toBe('succeeded');
    const log = await logOf(id);
    expect(log).toBe('plain ***\n***\nurl ***\ndone\n');
    for (const file of ['ferry.db', 'ferry.db-wal']) {
      const p = `${server.dataDir}/${file}`;
      if (!existsSync(p)) continue;
      const bytes = readFileSync(p).toString('latin1');
      expect(bytes.includes(value), `${file} holds the secret in clear`).toBe(false);
      expect(bytes.includes(b64), `${file} holds the secret's base64`).toBe(false);
    }
    // No route returns the value.
    const list = await api<unknown[]>('GET', '/api/v1/secrets');
    expect(JSON.stringify(list.body)).not.toContain(value);
  });

  it('runs an http step and checks the status', async () => {
    const ok = await submit({ spec: { kind: 'http', url: `${server.url}/healthz`, method: 'GET', expectStatus: [200], expectBody: 'ok' } });
    expect((await untilDone(ok)).status).toBe('succeeded');
    const bad = await submit({ spec: { kind: 'http', url: `${server.url}/nope`, method: 'GET' } });
    const t = await untilDone(bad);
    expect(t.status).toBe('failed');
    expect(t.result?.error?.kind).toBe('StepFailed');
  });
});

describe('eligibility and queue reasons', () => {
  it('honours selectors, capabilities, capacity and accounts, and says why a task waits', async () => {
    const acme = await ferryCli(['account', 'create', 'acme'], { url: server.url, token: server.adminToken });
    expect(acme.code, acme.stderr).toBe(0);
    // A task of acme with no acme delegate: the reason names it.
    const lonely = await submit({ spec: { kind: 'noop' }, account: 'acme' });
    await waitFor(async () => ((await get(lonely)).queue?.reason.includes('no delegate of account acme is connected') ? true : undefined), { timeout: 5000 });

    const acmeToken = await createDelegateToken(server, 'acme');
    const small = startDelegate({ url: server.url, token: acmeToken, name: 'acme-small', tags: ['linux'], capacity: 1, env: FAST });
    delegates.push(small);
    await waitFor(async () => ((await connectedNames()).includes('acme-small') ? true : undefined), { timeout: 20_000 });
    expect((await untilDone(lonely)).status).toBe('succeeded');
    expect((await get(lonely)).delegate).not.toBeNull();

    // Selectors no delegate matches: waits, with the reason.
    const gpu = await submit({ spec: { kind: 'noop' }, selectors: ['gpu'], account: 'acme' });
    await waitFor(async () => ((await get(gpu)).queue?.reason.includes('matches selectors [gpu]') ? true : undefined), { timeout: 5000 });

    // Capacity 1: a second task waits behind the first, position and reason say so.
    const long = await submit({ spec: { kind: 'shell', script: 'sleep 3' }, selectors: ['linux'], account: 'acme' });
    await waitFor(async () => ((await get(long)).status === 'running' ? true : undefined), { timeout: 10_000 });
    const behind = await submit({ spec: { kind: 'noop' }, account: 'acme' });
    const q = await waitFor(async () => (await get(behind)).queue ?? undefined, { timeout: 5000 });
    expect(q.reason).toMatch(/busy \(1\/1 slots in use\)/);
    expect(q.position).toBeGreaterThanOrEqual(1);
    expect((await untilDone(behind)).status).toBe('succeeded');

    // Another account's delegate never gets the task: the default account's 'runner'
    // carries 'gpu'-less tags too, and the acme task waits for acme's own.
    const defaultTokenTask = await submit({ spec: { kind: 'noop' }, selectors: ['gpu'] });
    const gpuToken = await createDelegateToken(server, 'acme');
    const gpuDelegate = startDelegate({ url: server.url, token: gpuToken, name: 'acme-gpu', tags: ['gpu'], capacity: 1, env: FAST });
    delegates.push(gpuDelegate);
    const done = await untilDone(gpu);
    expect(done.status).toBe('succeeded');
    const all = (await api<Array<{ id: string; name: string }>>('GET', '/api/v1/delegates')).body;
    expect(all.find((d) => d.id === done.delegate)?.name).toBe('acme-gpu');
    // The default account's gpu task is still waiting: acme's gpu delegate must not take it.
    await new Promise((r) => setTimeout(r, 1000));
    const still = await get(defaultTokenTask);
    expect(still.status).toBe('queued');
    expect(still.queue?.reason).toMatch(/matches selectors \[gpu\]/);
    await api('POST', `/api/v1/tasks/${defaultTokenTask}/cancel`);
  });

  it('an idle pool takes its own task at once behind a deep queue of another pool’s tasks, and the deep queue still drains', async () => {
    expect((await ferryCli(['account', 'create', 'pools'], { url: server.url, token: server.adminToken })).code).toBe(0);
    const poolToken = await createDelegateToken(server, 'pools');
    for (const [name, tag] of [['pool-a', 'a'], ['pool-b', 'b']] as const) {
      delegates.push(startDelegate({ url: server.url, token: poolToken, name, tags: [tag], capacity: 1, env: FAST }));
    }
    await waitFor(async () => { const c = await connectedNames(); return c.includes('pool-a') && c.includes('pool-b') ? true : undefined; }, { timeout: 20_000 });

    const busy = await submit({ spec: { kind: 'shell', script: 'sleep 30' }, selectors: ['a'], account: 'pools' });
    await waitFor(async () => ((await get(busy)).status === 'running' ? true : undefined), { timeout: 10_000 });
    const deep = await api<{ ids: string[] }>('POST', '/api/v1/tasks/batch', { account: 'pools', tasks: Array.from({ length: 300 }, () => ({ spec: { kind: 'noop' }, selectors: ['a'] })) });
    expect(deep.status, deep.text).toBe(201);
    // pool-b has a free slot and nothing in the queue suits it; passes run meanwhile
    await new Promise((r) => setTimeout(r, 500));

    const mine = await submit({ spec: { kind: 'noop' }, selectors: ['b'], account: 'pools' });
    const done = await untilDone(mine, 5000);
    expect(done.status).toBe('succeeded');
    const names = (await api<Array<{ id: string; name: string }>>('GET', '/api/v1/delegates')).body;
    expect(names.find((d) => d.id === done.delegate)?.name).toBe('pool-b');
    expect((await get(deep.body.ids[0]!)).status).toBe('queued');

    await api('POST', `/api/v1/tasks/${busy}/cancel`);
    for (const id of [deep.body.ids[0]!, deep.body.ids[299]!]) expect((await untilDone(id, 30_000)).status).toBe('succeeded');
    const ran = await Promise.all(deep.body.ids.map(async (id) => (await get(id)).delegate));
    expect(new Set(ran.map((d) => names.find((n) => n.id === d)?.name))).toEqual(new Set(['pool-a']));
  });

  it('a delegate token of one account sees nothing of another', async () => {
    const acmeToken = await createDelegateToken(server, 'acme');
    const r = await apiRequest(server.url, 'GET', '/api/v1/tasks/whatever', undefined, { token: acmeToken });
    expect(r.status).toBe(403);
  });
});

describe('delegate loss', () => {
  it('a delegate back within the grace keeps its task; one away past the grace loses it (DelegateLost)', async () => {
    const token = await createDelegateToken(server);
    const d = startDelegate({ url: server.url, token, name: 'flaky', tags: ['flaky'], capacity: 1, env: FAST });
    delegates.push(d);
    await waitFor(async () => ((await connectedNames()).includes('flaky') ? true : undefined), { timeout: 20_000 });
    const id = await submit({ spec: { kind: 'shell', script: 'for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.5; done' }, selectors: ['flaky'] });
    await waitFor(async () => ((await get(id)).status === 'running' ? true : undefined), { timeout: 10_000 });
    // Stop the delegate's process without letting it drain (SIGSTOP), so the socket goes
    // quiet; then resume it within the grace.
    process.kill(d.pid, 'SIGSTOP');
    await new Promise((r) => setTimeout(r, 1000));
    process.kill(d.pid, 'SIGCONT');
    const t = await untilDone(id);
    expect(t.status).toBe('succeeded');
    expect((await logOf(id)).split('\n').filter(Boolean)).toEqual(Array.from({ length: 8 }, (_, i) => `tick ${i + 1}`));

    const id2 = await submit({ spec: { kind: 'shell', script: 'sleep 60' }, selectors: ['flaky'] });
    await waitFor(async () => ((await get(id2)).status === 'running' ? true : undefined), { timeout: 10_000 });
    await d.kill('SIGKILL');
    const lost = await untilDone(id2, 20_000);
    expect(lost.status).toBe('failed');
    expect(lost.result?.error?.kind).toBe('DelegateLost');
  });
});
