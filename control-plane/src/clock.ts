/** Injected time, so tests can fake it. All times are epoch milliseconds. */
export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };
export const iso = (ms: number | null | undefined): string | null => (ms == null ? null : new Date(ms).toISOString());
