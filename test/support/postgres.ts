/**
 * PostgreSQL for test files. The global setup starts one private cluster per run; each
 * test takes a fresh database of its own with `createDatabase()`.
 *
 *   describeWithPg('scale-out on PostgreSQL', () => {
 *     it('…', async () => {
 *       const db = await createDatabase();
 *       const a = await startServer({ env: { FERRY_DATABASE_URL: db } });
 *     });
 *   });
 */
import { randomBytes } from 'node:crypto';
import { describe, inject } from 'vitest';
import { psql } from './pg-cluster.js';
import type { ProvidedPg } from './provided.js';

export { PG_BIN_DIR, pgUnavailableReason, psql, startPgCluster, type PgCluster } from './pg-cluster.js';

const provided: ProvidedPg = inject('ferryPg') ?? {
  available: false,
  reason: 'the global setup (test/support/global-setup.ts) did not run: use the root vitest.config.ts',
  adminUrl: null,
};

/** True when this run has a PostgreSQL to test against. */
export const pgAvailable: boolean = provided.available && provided.adminUrl !== null;
/** Why PostgreSQL suites are skipped ('' when available). */
export const pgSkipReason: string = provided.reason;

/** The admin URL of the run's cluster; throws when there is none. */
export function pgAdminUrl(): string {
  if (!pgAvailable || !provided.adminUrl) throw new Error(`PostgreSQL not available: ${pgSkipReason}`);
  return provided.adminUrl;
}

/** `url` with its database name replaced. */
export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/**
 * A fresh, empty database for one test (unique name); resolves with its URL. With
 * `template`, the database is a copy of that one (nobody may be connected to it).
 */
export async function createDatabase(opts: { prefix?: string; template?: string } = {}): Promise<string> {
  const admin = pgAdminUrl();
  const name = `${(opts.prefix ?? 't').toLowerCase().replace(/[^a-z0-9_]/g, '_')}_${process.pid}_${randomBytes(5).toString('hex')}`;
  const template = opts.template ? ` TEMPLATE "${opts.template.replace(/"/g, '')}"` : '';
  await psql(admin, `CREATE DATABASE "${name}"${template}`);
  return withDatabase(admin, name);
}

/** Drop a database made by `createDatabase`, disconnecting whoever is still on it. */
export async function dropDatabase(url: string): Promise<void> {
  const name = decodeURIComponent(new URL(url).pathname.slice(1));
  await psql(pgAdminUrl(), `DROP DATABASE IF EXISTS "${name.replace(/"/g, '')}" WITH (FORCE)`);
}

/** Run SQL on a database of the run's cluster; resolves with psql's unaligned output. */
export function sql(url: string, statement: string): Promise<string> {
  return psql(url, statement);
}

/** `describe` that runs only when PostgreSQL is available, and says loudly why not. */
export function describeWithPg(name: string, fn: () => void): void {
  if (!pgAvailable) {
    console.warn(`[ferry tests] SKIPPING PostgreSQL suite "${name}": ${pgSkipReason}`);
  }
  describe.skipIf(!pgAvailable)(`${name}${pgAvailable ? '' : ` (skipped: ${pgSkipReason})`}`, fn);
}
