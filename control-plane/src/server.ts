/**
 * `ferry server`: wires the store, log store, scheduler, gateway, engine and rings into
 * one process, listens, and shuts down cleanly on SIGTERM (stop accepting, close
 * delegate sockets with "going away", flush, exit 0).
 */
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import { loadServerConfig, ConfigError, type ServerConfig } from './config.js';
import { openStore } from './store/db.js';
import { bootstrap } from './store/bootstrap.js';
import { systemClock, type Clock } from './clock.js';
import { createLogger } from './logger.js';
import { createMetrics } from './metrics.js';
import { TokenCache } from './http/auth.js';
import { SecretBox } from './store/secrets.js';
import { LogStore } from './logs/log-store.js';
import { Scheduler } from './scheduler/scheduler.js';
import { Gateway } from './gateway/gateway.js';
import { buildServer } from './http/app.js';
import type { AppContext } from './context.js';
import { attachModules } from './modules.js';
import { Bus } from './store/bus.js';

export interface RunningServer {
  ctx: AppContext;
  url: string;
  close(): Promise<void>;
}

export async function startServer(config: ServerConfig, clock: Clock = systemClock): Promise<RunningServer> {
  const logger = createLogger(config.logLevel);
  fs.mkdirSync(config.dataDir, { recursive: true });
  const store = openStore(config.databaseUrl);
  await store.migrate();
  const boot = await bootstrap(store, config.dataDir, clock.now());
  const metrics = createMetrics();
  const tokens = new TokenCache(store.db);
  const secretBox = SecretBox.open(config.dataDir);
  const logs = new LogStore(store, clock, logger.child({ mod: 'logs' }), metrics);
  const scheduler = new Scheduler(store, clock, logger.child({ mod: 'scheduler' }), metrics, secretBox, logs, {
    leaseMs: config.leaseMs,
    delegateGraceMs: config.delegateGraceMs,
  });
  const bus = new Bus(config.serverId, logger.child({ mod: 'bus' }), store.pgPool);
  await bus.start();
  scheduler.setBus(bus);
  logs.setBus(bus);
  let shuttingDown = false;
  const gateway = new Gateway({ config, store, clock, logger, metrics, tokens, scheduler, logs, isShuttingDown: () => shuttingDown });
  const ctx: AppContext = {
    config, store, clock, logger, metrics, tokens, secretBox, gateway, scheduler, logs, bus,
    engine: null, rings: null,
    get shuttingDown() { return shuttingDown; },
    set shuttingDown(v: boolean) { shuttingDown = v; },
  };

  // After a restart every delegate is away until it says hello again; the grace for
  // its running tasks starts now.
  const now = clock.now();
  let q = store.db.updateTable('delegates').set({ connected: 0, disconnected_at: now, session_id: null }).where('connected', '=', 1);
  if (store.dialect === 'postgres') q = q.where('last_seen_at', '<', now - 3 * config.heartbeatMs);
  await q.execute();

  bus.on('token.revoked', (e) => {
    tokens.invalidate();
    gateway.onTokenRevoked(e.tokenId);
  });

  const modules = await attachModules(ctx);
  const app = await buildServer(ctx);
  gateway.attach(app.server);
  await app.listen({ host: config.host, port: config.port });
  scheduler.start();
  await modules.start();
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `http://${host}:${addr.port}`;
  process.stdout.write(`listening on ${url}\n`);
  if (boot.adminToken) {
    process.stdout.write(`admin token (shown once; also in ${config.dataDir}/admin-token): ${boot.adminToken}\n`);
  }
  logger.info({ url, database: store.dialect, serverId: config.serverId }, 'ferry server started');

  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= (async () => {
      shuttingDown = true;
      logger.info('shutting down');
      await modules.stop();
      scheduler.stop();
      await gateway.closeAll();
      await app.close();
      await logs.close();
      await bus.close();
      await store.close();
      logger.info('stopped');
    })();
    return closing;
  };
  return { ctx, url, close };
}

/** The `ferry server` command. */
export async function runServerCommand(): Promise<void> {
  let config: ServerConfig;
  try {
    config = loadServerConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`error: INVALID_CONFIG: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const server = await startServer(config);
  let signals = 0;
  const onSignal = (sig: string) => {
    signals++;
    if (signals > 1) process.exit(1);
    server.ctx.logger.info({ signal: sig }, 'signal received');
    const force = setTimeout(() => process.exit(1), 15_000);
    force.unref();
    server.close().then(() => process.exit(0), (err) => {
      server.ctx.logger.error({ err }, 'shutdown failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
}
