/**
 * The store runs on SQLite and on PostgreSQL with the same queries: migrations, the
 * bootstrap, tokens, the task claim (never two holders), idempotent log chunks. The
 * PostgreSQL half uses the private server the test run starts; it skips loudly where no
 * PostgreSQL binaries exist and fails under CI=true.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore, bootstrap, createToken, findToken, revokeToken, claimTasks, nextSequence, type Store } from '@ferry/control-plane';
import { describeWithPg, createDatabase, dropDatabase } from './support/postgres.js';
import { useProcessGuard, startServer, startDelegate, createDelegateToken, waitFor, apiRequest } from './support/processes.js';

useProcessGuard();

function storeSuite(name: string, open: () => Promise<{ store: Store; dataDir: string; cleanup: () => Promise<void> }>) {
  describe(`store on ${name}`, () => {
    let s: { store: Store; dataDir: string; cleanup: () => Promise<void> };
    afterAll(async () => {
      await s?.store.close();
      await s?.cleanup();
    });

    it('migrates, bootstraps once, and keeps tokens hashed', async () => {
      s = await open();
      const { store } = s;
      await store.migrate();
      await store.migrate(); // idempotent
      expect(await store.ping()).toBe(true);
      const first = await bootstrap(store, s.dataDir, Date.now());
      expect(first.adminToken).toMatch(/^fryu_/);
      const again = await bootstrap(store, s.dataDir, Date.now());
      expect(again.adminToken).toBeUndefined();
      const rings = await store.db.selectFrom('rings').select('name').orderBy('ord').execute();
      expect(rings.map((r) => r.name)).toEqual(['ring0', 'ring1', 'ring2', 'ring3']);
      const t = await findToken(store.db, first.adminToken!);
      expect(t).toMatchObject({ kind: 'user', role: 'admin', account: 'default', revoked: false });
      const row = await store.db.selectFrom('tokens').select('hash').where('id', '=', t!.id).executeTakeFirstOrThrow();
      expect(row.hash).not.toContain(first.adminToken!);
      expect(row.hash).toMatch(/^[0-9a-f]{64}$/);
      const acc = await store.db.selectFrom('accounts').select('id').where('name', '=', 'default').executeTakeFirstOrThrow();
      const d = await createToken(store.db, { accountId: acc.id, kind: 'delegate', name: 'd', role: null, scopes: {}, now: Date.now() });
      await revokeToken(store.db, d.id, Date.now());
      expect((await findToken(store.db, d.token))?.revoked).toBe(true);
      expect(await findToken(store.db, `${d.token}x`)).toBeUndefined();
    });

    it('claims a queued task for one holder only, even when claims race', async () => {
      const { store } = s;
      const acc = await store.db.selectFrom('accounts').select('id').where('name', '=', 'default').executeTakeFirstOrThrow();
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) {
        const id = `claim-${name}-${i}`;
        ids.push(id);
        const seq = await nextSequence(store.db, 'task_queue');
        await store.db.insertInto('tasks').values({
          id, account_id: acc.id, execution_id: null, kind: 'noop', spec: '{"kind":"noop"}', env: '{}', secret_names: '[]', selectors: '[]', capabilities: '["noop"]',
          priority: 0, status: 'queued', attempt: 1, delegate_id: null, delegate_version: null, lease_expires_at: null, queued_at: Date.now(), queue_seq: seq,
          assigned_at: null, started_at: null, finished_at: null, timeout_ms: null, queue_timeout_ms: 3600000, cancel_requested: 0, cancel_reason: null, result: null, last_seq: 0, error_kind: null,
        }).execute();
      }
      const now = Date.now();
      const claim = (delegateId: string) => store.db.transaction().execute((trx) => claimTasks(trx, store.dialect, ids, { delegateId, version: '1', leaseExpiresAt: now + 1000, now }));
      const results = await Promise.all([claim('a'), claim('b'), claim('c'), claim('d')]);
      const all = results.flat().map((r) => r.id);
      expect(all.sort()).toEqual([...ids].sort()); // every task claimed once
      expect(new Set(all).size).toBe(ids.length);
      const holders = await store.db.selectFrom('tasks').select(['delegate_id']).where('id', 'in', ids).execute();
      expect(holders.every((h) => h.delegate_id !== null)).toBe(true);
      expect(await claim('e')).toEqual([]);
    });

    it('stores a log chunk once: a resend is harmless', async () => {
      const { store } = s;
      const row = { task_id: `claim-${name}-0`, seq: 1, attempt: 1, lines: '[[0,1,"a"]]', line_count: 1, created_at: Date.now() };
      for (let i = 0; i < 3; i++) {
        await store.db.insertInto('log_chunks').values(row).onConflict((oc) => oc.columns(['task_id', 'seq']).doNothing()).execute();
      }
      const n = await store.db.selectFrom('log_chunks').select((eb) => eb.fn.countAll<number>().as('n')).where('task_id', '=', row.task_id).executeTakeFirstOrThrow();
      expect(Number(n.n)).toBe(1);
    });
  });
}

storeSuite('SQLite', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'ferry-store-'));
  return { store: openStore(`sqlite:${join(dataDir, 'ferry.db')}`), dataDir, cleanup: async () => undefined };
});

describeWithPg('PostgreSQL', () => {
  storeSuite('PostgreSQL', async () => {
    const url = await createDatabase({ prefix: 'store' });
    const dataDir = mkdtempSync(join(tmpdir(), 'ferry-store-pg-'));
    return { store: openStore(url), dataDir, cleanup: () => dropDatabase(url) };
  });

  it('a ferry server on PostgreSQL runs a delegate task end to end', async () => {
    const url = await createDatabase({ prefix: 'e2e' });
    const server = await startServer({ databaseUrl: url });
    try {
      const token = await createDelegateToken(server);
      const d = startDelegate({ url: server.url, token, name: 'pg-runner' });
      const t = await apiRequest<{ id: string }>(server.url, 'POST', '/api/v1/tasks', { spec: { kind: 'shell', script: 'echo hello from postgres' } }, { token: server.adminToken });
      const done = await waitFor(async () => {
        const r = await apiRequest<{ status: string }>(server.url, 'GET', `/api/v1/tasks/${t.body.id}`, undefined, { token: server.adminToken });
        return r.body.status === 'succeeded' ? r.body : undefined;
      }, { timeout: 30_000 });
      expect(done.status).toBe('succeeded');
      const log = await apiRequest<string>(server.url, 'GET', `/api/v1/tasks/${t.body.id}/logs`, undefined, { token: server.adminToken });
      expect(log.text).toBe('hello from postgres\n');
      await d.stop();
    } finally {
      await server.stop();
      await dropDatabase(url);
    }
  });
});
