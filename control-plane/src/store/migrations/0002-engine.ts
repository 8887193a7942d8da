import type { Kysely } from 'kysely';
import { autoId, type Dialect } from './util.js';

/** Pipelines, executions, timers, deployments, infrastructure mappings. */
export async function up(db: Kysely<any>, dialect: Dialect): Promise<void> {
  const big = 'bigint' as const;
  await db.schema.createTable('pipelines')
    .addColumn('account_id', 'text', (c) => c.notNull())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('version', 'integer', (c) => c.notNull())
    .addColumn('definition', 'text', (c) => c.notNull())
    .addColumn('source', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('created_by', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('pipelines_pk', ['account_id', 'name', 'version'])
    .execute();
  await db.schema.createTable('executions')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('account_id', 'text', (c) => c.notNull())
    .addColumn('pipeline', 'text', (c) => c.notNull())
    .addColumn('pipeline_version', 'integer', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('artifact', 'text')
    .addColumn('inputs', 'text', (c) => c.notNull())
    .addColumn('created_at', big, (c) => c.notNull())
    .addColumn('finished_at', big)
    .addColumn('created_by', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('updated_at', big, (c) => c.notNull())
    .addColumn('revision', 'integer', (c) => c.notNull().defaultTo(0))
    .execute();
  await db.schema.createIndex('executions_list').on('executions').columns(['account_id', 'created_at']).execute();
  await db.schema.createIndex('executions_status').on('executions').columns(['status']).execute();
  await db.schema.createTable('timers')
    .addColumn('id', 'text', (c) => c.primaryKey())
    .addColumn('execution_id', 'text', (c) => c.notNull())
    .addColumn('key', 'text', (c) => c.notNull())
    .addColumn('due_at', big, (c) => c.notNull())
    .addColumn('payload', 'text', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('timers_due').on('timers').columns(['due_at']).execute();
  await db.schema.createIndex('timers_exec_key').on('timers').columns(['execution_id', 'key']).unique().execute();
  await db.schema.createTable('deployments')
    .addColumn('id', 'integer', (c) => autoId(c, dialect))
    .addColumn('account_id', 'text', (c) => c.notNull())
    .addColumn('service', 'text', (c) => c.notNull())
    .addColumn('environment', 'text', (c) => c.notNull())
    .addColumn('infrastructure', 'text', (c) => c.notNull())
    .addColumn('pipeline', 'text', (c) => c.notNull())
    .addColumn('artifact', 'text', (c) => c.notNull())
    .addColumn('execution_id', 'text', (c) => c.notNull())
    .addColumn('stage_id', 'text', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('at', big, (c) => c.notNull())
    .execute();
  await db.schema.createIndex('deployments_mapping').on('deployments').columns(['account_id', 'service', 'environment', 'infrastructure', 'at']).execute();
  await db.schema.createTable('infrastructure_mappings')
    .addColumn('account_id', 'text', (c) => c.notNull())
    .addColumn('service', 'text', (c) => c.notNull())
    .addColumn('environment', 'text', (c) => c.notNull())
    .addColumn('environment_type', 'text', (c) => c.notNull())
    .addColumn('infrastructure', 'text', (c) => c.notNull())
    .addColumn('live_color', 'text')
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('infrastructure_mappings_pk', ['account_id', 'service', 'environment', 'infrastructure'])
    .execute();
}
