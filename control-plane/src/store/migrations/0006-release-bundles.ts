import fs from 'node:fs';
import type { Kysely } from 'kysely';
import type { Dialect } from './util.js';

/**
 * Release bundles in the database, not only in the data dir of the server that published
 * them: with several servers on one PostgreSQL database, a delegate asks whichever server
 * it is connected to. Each server keeps a file copy as a cache. Bundles this server has
 * in its data dir are copied in; a release whose file only another server holds gets its
 * bundle when that server migrates.
 */
export async function up(db: Kysely<any>, dialect: Dialect): Promise<void> {
  await db.schema.createTable('release_bundles')
    .addColumn('version', 'text', (c) => c.primaryKey())
    .addColumn('data', dialect === 'postgres' ? 'bytea' : 'blob', (c) => c.notNull())
    .execute();
  const rows = await db.selectFrom('releases').select(['version', 'path']).execute() as Array<{ version: string; path: string }>;
  for (const r of rows) {
    let data: Buffer;
    try {
      data = fs.readFileSync(r.path);
    } catch {
      continue;
    }
    await db.insertInto('release_bundles').values({ version: r.version, data }).onConflict((oc) => oc.column('version').doNothing()).execute();
  }
}
