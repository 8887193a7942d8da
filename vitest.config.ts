import { defineConfig } from 'vitest/config';

/**
 * One config for the whole repository: unit tests beside the code (run from source) and
 * the end-to-end tests in test/ (run the built binaries; `pnpm test` builds first).
 * The global setup starts one private PostgreSQL for the run (test/support/global-setup.ts).
 */
export default defineConfig({
  test: {
    include: [
      'shared/src/**/*.test.ts',
      'delegate/src/**/*.test.ts',
      'control-plane/src/**/*.test.ts',
      'test/**/*.test.ts',
    ],
    exclude: ['**/node_modules/**', '**/dist/**'],
    environment: 'node',
    // real processes, signals and process.exit in tests: forks, not threads
    pool: 'forks',
    // two cores: two files at a time, each may start servers and delegates
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    globalSetup: ['test/support/global-setup.ts'],
    // after* hooks run in reverse order: useProcessGuard() (registered first) checks last
    sequence: { hooks: 'stack' },
  },
});
