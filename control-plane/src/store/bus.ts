/**
 * The event bus between servers. On SQLite there is one server: events stay in the
 * process. On PostgreSQL several servers share one database, and LISTEN/NOTIFY carries
 * the events that another server must act on: a task queued (wake its dispatcher), a
 * task to cancel (the server holding the delegate's socket sends task.cancel), a log
 * chunk stored (live tails on other servers), a token revoked, a ring changed.
 */
import { EventEmitter } from 'node:events';
import type pg from 'pg';
import type { Logger } from '../logger.js';

export type BusEvent =
  | { type: 'task.queued' }
  | { type: 'task.cancel'; taskId: string; delegateId: string; attempt: number; reason: string }
  | { type: 'log.chunk'; taskId: string; executionId: string | null; seq: number }
  | { type: 'token.revoked'; tokenId: string }
  | { type: 'ring.changed'; ring: string }
  | { type: 'execution.changed'; executionId: string };

const CHANNEL = 'ferry_events';

export class Bus {
  private readonly local = new EventEmitter();
  private listener: pg.PoolClient | null = null;
  private closed = false;

  constructor(private readonly origin: string, private readonly logger: Logger, private readonly pool?: pg.Pool) {
    this.local.setMaxListeners(0);
  }

  get distributed(): boolean {
    return this.pool !== undefined;
  }

  async start(): Promise<void> {
    if (!this.pool) return;
    await this.connect();
  }

  private async connect(): Promise<void> {
    if (!this.pool || this.closed) return;
    try {
      const client = await this.pool.connect();
      client.on('notification', (n) => {
        if (n.channel !== CHANNEL || !n.payload) return;
        try {
          const { o, e } = JSON.parse(n.payload) as { o: string; e: BusEvent };
          if (o !== this.origin) this.local.emit(e.type, e, false);
        } catch { /* not ours */ }
      });
      client.on('error', (err) => {
        this.logger.warn({ err: err.message }, 'event bus connection lost; reconnecting');
        this.listener = null;
        try { client.release(true); } catch { /* gone */ }
        setTimeout(() => void this.connect(), 1000).unref();
      });
      await client.query(`LISTEN ${CHANNEL}`);
      this.listener = client;
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'event bus could not listen; retrying');
      setTimeout(() => void this.connect(), 1000).unref();
    }
  }

  /** Deliver to this server at once and, on PostgreSQL, to every other server. */
  publish(e: BusEvent): void {
    this.local.emit(e.type, e, true);
    if (!this.pool || this.closed) return;
    const payload = JSON.stringify({ o: this.origin, e });
    this.pool.query('select pg_notify($1, $2)', [CHANNEL, payload]).catch((err) => this.logger.warn({ err: (err as Error).message }, 'notify failed'));
  }

  /** `fn(event, local)`: local is true when this server published it. */
  on<T extends BusEvent['type']>(type: T, fn: (e: Extract<BusEvent, { type: T }>, local: boolean) => void): () => void {
    this.local.on(type, fn as (...a: unknown[]) => void);
    return () => this.local.off(type, fn as (...a: unknown[]) => void);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.listener) {
      try { await this.listener.query(`UNLISTEN ${CHANNEL}`); } catch { /* closing */ }
      this.listener.release();
      this.listener = null;
    }
  }
}
