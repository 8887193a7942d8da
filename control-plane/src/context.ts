/** What every part of the server is handed: one object, built once in server.ts. */
import type { ServerConfig } from './config.js';
import type { Store } from './store/db.js';
import type { Clock } from './clock.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';
import type { TokenCache } from './http/auth.js';
import type { SecretBox } from './store/secrets.js';
import type { Gateway } from './gateway/gateway.js';
import type { Scheduler } from './scheduler/scheduler.js';
import type { LogStore } from './logs/log-store.js';
import type { Bus } from './store/bus.js';

export interface AppContext {
  readonly config: ServerConfig;
  readonly store: Store;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly tokens: TokenCache;
  readonly secretBox: SecretBox;
  readonly gateway: Gateway;
  readonly scheduler: Scheduler;
  readonly logs: LogStore;
  /** events between servers sharing one database (in-process on SQLite) */
  readonly bus: Bus;
  /** filled by server.ts once the engine is built (engine/ owns its type) */
  engine: unknown;
  /** filled by server.ts once the rings module is built (rings/ owns its type) */
  rings: unknown;
  /** true once SIGTERM arrived: readyz fails, new sockets are refused */
  shuttingDown: boolean;
}
