/**
 * Scale-out: two `ferry server` processes share one PostgreSQL database. A delegate holds
 * a socket to server A; a task queued through server B is dispatched at once (B's NOTIFY
 * wakes A), a cancel sent to B reaches the delegate on A, and a token revoked through B
 * cuts the delegate's socket on A. A release published through one server is downloaded
 * from the other.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CloseCode } from '@ferry/shared';
import { describeWithPg, createDatabase, dropDatabase } from './support/postgres.js';
import { useProcessGuard, startServer, startDelegate, waitFor, apiRequest, ferryCli } from './support/processes.js';
import { connectProtocol } from './support/protocol-client.js';
import { buildBundle } from './rings-helpers.js';

useProcessGuard();

describeWithPg('two servers on one PostgreSQL database', () => {
  it('dispatch, cancel and revocation work whichever server the user talks to', async () => {
    const db = await createDatabase({ prefix: 'scale' });
    const a = await startServer({ databaseUrl: db });
    const b = await startServer({ databaseUrl: db, adminToken: a.adminToken });
    try {
      const tok = (await ferryCli(['token', 'create', '--kind', 'delegate', '--json'], { url: b.url, token: a.adminToken })).json<{ id: string; token: string }>();
      const d = startDelegate({ url: a.url, token: tok.token, name: 'on-a', capacity: 2 });
      await waitFor(async () => {
        const l = await apiRequest<Array<{ connected: boolean }>>(b.url, 'GET', '/api/v1/delegates', undefined, { token: a.adminToken });
        return l.body.some((x) => x.connected) ? true : undefined;
      }, { timeout: 20_000 });

      const t0 = Date.now();
      const quick = await apiRequest<{ id: string }>(b.url, 'POST', '/api/v1/tasks', { spec: { kind: 'shell', script: 'echo via-b' } }, { token: a.adminToken });
      const done = await waitFor(async () => {
        const r = await apiRequest<{ status: string }>(b.url, 'GET', `/api/v1/tasks/${quick.body.id}`, undefined, { token: a.adminToken });
        return r.body.status === 'succeeded' ? r.body : undefined;
      }, { timeout: 10_000, interval: 50 });
      expect(done.status).toBe('succeeded');
      expect(Date.now() - t0).toBeLessThan(5000); // pushed, not found by a slow poll

      const slow = await apiRequest<{ id: string }>(b.url, 'POST', '/api/v1/tasks', { spec: { kind: 'shell', script: 'sleep 120' } }, { token: a.adminToken });
      await waitFor(async () => ((await apiRequest<{ status: string }>(b.url, 'GET', `/api/v1/tasks/${slow.body.id}`, undefined, { token: a.adminToken })).body.status === 'running' ? true : undefined), { timeout: 10_000 });
      const c = await apiRequest(b.url, 'POST', `/api/v1/tasks/${slow.body.id}/cancel`, undefined, { token: a.adminToken });
      expect(c.status).toBe(200);
      const canceled = await waitFor(async () => {
        const r = await apiRequest<{ status: string }>(b.url, 'GET', `/api/v1/tasks/${slow.body.id}`, undefined, { token: a.adminToken });
        return r.body.status === 'canceled' ? r.body : undefined;
      }, { timeout: 15_000 });
      expect(canceled.status).toBe('canceled');

      // A raw session on A, revoked through B, is closed with the revoked code.
      const raw = await connectProtocol(a.url, tok.token);
      raw.send({ type: 'hello', protocol: 1, delegateId: 'raw-scale', name: 'raw', version: '0.0.0', tags: [], capabilities: [], capacity: 0, running: [] });
      await raw.next('welcome');
      const rev = await ferryCli(['token', 'revoke', tok.id], { url: b.url, token: a.adminToken });
      expect(rev.code).toBe(0);
      expect((await raw.closed).code).toBe(CloseCode.TokenRevoked);
      await d.stop();
    } finally {
      await b.stop();
      await a.stop();
      await dropDatabase(db);
    }
  });

  it('a release published through one server is served by the other, byte for byte', async () => {
    const db = await createDatabase({ prefix: 'scalerel' });
    const a = await startServer({ databaseUrl: db });
    const b = await startServer({ databaseUrl: db, adminToken: a.adminToken });
    try {
      const file = buildBundle('7.7.7-scale');
      const pub = await ferryCli(['release', 'publish', file, '--json'], { url: a.url, token: a.adminToken });
      expect(pub.code, pub.stderr).toBe(0);
      const { sha256 } = pub.json<{ sha256: string }>();
      // Servers on separate machines: B has no access to A's data dir, and A loses its copy.
      rmSync(join(a.dataDir, 'releases'), { recursive: true, force: true });
      for (const server of [b, b, a]) { // from the database, then from B's cached copy; A from the database again
        const r = await fetch(`${server.url}/api/v1/releases/7.7.7-scale/bundle`, { headers: { authorization: `Bearer ${a.adminToken}` } });
        expect(r.status).toBe(200);
        expect(r.headers.get('x-ferry-sha256')).toBe(sha256);
        expect(Buffer.from(await r.arrayBuffer()).equals(readFileSync(file))).toBe(true);
      }
    } finally {
      await b.stop();
      await a.stop();
      await dropDatabase(db);
    }
  });
});
