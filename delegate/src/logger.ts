import { pino, type Logger } from 'pino';

export type { Logger };

/** Structured logs to stdout. Never bind tokens or secret values to a logger. */
export function createLogger(level: string, bindings: Record<string, string> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime });
}
