import { pino, type Logger } from 'pino';

export type { Logger };

/** The server's root logger. Child loggers bind ids (delegateId, taskId, executionId). */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { svc: 'ferry-server' },
    redact: { paths: ['token', '*.token', 'authorization', '*.authorization', 'secrets', '*.secrets'], censor: '***' },
  });
}
