/**
 * Global setup for the whole vitest run (main process): starts ONE private PostgreSQL
 * cluster, hands its admin URL to the test files (`inject('ferryPg')`), and stops it at
 * the end. Prometheus is started per test (support/prometheus.ts); here we only check
 * that its binary exists.
 *
 * Missing binaries: with CI=true the run fails here, loudly; elsewhere the suites that
 * need them are skipped with a warning naming the reason.
 */
import type { TestProject } from 'vitest/node';
import { pgUnavailableReason, startPgCluster, type PgCluster } from './pg-cluster.js';
import { prometheusUnavailableReason, PROMETHEUS_BIN } from './prometheus-bin.js';
import type { ProvidedPg, ProvidedPrometheus } from './provided.js';

const inCi = process.env.CI === 'true';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let cluster: PgCluster | undefined;
  let pg: ProvidedPg;
  const external = process.env.FERRY_TEST_PG_URL;
  const pgReason = pgUnavailableReason();
  if (process.env.FERRY_TEST_PG === 'off' && !inCi) {
    // quicker unit-test runs: `FERRY_TEST_PG=off npx vitest run shared/`
    pg = { available: false, reason: 'disabled by FERRY_TEST_PG=off', adminUrl: null };
  } else if (external) {
    // a developer may point the run at a PostgreSQL of their own (psql is still needed)
    pg = { available: true, reason: '', adminUrl: external };
  } else if (pgReason) {
    if (inCi) throw new Error(`CI=true and ${pgReason}: the PostgreSQL suites cannot run`);
    console.warn(`\n[ferry tests] WARNING: PostgreSQL suites will be SKIPPED: ${pgReason}\n`);
    pg = { available: false, reason: pgReason, adminUrl: null };
  } else {
    cluster = await startPgCluster();
    pg = { available: true, reason: '', adminUrl: cluster.adminUrl };
  }
  project.provide('ferryPg', pg);

  const promReason = prometheusUnavailableReason();
  if (promReason) {
    if (inCi) {
      await cluster?.stop();
      throw new Error(`CI=true and ${promReason}: the Prometheus suites cannot run`);
    }
    console.warn(`\n[ferry tests] WARNING: Prometheus suites will be SKIPPED: ${promReason}\n`);
  }
  const prom: ProvidedPrometheus = { available: !promReason, reason: promReason ?? '', bin: PROMETHEUS_BIN };
  project.provide('ferryPrometheus', prom);

  // An interrupted run: spawn.ts SIGKILLs the cluster's process group when this process exits.
  return async () => {
    await cluster?.stop();
  };
}
