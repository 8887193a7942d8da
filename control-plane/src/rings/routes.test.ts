import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { buildServer } from '../http/app.js';
import { TokenCache } from '../http/auth.js';
import { loadServerConfig } from '../config.js';
import { createMetrics } from '../metrics.js';
import { SecretBox } from '../store/secrets.js';
import { createToken } from '../store/accounts.js';
import type { AppContext } from '../context.js';
import { fixture, makeBundle, type Fixture } from './test-support.js';

describe('ring and release routes', () => {
  let f: Fixture;
  let app: FastifyInstance;
  let admin: string;
  let viewer: string;
  let delegate: string;
  let otherDelegate: string;

  beforeEach(async () => {
    f = await fixture();
    const now = f.clock.now();
    admin = `Bearer ${(await createToken(f.store.db, { accountId: f.defaultAccount, kind: 'user', name: 'root', role: 'admin', scopes: {}, now })).token}`;
    const acme = await f.account('acme', 'ring0');
    const beta = await f.account('beta', 'ring1');
    viewer = `Bearer ${(await createToken(f.store.db, { accountId: acme, kind: 'user', name: 'eve', role: 'viewer', scopes: {}, now })).token}`;
    delegate = `Bearer ${(await createToken(f.store.db, { accountId: acme, kind: 'delegate', name: 'd', role: null, scopes: {}, now })).token}`;
    otherDelegate = `Bearer ${(await createToken(f.store.db, { accountId: beta, kind: 'delegate', name: 'd2', role: null, scopes: {}, now })).token}`;
    const config = loadServerConfig({ FERRY_DATA_DIR: f.dir, FERRY_DATABASE_URL: 'sqlite::memory:', FERRY_LOG_LEVEL: 'silent' });
    const ctx = {
      config, store: f.store, clock: f.clock, logger: pino({ level: 'silent' }), metrics: createMetrics(),
      tokens: new TokenCache(f.store.db, 0), secretBox: SecretBox.open(f.dir),
      gateway: { sessions: () => f.sessions, onAccountRingChanged: () => undefined },
      scheduler: {}, logs: {}, engine: null, rings: null, shuttingDown: false,
    } as unknown as AppContext;
    app = await buildServer(ctx);
  });
  afterEach(async () => {
    await app.close();
    await f.close();
  });

  const call = (method: 'GET' | 'POST' | 'PUT', url: string, auth: string, body?: unknown) =>
    app.inject({
      method, url, headers: { authorization: auth, ...(Buffer.isBuffer(body) ? { 'content-type': 'application/gzip' } : {}) },
      ...(body === undefined ? {} : { payload: Buffer.isBuffer(body) ? body : (body as object) }),
    });

  it('publishes, lists and serves bundles with tenant isolation', async () => {
    const bundle = await makeBundle('2.0.0');
    expect((await call('POST', '/api/v1/releases', viewer, bundle)).statusCode).toBe(403);
    const pub = await call('POST', '/api/v1/releases', admin, bundle);
    expect(pub.statusCode).toBe(201);
    expect(pub.json()).toMatchObject({ version: '2.0.0', protocol: 1, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect((await call('POST', '/api/v1/releases', admin, bundle)).statusCode).toBe(200);
    const bad = await call('POST', '/api/v1/releases', admin, await makeBundle('2.0.1', { sha256: 'b'.repeat(64) }));
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.code).toBe('VALIDATION_FAILED');
    const clash = await call('POST', '/api/v1/releases', admin, await makeBundle('2.0.0', { worker: 'changed' }));
    expect(clash.statusCode).toBe(409);
    expect(clash.json().error.code).toBe('ALREADY_EXISTS');

    const list = await call('GET', '/api/v1/releases', viewer);
    expect(list.json()).toEqual([expect.objectContaining({ version: '2.0.0', sha256: pub.json().sha256, protocol: 1, publishedAt: expect.any(String) })]);

    // users download any release; a delegate only its ring's current or previous version
    const dl = await call('GET', '/api/v1/releases/2.0.0/bundle', viewer);
    expect(dl.statusCode).toBe(200);
    expect(dl.headers['content-type']).toBe('application/gzip');
    expect(dl.rawPayload.equals(bundle)).toBe(true);
    expect((await call('GET', '/api/v1/releases/2.0.0/bundle', delegate)).statusCode).toBe(403);
    expect((await call('PUT', '/api/v1/rings/ring0', admin, { version: '2.0.0' })).statusCode).toBe(200);
    expect((await call('GET', '/api/v1/releases/2.0.0/bundle', delegate)).statusCode).toBe(200);
    expect((await call('GET', '/api/v1/releases/2.0.0/bundle', otherDelegate)).statusCode).toBe(403);
    expect((await call('GET', '/api/v1/releases', delegate)).statusCode).toBe(403);
    expect((await call('GET', '/api/v1/releases/9.9.9/bundle', viewer)).statusCode).toBe(404);
  });

  it('serves ring routes in the contract shapes', async () => {
    await call('POST', '/api/v1/releases', admin, await makeBundle('1.0.0'));
    await call('POST', '/api/v1/releases', admin, await makeBundle('1.1.0'));
    const list = await call('GET', '/api/v1/rings', viewer);
    expect(list.statusCode).toBe(200);
    expect(list.json()[0]).toEqual({
      name: 'ring0', order: 0, version: null, previousVersion: null, paused: false, accounts: ['acme', 'default'],
      delegates: { total: 0, onTarget: 0, other: 0, upgrading: 0, failed: 0 }, rollout: null,
    });
    expect((await call('PUT', '/api/v1/rings/ring0', viewer, { version: '1.0.0' })).statusCode).toBe(403);
    expect((await call('PUT', '/api/v1/rings/ring0', admin, { version: '3.0.0' })).json().error.code).toBe('NOT_FOUND');
    expect((await call('PUT', '/api/v1/rings/nope', admin, { version: '1.0.0' })).statusCode).toBe(404);
    expect((await call('PUT', '/api/v1/rings/ring0', admin, { version: '1.0.0' })).json()).toMatchObject({ name: 'ring0', version: '1.0.0' });

    const ro = await call('POST', '/api/v1/rings/rollout', admin, { version: '1.1.0', soak: '5m' });
    expect(ro.statusCode).toBe(200);
    expect(ro.json()[0].rollout).toMatchObject({ version: '1.1.0', state: 'soaking', since: expect.any(String), soak: 300_000 });
    expect((await call('POST', '/api/v1/rings/rollout', admin, { version: '1.1.0', soak: 'soon' })).statusCode).toBe(400);
    expect((await call('POST', '/api/v1/rings/rollout', admin, { version: '1.1.0' })).json().error.code).toBe('WRONG_STATE');

    const paused = await call('POST', '/api/v1/rings/ring0/pause', admin);
    expect(paused.json()).toMatchObject({ paused: true, rollout: { state: 'paused' } });
    expect((await call('POST', '/api/v1/rings/ring1/resume', admin)).statusCode).toBe(409);
    expect((await call('POST', '/api/v1/rings/ring0/resume', admin)).json().rollout.state).toBe('soaking');

    const rb = await call('POST', '/api/v1/rings/ring0/rollback', admin);
    expect(rb.json()).toMatchObject({ version: '1.0.0', rollout: { state: 'rolledBack' } });
    expect((await call('POST', '/api/v1/rings/ring0/rollback', admin)).json().error.code).toBe('WRONG_STATE');
    expect((await call('POST', '/api/v1/rings/rollback-all', admin)).statusCode).toBe(409);

    const h = await call('GET', '/api/v1/rings/ring0/history', viewer);
    expect(h.json()[0]).toEqual({ at: expect.any(String), from: '1.1.0', to: '1.0.0', by: 'root', reason: expect.any(String), evidence: null });
    expect(h.json().at(-1)).toMatchObject({ from: null, to: '1.0.0', by: 'root' });
    expect((await call('GET', '/api/v1/rings/ring0', viewer)).json().name).toBe('ring0');
    expect((await call('GET', '/api/v1/rings', delegate)).statusCode).toBe(403);
  });
});
