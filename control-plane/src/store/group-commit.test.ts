import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { openStore, type Store } from './db.js';

let dir: string;
let store: Store;
beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-writer-'));
  store = openStore(`sqlite:${path.join(dir, 'ferry.db')}`);
  await store.migrate();
});
afterEach(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const put = (name: string, value: number) => store.writer.run((trx) => trx.insertInto('sequences').values({ name, value }).execute());
const count = async () => Number((await store.db.selectFrom('sequences').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

test('writes queued in one tick share one commit and one sync; each resolves only after its sync', async () => {
  const w = store.writer;
  const before = { commits: w.commits, syncs: w.syncs };
  const order: string[] = [];
  const all = Array.from({ length: 50 }, (_, i) => store.writer.run(
    (trx) => trx.insertInto('sequences').values({ name: `s${i}`, value: i }).execute(),
    () => order.push(`committed ${i}`),
  ).then(() => order.push(`resolved ${i}`)));
  await Promise.all(all);
  expect(w.commits - before.commits).toBe(1);
  expect(w.syncs - before.syncs).toBe(1);
  // every onCommit (at commit) comes before any resolution (after the sync)
  expect(order.slice(0, 50).every((e) => e.startsWith('committed'))).toBe(true);
  expect(await count()).toBe(50);
});

test('a quiet writer syncs in the event loop; back-to-back batches sync on the thread pool', async () => {
  const w = store.writer;
  await put('warm', 0);
  await sleep(20);
  const quiet = w.inlineSyncs;
  await put('a', 1);
  expect(w.inlineSyncs).toBe(quiet + 1);

  // a stream of batches: each starts while the previous one's sync is recent
  const before = { inline: w.inlineSyncs, syncs: w.syncs };
  for (let i = 0; i < 20; i++) await put(`b${i}`, i);
  expect(w.syncs - before.syncs).toBeGreaterThanOrEqual(10);
  expect(w.inlineSyncs - before.inline).toBeLessThan(w.syncs - before.syncs);
  expect(await count()).toBe(22);
});

test('a failing write sinks only itself: the others of its batch commit, its in-memory effect is undone', async () => {
  const held = new Set<string>();
  const ok1 = put('x', 1);
  const bad = store.writer.run(async (trx) => {
    held.add('slot');
    store.writer.onRollback(() => held.delete('slot'));
    await trx.insertInto('sequences').values({ name: 'x', value: 2 }).execute(); // duplicate key
  });
  const ok2 = put('y', 3);
  await expect(bad).rejects.toThrow(/UNIQUE/);
  await expect(Promise.all([ok1, ok2])).resolves.toBeDefined();
  expect(held.has('slot')).toBe(false);
  const rows = await store.db.selectFrom('sequences').select(['name', 'value']).orderBy('name').execute();
  expect(rows).toEqual([{ name: 'x', value: 1 }, { name: 'y', value: 3 }]);
});

test('what a resolved write stored survives reopening the database', async () => {
  for (let i = 0; i < 5; i++) await put(`d${i}`, i);
  await store.close();
  store = openStore(`sqlite:${path.join(dir, 'ferry.db')}`);
  await store.migrate();
  expect(await count()).toBe(5);
});
