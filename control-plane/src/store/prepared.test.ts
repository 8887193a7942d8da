import { afterEach, beforeEach, expect, test } from 'vitest';
import { openStore, type Store } from './db.js';
import { prepare } from './prepared.js';

let store: Store;
beforeEach(async () => {
  store = openStore('sqlite::memory:');
  await store.migrate();
  await store.db.insertInto('sequences').values([{ name: 'a', value: 1 }, { name: 'b', value: 2 }, { name: 'c', value: 3 }]).execute();
});
afterEach(async () => {
  await store.close();
});

test('runs with each call’s values, keeping the constants written in the query', async () => {
  const byName = prepare(store.db, (db, a: { name: string; min: number }) =>
    db.selectFrom('sequences').select(['name', 'value']).where('name', '=', a.name).where('value', '>=', a.min).where('name', '!=', 'zz'));
  expect(await byName.execute(store.db, { name: 'b', min: 0 })).toEqual([{ name: 'b', value: 2 }]);
  expect(await byName.execute(store.db, { name: 'c', min: 0 })).toEqual([{ name: 'c', value: 3 }]);
  expect(await byName.execute(store.db, { name: 'c', min: 4 })).toEqual([]);
});

test('an in-list makes one shape per length; a row to insert, one per set of columns', async () => {
  const some = prepare(store.db, (db, a: { names: string[] }) =>
    db.selectFrom('sequences').select('name').where('name', 'in', a.names).orderBy('name'));
  expect((await some.execute(store.db, { names: ['a', 'c'] })).map((r) => r.name)).toEqual(['a', 'c']);
  expect((await some.execute(store.db, { names: ['b'] })).map((r) => r.name)).toEqual(['b']);
  expect((await some.execute(store.db, { names: ['c', 'b', 'a'] })).map((r) => r.name)).toEqual(['a', 'b', 'c']);
  expect((await some.execute(store.db, { names: ['b', 'c'] })).map((r) => r.name)).toEqual(['b', 'c']);

  const insert = prepare(store.db, (db, a: { row: { name: string; value: number } }) => db.insertInto('sequences').values(a.row));
  await insert.execute(store.db, { row: { name: 'd', value: 4 } });
  await insert.execute(store.db, { row: { value: 5, name: 'e' } });
  const rows = await store.db.selectFrom('sequences').select(['name', 'value']).where('name', 'in', ['d', 'e']).orderBy('name').execute();
  expect(rows).toEqual([{ name: 'd', value: 4 }, { name: 'e', value: 5 }]);
});

test('runs inside the writer’s transaction, and rolls back with it', async () => {
  const bump = prepare(store.db, (db, a: { name: string }) =>
    db.updateTable('sequences').set((eb) => ({ value: eb('value', '+', 10) })).where('name', '=', a.name).returning('value'));
  expect(await store.writer.run((trx) => bump.executeTakeFirst(trx, { name: 'a' }))).toEqual({ value: 11 });
  await expect(store.writer.run(async (trx) => {
    await bump.execute(trx, { name: 'a' });
    throw new Error('undo');
  })).rejects.toThrow('undo');
  const a = await store.db.selectFrom('sequences').select('value').where('name', '=', 'a').executeTakeFirstOrThrow();
  expect(a.value).toBe(11);
});

test('an argument the query never binds is an error, not a stale value', async () => {
  const wrong = prepare(store.db, (db, _a: { name: string }) => db.selectFrom('sequences').select('name').where('name', '=', 'a'));
  await expect(wrong.execute(store.db, { name: 'b' })).rejects.toThrow(/argument name is not bound/);
});
