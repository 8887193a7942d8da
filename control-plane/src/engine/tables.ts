/**
 * The engine's own table: who holds or waits for a slot — the account's running
 * executions (`account`) and each infrastructure mapping's concurrency
 * (`mapping:SERVICE/ENV/INFRA`). Waiters are served in `seq` order.
 *
 * The migration store/migrations/0004-engine-slots.ts creates it; `ensureEngineTables`
 * (the same definition, `if not exists`) stays as a guard for stores opened without
 * migrating (and databases from before 0004).
 */
import { sql, type Kysely } from 'kysely';
import type { DB, Executor, Store } from '../store/db.js';

export interface EngineSlotsTable {
  account_id: string;
  /** 'account' or 'mapping:SERVICE/ENV/INFRA' */
  key: string;
  execution_id: string;
  stage_id: string;
  state: 'held' | 'waiting';
  capacity: number;
  deploy_latest_only: number;
  seq: number;
  requested_at: number;
}

export type EngineTables = {
  engine_slots: EngineSlotsTable;
};

export type EngineDB = DB & EngineTables;

export function engineDb(db: Executor): Kysely<EngineDB> {
  return (db as Kysely<DB>).withTables<EngineTables>();
}

export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.createTable('engine_slots').ifNotExists()
    .addColumn('account_id', 'text', (c) => c.notNull())
    .addColumn('key', 'text', (c) => c.notNull())
    .addColumn('execution_id', 'text', (c) => c.notNull())
    .addColumn('stage_id', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('capacity', 'integer', (c) => c.notNull())
    .addColumn('deploy_latest_only', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('seq', 'bigint', (c) => c.notNull())
    .addColumn('requested_at', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('engine_slots_pk', ['execution_id', 'key'])
    .execute();
  await db.schema.createIndex('engine_slots_key').ifNotExists().on('engine_slots').columns(['account_id', 'key', 'seq']).execute();
}

export async function ensureEngineTables(store: Store): Promise<void> {
  if (store.dialect === 'postgres') {
    // several servers may start at once
    await store.db.transaction().execute(async (trx) => {
      await sql`select pg_advisory_xact_lock(424243)`.execute(trx);
      await up(trx as unknown as Kysely<any>);
    });
    return;
  }
  await up(store.db as unknown as Kysely<any>);
}
