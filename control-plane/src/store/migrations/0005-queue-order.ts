import { sql, type Kysely } from 'kysely';
import type { Dialect } from './util.js';

/**
 * The dispatch pass reads an account's queue `order by priority desc, queue_seq`. The
 * first queue index had priority ascending, so the database sorted every queued task of
 * the account on each pass (5 ms per pass at 10,000 queued on SQLite), and as it held
 * every task, each status change of a running task rewrote its entry. This one matches
 * the order and holds queued tasks only (partial index): a pass reads just the page it
 * needs, and only enqueue and claim touch it. Queries use it by saying `status = 'queued'`
 * literally (store/db.ts `isQueued`). The lease sweep gets a partial index of its own
 * (assigned tasks by lease end, `isAssigned`).
 */
export async function up(db: Kysely<any>, _dialect: Dialect): Promise<void> {
  await db.schema.dropIndex('tasks_queue').ifExists().execute();
  await sql`create index if not exists tasks_queue_order on tasks (account_id, priority desc, queue_seq) where status = 'queued'`.execute(db);
  // the lease sweep: assignments not yet accepted, by lease end
  await sql`create index if not exists tasks_leases on tasks (lease_expires_at) where status = 'assigned'`.execute(db);
}
