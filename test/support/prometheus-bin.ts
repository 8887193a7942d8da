/** Where the Prometheus binary is, and whether it is there (no vitest imports). */
import { existsSync } from 'node:fs';

export const PROMETHEUS_BIN = process.env.FERRY_TEST_PROMETHEUS_BIN ?? '/usr/bin/prometheus';

export function prometheusUnavailableReason(): string | undefined {
  return existsSync(PROMETHEUS_BIN)
    ? undefined
    : `Prometheus not installed (${PROMETHEUS_BIN} missing; apt-get install -y prometheus)`;
}
