/**
 * What the global setup hands to test files through vitest's `provide`/`inject`.
 * Importing this module (for its types) brings the `ProvidedContext` augmentation along.
 */
export interface ProvidedPg {
  available: boolean;
  /** why PostgreSQL suites are skipped (when not available) */
  reason: string;
  /** admin URL of the run's private cluster (user postgres, database postgres) */
  adminUrl: string | null;
}

export interface ProvidedPrometheus {
  available: boolean;
  reason: string;
  bin: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    ferryPg: ProvidedPg;
    ferryPrometheus: ProvidedPrometheus;
  }
}
