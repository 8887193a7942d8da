/**
 * Delegates that connect, authenticate, stay connected and come back by themselves
 * (issue: foundations). Real `ferry server` and `ferry-delegate` processes, real sockets.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  useProcessGuard, startServer, startDelegate, createDelegateToken, ferryCli, waitFor, apiRequest,
  type FerryServer, type FerryDelegate,
} from './support/processes.js';
import { connectProtocol, UpgradeRefusedError } from './support/protocol-client.js';
import { CloseCode } from '@ferry/shared';

useProcessGuard();

interface DelegateJson {
  id: string; name: string; account: string; version: string; ring: string; tags: string[]; capabilities: string[];
  capacity: number; running: number; connected: boolean; lastSeenAt: string; upgrade: unknown;
}

const FAST_DELEGATE = { FERRY_RECONNECT_BASE: '100ms', FERRY_RECONNECT_MAX: '1s' };

async function delegates(server: FerryServer): Promise<DelegateJson[]> {
  const r = await ferryCli(['delegates', '--json'], { url: server.url, token: server.adminToken });
  return r.json<DelegateJson[]>();
}

describe('delegates stay connected and come back', () => {
  let server: FerryServer;
  let token: string;
  let d1: FerryDelegate;

  beforeAll(async () => {
    server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '500ms' } });
    token = await createDelegateToken(server);
  });
  afterAll(async () => {
    await d1?.stop().catch(() => undefined);
    await server?.stop();
  });

  it('connects and registers with the fields of the contract', async () => {
    d1 = startDelegate({ url: server.url, token, name: 'alpha', tags: ['linux', 'blue'], capacity: 3, env: FAST_DELEGATE });
    const [d] = await waitFor(async () => {
      const list = await delegates(server);
      return list.length === 1 && list[0]!.connected ? list : undefined;
    }, { timeout: 20_000, message: 'delegate alpha never connected' });
    expect(d).toMatchObject({ name: 'alpha', account: 'default', ring: 'ring0', capacity: 3, running: 0, connected: true, upgrade: null });
    expect(d!.tags).toEqual(['linux', 'blue']);
    expect(d!.capabilities).toEqual(expect.arrayContaining(['shell', 'http', 'noop', 'verify']));
    expect(d!.version).toMatch(/^\d+\.\d+\.\d+/);
    const one = await apiRequest<DelegateJson>(server.url, 'GET', `/api/v1/delegates/${d!.id}`, undefined, { token: server.adminToken });
    expect(one.status).toBe(200);
    expect(one.body.id).toBe(d!.id);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^ferry_delegates_connected 1$/m);
    expect(metrics).toMatch(/ferry_frames_in_total\{type="hello"\} 1/);
  });

  it('kill -9 of a delegate shows it disconnected; a restart is the same delegate, one entry', async () => {
    const [before] = await delegates(server);
    await d1.kill('SIGKILL');
    await waitFor(async () => ((await delegates(server))[0]!.connected ? undefined : true), { timeout: 10_000, message: 'killed delegate still shown connected' });
    await d1.restart();
    const list = await waitFor(async () => {
      const l = await delegates(server);
      return l[0]!.connected ? l : undefined;
    }, { timeout: 20_000, message: 'restarted delegate did not reconnect' });
    expect(list).toHaveLength(1);
    expect(list[0]!.id).toBe(before!.id);
  });

  it('kill -9 of the server: every delegate reconnects by itself to the restarted server', async () => {
    const d2 = startDelegate({ url: server.url, token, name: 'beta', env: FAST_DELEGATE });
    await waitFor(async () => ((await delegates(server)).filter((d) => d.connected).length === 2 ? true : undefined), { timeout: 20_000 });
    const ids = (await delegates(server)).map((d) => d.id).sort();
    await server.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 1500));
    await server.restart();
    const back = await waitFor(async () => {
      const l = await delegates(server);
      return l.filter((d) => d.connected).length === 2 ? l : undefined;
    }, { timeout: 30_000, message: 'delegates did not come back after the server restart' });
    expect(back.map((d) => d.id).sort()).toEqual(ids);
    await d2.stop();
  });

  it('SIGTERM drains a delegate and it exits 0', async () => {
    const d3 = startDelegate({ url: server.url, token, name: 'gamma', env: FAST_DELEGATE });
    await waitFor(async () => ((await delegates(server)).find((d) => d.name === 'gamma')?.connected ? true : undefined), { timeout: 20_000 });
    const exit = await d3.stop();
    expect(exit.code).toBe(0);
    await waitFor(async () => ((await delegates(server)).find((d) => d.name === 'gamma')?.connected === false ? true : undefined), { timeout: 10_000 });
  });
});

describe('tokens', () => {
  let server: FerryServer;
  beforeAll(async () => {
    server = await startServer({ env: { FERRY_HEARTBEAT_INTERVAL: '500ms' } });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('are stored hashed, shown once, and scoped to one account and kind', async () => {
    const created = await ferryCli(['token', 'create', '--kind', 'user', '--name', 'ci-bot', '--role', 'deployer', '--scope', 'environmentType=preproduction', '--json'], { url: server.url, token: server.adminToken });
    const t = created.json<{ id: string; kind: string; name: string; account: string; role: string; token: string }>();
    expect(t).toMatchObject({ kind: 'user', name: 'ci-bot', account: 'default', role: 'deployer' });
    expect(t.token.length).toBeGreaterThanOrEqual(43); // 256 bits, base64url
    const list = (await ferryCli(['token', 'list', '--json'], { url: server.url, token: server.adminToken })).json<Array<Record<string, unknown>>>();
    const row = list.find((x) => x.id === t.id)!;
    expect(row).toMatchObject({ revoked: false, name: 'ci-bot' });
    expect(row).not.toHaveProperty('token');
    // The database holds only a hash: the secret is nowhere in the file.
    const { readFileSync } = await import('node:fs');
    const dbBytes = readFileSync(`${server.dataDir}/ferry.db`).toString('latin1') + readFileSync(`${server.dataDir}/ferry.db-wal`, { flag: 'a+' }).toString('latin1');
    expect(dbBytes.includes(t.token)).toBe(false);
    // A delegate token can do nothing but connect.
    const dtok = await createDelegateToken(server);
    const r = await apiRequest(server.url, 'GET', '/api/v1/delegates', undefined, { token: dtok });
    expect(r.status).toBe(403);
    // A wrong token is 401 with the JSON error.
    const bad = await apiRequest<{ error: { code: string } }>(server.url, 'GET', '/api/v1/delegates', undefined, { token: 'fryu_nope_nope_nope_nope' });
    expect(bad.status).toBe(401);
    expect(bad.body.error.code).toBe('UNAUTHORIZED');
    // A user token cannot open a delegate session.
    await expect(connectProtocol(server.url, server.adminToken)).rejects.toMatchObject({ status: 403 });
  });

  it('revoking a delegate token closes its sockets within a second, and its reconnects are refused', async () => {
    const created = (await ferryCli(['token', 'create', '--kind', 'delegate', '--json'], { url: server.url, token: server.adminToken })).json<{ id: string; token: string }>();
    const d = startDelegate({ url: server.url, token: created.token, name: 'doomed', env: FAST_DELEGATE });
    // A raw session with the same token shows the close code.
    const raw = await connectProtocol(server.url, created.token);
    raw.send({ type: 'hello', protocol: 1, delegateId: 'raw-doomed', name: 'raw', version: '0.0.0', tags: [], capabilities: [], capacity: 0, running: [] });
    await raw.next('welcome');
    await waitFor(async () => ((await delegates(server)).find((x) => x.name === 'doomed')?.connected ? true : undefined), { timeout: 20_000 });
    const t0 = Date.now();
    const rev = await ferryCli(['token', 'revoke', created.id], { url: server.url, token: server.adminToken });
    expect(rev.code).toBe(0);
    const closed = await raw.closed;
    expect(closed.code).toBe(CloseCode.TokenRevoked);
    expect(Date.now() - t0).toBeLessThan(1000);
    await waitFor(async () => ((await delegates(server)).find((x) => x.name === 'doomed')?.connected === false ? true : undefined), { timeout: 2000, message: 'delegate still connected after revocation' });
    // Its reconnects are refused at the upgrade: 401 with the JSON error, no WebSocket.
    const err = await connectProtocol(server.url, created.token).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(UpgradeRefusedError);
    expect((err as UpgradeRefusedError).status).toBe(401);
    expect((err as UpgradeRefusedError).json()).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
    // The delegate keeps trying (slowly) and stays out.
    await new Promise((r) => setTimeout(r, 2500));
    expect((await delegates(server)).find((x) => x.name === 'doomed')?.connected).toBe(false);
    expect(d.output.text()).toMatch(/401|revoked/i);
    await d.stop();
  });
});
