/**
 * The engine scenarios (engine-scenarios.test.ts) again, with the server on PostgreSQL:
 * the same state model, strategies, approvals and resume, through PostgreSQL's
 * transactions and row locks instead of SQLite's single writer.
 */
import { it } from 'vitest';
import { describeWithPg, pgAvailable } from './support/postgres.js';

if (pgAvailable) {
  process.env.FERRY_SCENARIOS_DB = 'postgres';
  await import('./engine-scenarios.test.js');
} else {
  // reported as skipped, with the reason (describeWithPg); under CI the run fails before this
  describeWithPg('engine scenarios on PostgreSQL', () => {
    it('the 25 scenarios of engine-scenarios.test.ts', () => {
      throw new Error('runs only with PostgreSQL');
    });
  });
}
