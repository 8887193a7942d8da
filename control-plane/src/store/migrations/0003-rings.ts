import type { Kysely } from 'kysely';
import type { Dialect } from './util.js';

/**
 * Rings: an index for the rollout health check, which counts finished tasks per
 * delegate version and kind (rings/service.ts `health`), and reads the previous
 * version's last tasks of a kind when it has none in the rollout's window.
 */
export async function up(db: Kysely<any>, _dialect: Dialect): Promise<void> {
  await db.schema.createIndex('tasks_version_kind').on('tasks').columns(['delegate_version', 'kind', 'finished_at']).execute();
}
