import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FerryError } from '@ferry/shared';
import { readBundle } from './releases.js';
import { fixture, makeBundle, type Fixture } from './test-support.js';
import type { RingService } from './service.js';

const code = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
  } catch (err) {
    if (err instanceof FerryError) return err.code;
    throw err;
  }
  return 'OK';
};

describe('releases', () => {
  let f: Fixture;
  beforeEach(async () => { f = await fixture(); });
  afterEach(async () => { await f.close(); });

  it('publishes a valid bundle into the data dir and lists it', async () => {
    const rings = f.service();
    const buf = await makeBundle('1.2.0');
    const r = await rings.releases.publish(buf, 'admin', f.clock.now());
    expect(r.created).toBe(true);
    expect(r.release).toMatchObject({ version: '1.2.0', protocol: 1, publishedBy: 'admin' });
    const b = await readBundle(buf);
    expect(r.release.sha256).toBe(b.workerSha256);
    expect(r.release.bundleSha256).toBe(b.bundleSha256);
    const file = path.join(f.dir, 'releases', 'ferry-delegate-1.2.0.tgz');
    expect(fs.readFileSync(file).equals(buf)).toBe(true);
    expect((await rings.releases.list()).map((x) => x.version)).toEqual(['1.2.0']);
  });

  it('refuses bad bundles with VALIDATION_FAILED and a clear message', async () => {
    const rel = f.service().releases;
    const now = f.clock.now();
    const msg = async (buf: Buffer) => rel.publish(buf, 'admin', now).then(() => 'published', (e: FerryError) => `${e.code}: ${e.message}`);
    expect(await msg(await makeBundle('1.0.0', { sha256: 'a'.repeat(64) }))).toMatch(/^VALIDATION_FAILED: sha256 of worker.mjs is [0-9a-f]{64}, but manifest.json says a{64}$/);
    expect(await msg(await makeBundle('1.0.0', { manifest: null }))).toMatch(/^VALIDATION_FAILED: the bundle has no manifest.json/);
    expect(await msg(await makeBundle('1.0.0', { manifest: { version: '1.0.0', protocol: 1, entry: 'nope.mjs', sha256: 'a'.repeat(64), builtAt: 'x' } })))
      .toMatch(/^VALIDATION_FAILED: the worker nope.mjs named by manifest.json is not at the bundle's root/);
    expect(await msg(await makeBundle('1.0.0', { manifest: { version: '1.0.0', protocol: 1, entry: 'worker.mjs' } }))).toMatch(/^VALIDATION_FAILED: manifest.json/);
    expect(await msg(Buffer.from('not a tarball'.repeat(100)))).toMatch(/^VALIDATION_FAILED: the body is not a gzipped tar/);
    expect(await msg(Buffer.alloc(0))).toMatch(/^VALIDATION_FAILED: the body is empty/);
    expect(await rel.list()).toEqual([]);
  });

  it('accepts the same version again only with the same worker', async () => {
    const rel = f.service().releases;
    await rel.publish(await makeBundle('1.0.0'), 'admin', f.clock.now());
    const again = await rel.publish(await makeBundle('1.0.0'), 'admin', f.clock.now());
    expect(again.created).toBe(false);
    expect(await code(rel.publish(await makeBundle('1.0.0', { worker: 'other' }), 'admin', f.clock.now()))).toBe('ALREADY_EXISTS');
  });
});

describe('rings', () => {
  let f: Fixture;
  let rings: RingService;
  let acme: string;
  let beta: string;

  beforeEach(async () => {
    f = await fixture({ soakMs: 60_000, minSample: 20, alpha: 0.01 });
    rings = f.service();
    acme = await f.account('acme', 'ring0');
    beta = await f.account('beta', 'ring1');
    for (const v of ['1.0.0', '1.1.0']) await rings.releases.publish(await makeBundle(v), 'admin', f.clock.now());
  });
  afterEach(async () => {
    await rings.stop();
    await f.close();
  });

  it('lists rings in the contract shape', async () => {
    const list = await rings.list();
    expect(list.map((r) => r.name)).toEqual(['ring0', 'ring1', 'ring2', 'ring3']);
    expect(list[0]).toMatchObject({
      name: 'ring0', order: 0, version: null, previousVersion: null, accounts: ['acme', 'default'],
      delegates: { total: 0, onTarget: 0, other: 0, upgrading: 0, failed: 0 }, rollout: null,
    });
    expect(list[1]!.accounts).toEqual(['beta']);
  });

  it('sets a version, keeps history, and offers upgrades to the ring\'s delegates only', async () => {
    const d1 = await f.delegate('d1', f.defaultAccount, '0.9.0');
    const d3 = await f.delegate('d3', beta, '0.9.0');
    expect(await code(rings.set('ring0', '9.9.9', 'admin'))).toBe('NOT_FOUND');
    expect(await code(rings.set('ring9', '1.0.0', 'admin'))).toBe('NOT_FOUND');
    const v = await rings.set('ring0', '1.0.0', 'admin');
    expect(v).toMatchObject({ version: '1.0.0', previousVersion: null, delegates: { total: 1, onTarget: 0, other: 1 } });
    expect(d1.sent).toEqual([{ type: 'upgrade', version: '1.0.0', sha256: expect.stringMatching(/^[0-9a-f]{64}$/), url: '/api/v1/releases/1.0.0/bundle' }]);
    expect(d3.sent).toEqual([]);
    await rings.set('ring0', '1.1.0', 'ops');
    const h = await rings.history('ring0');
    expect(h.map((x) => [x.from, x.to, x.by])).toEqual([['1.0.0', '1.1.0', 'ops'], [null, '1.0.0', 'admin']]);
    expect(h[0]!.reason).toContain('ops');
    expect((await rings.get('ring0')).previousVersion).toBe('1.0.0');
  });

  it('does not offer a version the delegate failed, nor to a session on probation, until the target changes again', async () => {
    await rings.set('ring0', '1.1.0', 'admin');
    await f.delegate('d1', f.defaultAccount, '1.0.0', { failed: ['1.1.0'], upgrade: { version: '1.1.0', state: 'failed', error: 'self-check http failed' } });
    const s = f.sessions[0]!;
    await rings.onSessionOpened(s);
    expect(s.sent).toEqual([]);
    expect((await rings.get('ring0')).delegates).toMatchObject({ total: 1, failed: 1, onTarget: 0 });

    const probation = await f.delegate('d2', acme, '1.0.0');
    probation.probation = true;
    await rings.onSessionOpened(probation);
    expect(probation.sent).toEqual([]);

    const told = await f.delegate('d4', acme, '1.0.0');
    told.hello = { failedVersions: ['1.1.0'] };
    await rings.onSessionOpened(told);
    expect(told.sent).toEqual([]);

    // a new target, then 1.1.0 again: failures are forgotten and 1.1.0 is offered again
    await rings.set('ring0', '1.0.0', 'admin');
    await rings.set('ring0', '1.1.0', 'admin');
    expect(s.offers()).toEqual(['1.1.0']);
    expect(told.offers()).toEqual(['1.1.0']);
    expect(probation.sent).toEqual([]);
  });

  it('offers the new ring\'s target when an account moves', async () => {
    await rings.set('ring1', '1.1.0', 'admin');
    const s = await f.delegate('d1', acme, '1.0.0');
    await f.store.db.updateTable('accounts').set({ ring: 'ring1' }).where('id', '=', acme).execute();
    await rings.onAccountRing(acme);
    expect(s.offers()).toEqual(['1.1.0']);
  });

  it('refuses actions in the wrong state with WRONG_STATE', async () => {
    expect(await code(rings.rollback('ring0', 'admin'))).toBe('WRONG_STATE');
    expect(await code(rings.rollbackAll('admin'))).toBe('WRONG_STATE');
    expect(await code(rings.resume('ring0', 'admin'))).toBe('WRONG_STATE');
    await rings.pause('ring0', 'admin');
    expect(await code(rings.pause('ring0', 'admin'))).toBe('WRONG_STATE');
    await rings.resume('ring0', 'admin');
    await rings.rollout('1.1.0', 60_000, 'admin');
    expect(await code(rings.rollout('1.0.0', 60_000, 'admin'))).toBe('WRONG_STATE');
    expect(await code(rings.rollout('7.0.0', 60_000, 'admin'))).toBe('NOT_FOUND');
  });

  it('rolls a ring back to its previous version and ends the rollout there', async () => {
    await rings.set('ring0', '1.0.0', 'admin');
    const s = await f.delegate('d1', acme, '1.0.0');
    await rings.rollout('1.1.0', 60_000, 'admin');
    expect(s.offers()).toEqual(['1.1.0']);
    await f.setDelegate('d1', { version: '1.1.0' });
    const v = await rings.rollback('ring0', 'oncall');
    expect(v).toMatchObject({ version: '1.0.0', previousVersion: null, rollout: { version: '1.1.0', state: 'rolledBack' } });
    expect(s.offers()).toEqual(['1.1.0', '1.0.0']);
    expect((await rings.history('ring0'))[0]).toMatchObject({ from: '1.1.0', to: '1.0.0', by: 'oncall' });
    expect(await code(rings.rollback('ring0', 'oncall'))).toBe('WRONG_STATE');
  });

  it('stops a rollout elsewhere when a ring it passed is rolled back by hand', async () => {
    await rings.set('ring0', '1.0.0', 'admin');
    await rings.rollout('1.1.0', 1000, 'admin');
    f.clock.advance(1000);
    await rings.tick();
    expect((await rings.get('ring1')).rollout!.state).toBe('soaking');
    await rings.rollback('ring0', 'oncall');
    expect((await rings.get('ring1')).rollout).toMatchObject({ state: 'halted', reason: expect.stringContaining('oncall rolled ring0 back') });
    f.clock.advance(5000);
    await rings.tick();
    expect((await rings.get('ring2')).version).toBeNull();
  });

  it('rolls every ring with a previous version back', async () => {
    for (const r of ['ring0', 'ring1']) {
      await rings.set(r, '1.0.0', 'admin');
      await rings.set(r, '1.1.0', 'admin');
    }
    const list = await rings.rollbackAll('admin');
    expect(list.map((r) => r.version)).toEqual(['1.0.0', '1.0.0', null, null]);
  });

  it('halts a rollout and rolls the ring back when one task kind regresses', async () => {
    for (const r of ['ring0', 'ring1', 'ring2', 'ring3']) await rings.set(r, '1.0.0', 'admin');
    const d1 = await f.delegate('d1', f.defaultAccount, '1.0.0');
    const d2 = await f.delegate('d2', acme, '1.0.0');
    const d3 = await f.delegate('d3', beta, '1.0.0');
    // earlier history of 1.0.0: irrelevant while there is a concurrent baseline
    await f.tasks(30, { account: beta, kind: 'http', version: '1.0.0', status: 'failed' });
    f.clock.advance(1000);

    const started = await rings.rollout('1.1.0', 60_000, 'admin');
    expect(started[0]).toMatchObject({ version: '1.1.0', previousVersion: '1.0.0', rollout: { version: '1.1.0', state: 'soaking' } });
    expect(started[1]!.rollout).toBeNull();
    expect(d1.offers()).toEqual(['1.1.0']);
    expect(d2.offers()).toEqual(['1.1.0']);
    expect(d3.offers()).toEqual([]);
    await f.setDelegate('d1', { version: '1.1.0' });
    await f.setDelegate('d2', { version: '1.1.0' });

    f.clock.advance(10_000);
    // ring0 on 1.1.0: http fails, shell is fine; lost/canceled tasks are not the version's fault
    await f.tasks(5, { account: f.defaultAccount, kind: 'http', version: '1.1.0', status: 'succeeded' });
    await f.tasks(20, { account: acme, kind: 'http', version: '1.1.0', status: 'failed' });
    await f.tasks(30, { account: acme, kind: 'shell', version: '1.1.0', status: 'succeeded' });
    await f.tasks(15, { account: acme, kind: 'shell', version: '1.1.0', status: 'failed', errorKind: 'DelegateLost' });
    await f.tasks(15, { account: acme, kind: 'shell', version: '1.1.0', status: 'canceled' });
    // ring1 still on 1.0.0 over the same period
    await f.tasks(39, { account: beta, kind: 'http', version: '1.0.0', status: 'succeeded' });
    await f.tasks(1, { account: beta, kind: 'http', version: '1.0.0', status: 'failed' });
    await f.tasks(40, { account: beta, kind: 'shell', version: '1.0.0', status: 'succeeded' });

    const h = await rings.health('ring0', JSON.parse((await f.store.db.selectFrom('rings').select('rollout').where('name', '=', 'ring0').executeTakeFirstOrThrow()).rollout!));
    expect(h.regressed.map((k) => k.kind)).toEqual(['http']);
    expect(h.kinds.find((k) => k.kind === 'shell')).toMatchObject({ verdict: 'healthy', new: { failed: 0, total: 30 } });

    await rings.tick();
    const ring0 = await rings.get('ring0');
    expect(ring0).toMatchObject({ version: '1.0.0', rollout: { version: '1.1.0', state: 'rolledBack' } });
    expect(ring0.rollout!.reason).toMatch(/http/);
    const [last] = await rings.history('ring0');
    expect(last).toMatchObject({ from: '1.1.0', to: '1.0.0', by: 'ferry' });
    expect(last!.evidence).toMatchObject({
      kind: 'http',
      new: { version: '1.1.0', failed: 20, total: 25, rate: 0.8 },
      old: { version: '1.0.0', failed: 1, total: 40, rate: 0.025 },
      baseline: 'window',
      alpha: 0.01,
      others: [],
    });
    expect((last!.evidence as { pValue: number }).pValue).toBeLessThan(1e-10);
    expect(d1.offers()).toEqual(['1.1.0', '1.0.0']);
    expect(d2.offers()).toEqual(['1.1.0', '1.0.0']);
    // the rollout went no further
    const ring1 = await rings.get('ring1');
    expect(ring1).toMatchObject({ version: '1.0.0', rollout: null });
    expect(d3.offers()).toEqual([]);
    // a later check changes nothing
    f.clock.advance(120_000);
    await rings.tick();
    expect((await rings.history('ring0')).length).toBe(3);
  });

  it('does not halt below the minimum sample, and uses the previous version\'s history when it has no tasks in the window', async () => {
    await rings.set('ring0', '1.0.0', 'admin');
    await f.delegate('d1', acme, '1.0.0');
    await f.tasks(100, { account: acme, kind: 'http', version: '1.0.0', status: 'succeeded' });
    f.clock.advance(1000);
    await rings.rollout('1.1.0', 60_000, 'admin');
    await f.setDelegate('d1', { version: '1.1.0' });
    f.clock.advance(1000);
    await f.tasks(19, { account: acme, kind: 'http', version: '1.1.0', status: 'failed' });
    await rings.tick();
    expect((await rings.get('ring0')).rollout!.state).toBe('soaking');
    await f.tasks(1, { account: acme, kind: 'http', version: '1.1.0', status: 'failed' });
    await rings.tick();
    const ring0 = await rings.get('ring0');
    expect(ring0.rollout!.state).toBe('rolledBack');
    expect((await rings.history('ring0'))[0]!.evidence).toMatchObject({ kind: 'http', baseline: 'history', new: { failed: 20, total: 20 }, old: { failed: 0, total: 100 } });
  });

  it('advances ring by ring after each soak, waits for upgrades and paused rings, and survives a restart', async () => {
    for (const r of ['ring0', 'ring1', 'ring2', 'ring3']) await rings.set(r, '1.0.0', 'admin');
    await f.delegate('d1', acme, '1.0.0');
    const d3 = await f.delegate('d3', beta, '1.0.0');
    await rings.rollout('1.1.0', 60_000, 'admin');
    await f.setDelegate('d1', { version: '1.1.0' });
    await f.tasks(30, { account: acme, kind: 'shell', version: '1.1.0', status: 'succeeded' });
    await f.tasks(30, { account: beta, kind: 'shell', version: '1.0.0', status: 'succeeded' });

    f.clock.advance(30_000);
    await rings.tick();
    expect((await rings.get('ring0')).rollout!.state).toBe('soaking');

    // soak over, but a delegate is still upgrading
    const d2 = await f.delegate('d2', acme, '1.0.0', { upgrade: { version: '1.1.0', state: 'draining' } });
    f.clock.advance(31_000);
    await rings.tick();
    let ring0 = await rings.get('ring0');
    expect(ring0.rollout).toMatchObject({ state: 'advancing', reason: expect.stringContaining('1 delegate') });
    expect(ring0.delegates).toMatchObject({ total: 2, onTarget: 1, upgrading: 1 });

    // upgraded, but ring1 is paused
    await rings.pause('ring1', 'admin');
    await f.setDelegate('d2', { version: '1.1.0', upgrade: { version: '1.1.0', state: 'succeeded' } });
    expect(d2.version).toBe('1.1.0');
    await rings.tick();
    expect((await rings.get('ring0')).rollout).toMatchObject({ state: 'advancing', reason: expect.stringContaining('ring1 is paused') });
    expect((await rings.get('ring1')).version).toBe('1.0.0');

    await rings.resume('ring1', 'admin');
    await rings.tick();
    ring0 = await rings.get('ring0');
    expect(ring0.rollout!.state).toBe('completed');
    const ring1 = await rings.get('ring1');
    expect(ring1).toMatchObject({ version: '1.1.0', previousVersion: '1.0.0', rollout: { version: '1.1.0', state: 'soaking' } });
    expect(d3.offers()).toEqual(['1.1.0']);
    expect((await rings.history('ring1'))[0]!.reason).toMatch(/ring0 passed its soak/);

    // a restarted server picks the rollout up from the database
    await rings.stop();
    rings = f.service();
    await f.setDelegate('d3', { version: '1.1.0' });
    for (const expected of ['ring2', 'ring3']) {
      f.clock.advance(60_000);
      await rings.tick();
      expect((await rings.get(expected)).rollout).toMatchObject({ version: '1.1.0', state: 'soaking' });
    }
    f.clock.advance(60_000);
    await rings.tick();
    const all = await rings.list();
    expect(all.map((r) => [r.version, r.rollout?.state])).toEqual([
      ['1.1.0', 'completed'], ['1.1.0', 'completed'], ['1.1.0', 'completed'], ['1.1.0', 'completed'],
    ]);
    // a new rollout may start now
    expect(await code(rings.rollout('1.0.0', 1000, 'admin'))).toBe('OK');
  });

  it('halts when most delegates of a ring fail to upgrade', async () => {
    await rings.set('ring0', '1.0.0', 'admin');
    await f.delegate('d1', acme, '1.0.0');
    await rings.rollout('1.1.0', 60_000, 'admin');
    await f.setDelegate('d1', { failed: ['1.1.0'], upgrade: { version: '1.1.0', state: 'failed', error: 'probation: no hello in time' } });
    f.clock.advance(61_000);
    await rings.tick();
    const ring0 = await rings.get('ring0');
    expect(ring0).toMatchObject({ version: '1.0.0', rollout: { state: 'rolledBack' } });
    expect((await rings.history('ring0'))[0]!.evidence).toMatchObject({ delegates: { failed: 1, total: 1 } });
  });

  it('pauses a soaking rollout and restarts its soak on resume', async () => {
    await rings.rollout('1.1.0', 60_000, 'admin');
    f.clock.advance(50_000);
    expect((await rings.pause('ring0', 'admin')).rollout!.state).toBe('paused');
    f.clock.advance(50_000);
    await rings.tick();
    expect((await rings.get('ring0')).rollout!.state).toBe('paused');
    expect((await rings.resume('ring0', 'admin')).rollout!.state).toBe('soaking');
    f.clock.advance(30_000);
    await rings.tick();
    expect((await rings.get('ring0')).rollout!.state).toBe('soaking');
    f.clock.advance(31_000);
    await rings.tick();
    expect((await rings.get('ring0')).rollout!.state).toBe('completed');
    expect((await rings.get('ring1')).rollout!.state).toBe('soaking');
  });
});
