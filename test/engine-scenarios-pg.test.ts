/**
 * The engine scenarios (engine-scenarios.test.ts) again, with the server on PostgreSQL:
 * the same state model, strategies, approvals and resume, through PostgreSQL's
 * transactions and row locks instead of SQLite's single writer.
 */
import { describe } from 'vitest';
import { pgAvailable, pgSkipReason } from './support/postgres.js';

if (pgAvailable) {
  process.env.FERRY_SCENARIOS_DB = 'postgres';
  await import('./engine-scenarios.test.js');
} else {
  console.warn(`[ferry tests] SKIPPING PostgreSQL suite "engine scenarios on PostgreSQL": ${pgSkipReason}`);
  describe.skip(`engine scenarios on PostgreSQL (skipped: ${pgSkipReason})`, () => undefined);
}
