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
import { up as createEngineSlots } from '../store/migrations/0004-engine-slots.js';
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

/** The table itself is created by migration 0004; this stays as a guard for callers that build a store by hand. */
export async function up(db: Kysely<any>): Promise<void> {
  await createEngineSlots(db, 'sqlite');
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
