import type { Kysely } from 'kysely';
import type { Dialect } from './util.js';

/**
 * The engine's slots (engine/tables.ts `EngineSlotsTable`): who holds or waits for the
 * account's running places (`account`) and each infrastructure mapping's concurrency
 * (`mapping:SERVICE/ENV/INFRA`); waiters are served in `seq` order. Databases created
 * before this migration got the table from the engine at start (ensureEngineTables),
 * hence `if not exists`.
 */
export async function up(db: Kysely<any>, _dialect: Dialect): Promise<void> {
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
