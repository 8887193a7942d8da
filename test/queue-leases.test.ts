/**
 * Assignment leases and refusals, over the real protocol against a real server: a delegate
 * that never accepts loses the task when its lease runs out (it returns to the queue with
 * attempt + 1 and goes to another delegate); a refusal puts it back at once; a task is
 * never held by two delegates; a result for an attempt the server took back is refused.
 * The "delegates" here are protocol clients, so the test controls exactly when (and
 * whether) they accept.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskAssign } from '@ferry/shared';
import { useProcessGuard, startServer, createDelegateToken, waitFor, apiRequest, type FerryServer } from './support/processes.js';
import { connectProtocol, helloFrame, type ProtocolClient } from './support/protocol-client.js';

useProcessGuard();

interface TaskView { id: string; status: string; delegate: string | null; attempt?: number; queue: { reason: string; position: number } | null }

let server: FerryServer;
let token: string;
const clients: ProtocolClient[] = [];
const idOf = new Map<string, string>();
const api = <T>(method: string, path: string, body?: unknown) => apiRequest<T>(server.url, method, path, body, { token: server.adminToken });
const get = async (id: string) => (await api<TaskView>('GET', `/api/v1/tasks/${id}`)).body;

async function delegate(name: string, tag: string): Promise<ProtocolClient> {
  const c = await connectProtocol(server.url, token);
  clients.push(c);
  const hello = helloFrame({ name, tags: [tag], capabilities: ['noop'], capacity: 1 });
  idOf.set(name, hello.delegateId);
  c.send(hello);
  await c.next('welcome');
  return c;
}

async function submit(tag: string): Promise<string> {
  const r = await api<{ id: string }>('POST', '/api/v1/tasks', { spec: { kind: 'noop' }, selectors: [tag] });
  expect(r.status, r.text).toBe(201);
  return r.body.id;
}

beforeAll(async () => {
  server = await startServer({ env: { FERRY_LEASE: '1500ms' } });
  token = await createDelegateToken(server);
});
afterAll(async () => {
  for (const c of clients) c.ws.terminate();
  await server?.stop();
});

describe('assignment leases', () => {
  it('a delegate that never accepts loses the task when the lease runs out; it goes to another one with attempt + 1', async () => {
    const silent = await delegate('silent', 'lease');
    const first = await submit('lease');
    const a1 = await silent.next('task.assign');
    expect(a1).toMatchObject({ taskId: first, attempt: 1, leaseMs: 1500 });
    expect((await get(first)).status).toBe('assigned');

    // a second delegate joins while the first sits on the assignment: nothing is assigned twice
    const prompt = await delegate('prompt', 'lease');
    await new Promise((r) => setTimeout(r, 500));
    expect(prompt.received.filter((f) => f.type === 'task.assign')).toHaveLength(0);

    // the lease runs out: back in the queue, then assigned again — attempt 2 — to a free delegate
    const a2 = await prompt.next('task.assign', 10_000) as TaskAssign;
    expect(a2).toMatchObject({ taskId: first, attempt: 2 });
    prompt.send({ type: 'task.accept', taskId: first, attempt: 2 });
    await waitFor(async () => ((await get(first)).status === 'running' ? true : undefined), { timeout: 5000 });

    // the silent delegate wakes up late: its accept and result for attempt 1 change nothing
    silent.send({ type: 'task.accept', taskId: first, attempt: 1 });
    silent.send({ type: 'task.result', taskId: first, attempt: 1, seq: 1, status: 'Succeeded', exitCode: 0, outputs: {}, startedAt: Date.now(), finishedAt: Date.now() });
    const late = await silent.next('log.ack');
    expect(late).toMatchObject({ taskId: first, done: true });
    const view = await get(first);
    expect(view.status).toBe('running');
    expect(view.delegate).toBe(idOf.get('prompt'));

    prompt.send({ type: 'task.result', taskId: first, attempt: 2, seq: 1, status: 'Succeeded', exitCode: 0, outputs: {}, startedAt: Date.now(), finishedAt: Date.now() });
    expect(await prompt.next('log.ack')).toMatchObject({ taskId: first, attempt: 2, seq: 1, done: true });
    await waitFor(async () => ((await get(first)).status === 'succeeded' ? true : undefined), { timeout: 5000 });
  });

  it('a refused assignment goes back to the queue at once and to another delegate', async () => {
    const refuser = await delegate('refuser', 'reject');
    const id = await submit('reject');
    const a = await refuser.next('task.assign');
    const taker = await delegate('taker', 'reject');
    refuser.send({ type: 'task.reject', taskId: id, attempt: a.attempt, reason: 'capacity', message: 'busy' });
    const again = await taker.next('task.assign', 3000);
    expect(again).toMatchObject({ taskId: id, attempt: a.attempt + 1 });
    // well inside the lease: the refusal, not the lease, sent it on
    expect(refuser.received.filter((f) => f.type === 'task.assign')).toHaveLength(1);
  });
});
