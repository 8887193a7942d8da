/**
 * The delegate gateway: WebSocket sessions at /api/v1/delegate/connect.
 * Authentication happens in the HTTP upgrade, before any frame: a bad or revoked token
 * gets 401 with the JSON error and no WebSocket. The first frame must be `hello`;
 * every frame is decoded and validated in one place (codec) and a bad one closes the
 * session with a specific code — never an exception that reaches the process.
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket, type RawData } from 'ws';
import {
  CloseCode, closeCodeName, decodeDelegateFrame, encodeFrame, newId, PROTOCOL_VERSION, SUPPORTED_PROTOCOLS,
  type DelegateFrame, type DelegateFrameOf, type DelegateFrameType, type Hello, type ServerFrame, type UpgradeStatus,
} from '@ferry/shared';
import type { Store } from '../store/db.js';
import type { Clock } from '../clock.js';
import type { Logger } from '../logger.js';
import type { Metrics } from '../metrics.js';
import type { ServerConfig } from '../config.js';
import { bearer, type Principal, type TokenCache } from '../http/auth.js';
import { markDisconnected, setUpgradeState, upsertOnHello } from '../store/delegates.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { LogStore } from '../logs/log-store.js';
import type { DispatchTarget } from '../scheduler/types.js';

const CONNECT_PATH = '/api/v1/delegate/connect';
/** frames waiting to be handled before the socket is paused (read backpressure) */
const MAX_PENDING_FRAMES = 256;
/** bytes queued for sending before a slow delegate is cut off (write backpressure) */
const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

export interface GatewayDeps {
  config: ServerConfig;
  store: Store;
  clock: Clock;
  logger: Logger;
  metrics: Metrics;
  tokens: TokenCache;
  scheduler: Scheduler;
  logs: LogStore;
  isShuttingDown(): boolean;
}

export class Session implements DispatchTarget {
  delegateId = '';
  accountId: string;
  name = '';
  version = '';
  tags: ReadonlySet<string> = new Set();
  capabilities: ReadonlySet<string> = new Set();
  capacity = 0;
  probation = false;
  draining = false;
  readonly sessionId = newId();
  readonly tokenId: string;
  /** set once hello is handled; only what later readers need is kept (memory per socket) */
  hello: { failedVersions?: string[] } | null = null;
  lastSeen: number;
  running = 0;
  closed = false;
  private chain: Promise<void> = Promise.resolve();
  private pendingFrames = 0;
  /** frames sent in this tick are held and written together (gateway.flushCorked) */
  corked = false;
  private bucket: number;
  private bucketAt: number;

  constructor(readonly ws: WebSocket, readonly socket: Duplex, principal: Principal, private readonly gw: Gateway, now: number) {
    this.accountId = principal.accountId;
    this.tokenId = principal.tokenId;
    this.lastSeen = now;
    this.bucket = gw.deps.config.maxFramesPerSecond;
    this.bucketAt = now;
  }

  /** A child logger bound to the session's ids, made when needed (sessions log rarely). */
  get log(): Logger {
    return this.gw.deps.logger.child(this.delegateId
      ? { mod: 'gateway', sessionId: this.sessionId, delegateId: this.delegateId, delegate: this.name }
      : { mod: 'gateway', sessionId: this.sessionId });
  }

  get accepting(): boolean {
    return !this.closed && !this.draining && !this.probation && this.hello !== null;
  }

  send(frame: ServerFrame): boolean {
    if (!this.sendEncoded(encodeFrame(frame))) return false;
    this.gw.deps.metrics.framesOut.inc({ type: frame.type });
    return true;
  }

  /** Sends an encoded frame (one encoded for many sessions); the caller counts it. */
  sendEncoded(bytes: Uint8Array): boolean {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) return false;
    if (this.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.close(CloseCode.RateLimited, 'delegate reads too slowly; send buffer full');
      return false;
    }
    if (!this.corked) this.gw.cork(this);
    this.ws.send(bytes, { binary: true });
    return true;
  }

  flush(): void {
    if (!this.corked) return;
    this.corked = false;
    this.socket.uncork();
  }

  close(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.gw.deps.metrics.sessionsClosed.inc({ reason: closeCodeName(code) });
    try {
      this.ws.close(code, closeReason(reason));
    } catch {
      this.ws.terminate();
    }
    // A peer that never answers the close handshake is cut off.
    setTimeout(() => this.ws.terminate(), 2000).unref();
  }

  /** token bucket: maxFramesPerSecond with a burst of one second's worth */
  takeToken(now: number): boolean {
    const rate = this.gw.deps.config.maxFramesPerSecond;
    this.bucket = Math.min(rate, this.bucket + ((now - this.bucketAt) * rate) / 1000);
    this.bucketAt = now;
    if (this.bucket < 1) return false;
    this.bucket -= 1;
    return true;
  }

  /** Frames of one session are handled strictly in order; the socket pauses when too many wait. */
  enqueue(work: () => Promise<void>): void {
    this.pendingFrames++;
    if (this.pendingFrames > MAX_PENDING_FRAMES && !this.ws.isPaused) this.ws.pause();
    this.chain = this.chain.then(work).catch((err) => {
      this.log.error({ err }, 'frame handler failed');
    }).finally(() => {
      this.pendingFrames--;
      if (this.pendingFrames < MAX_PENDING_FRAMES / 2 && this.ws.isPaused) this.ws.resume();
    });
  }

  private inflight = new Set<Promise<void>>();
  /** accepts not yet committed, by task id */
  readonly accepts = new Map<string, Promise<void>>();

  /** Keeps at most 64 uncommitted log writes per session; past that the session waits. */
  async track(p: Promise<void>): Promise<void> {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
    if (this.inflight.size >= 64) await Promise.race(this.inflight);
  }

  async idle(): Promise<void> {
    await this.chain;
    await Promise.all(this.inflight);
  }

  private helloSeen = false;
  helloPending(): boolean {
    return this.helloSeen;
  }
  markHelloPending(): void {
    this.helloSeen = true;
  }
}

type Handlers = { [K in DelegateFrameType]: (s: Session, f: DelegateFrameOf<K>) => Promise<void> };

export class Gateway extends EventEmitter {
  private readonly wss: WebSocketServer;
  /** open sessions that said hello, by delegate id */
  private readonly byDelegate = new Map<string, Session>();
  private readonly all = new Set<Session>();
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private readonly handlers: Handlers;
  private lastFlush = 0;
  /** sessions whose socket is corked until the end of this tick */
  private corked: Session[] = [];

  constructor(readonly deps: GatewayDeps) {
    super();
    this.wss = new WebSocketServer({ noServer: true, maxPayload: deps.config.maxFrameBytes, perMessageDeflate: false, clientTracking: false });
    this.handlers = {
      hello: async (s) => s.close(CloseCode.OutOfOrder, 'hello was already received'),
      heartbeat: async (s, f) => {
        s.running = f.running.length;
      },
      'task.accept': async (s, f) => {
        // Accepts are pipelined too (they share group commits); the task's result waits
        // for its accept so that "started" is always recorded before "finished".
        const p = deps.scheduler.onAccept(s.delegateId, s.name, f.taskId, f.attempt)
          .catch((err) => s.log.error({ err, taskId: f.taskId }, 'accept not recorded'))
          .finally(() => { if (s.accepts.get(f.taskId) === p) s.accepts.delete(f.taskId); });
        s.accepts.set(f.taskId, p);
        await s.track(p);
      },
      'task.reject': async (s, f) => {
        await deps.scheduler.onReject(s.delegateId, f.taskId, f.attempt, `${f.reason}: ${f.message}`);
      },
      'log.chunk': async (s, f) => {
        if (!deps.scheduler.holds(s.delegateId, f.taskId)) {
          s.send({ type: 'log.ack', taskId: f.taskId, attempt: f.attempt, seq: f.seq, done: true });
          return;
        }
        // Chunks are pipelined into the log store's group commit (it keeps their order) and
        // acknowledged when their commit returns; a session waits only when too many of its
        // chunks are still uncommitted (backpressure).
        const p = deps.logs.submitChunk(s.delegateId, f).then((seq) => {
          if (seq >= 0) s.send({ type: 'log.ack', taskId: f.taskId, attempt: f.attempt, seq });
        }, (err) => this.storeFailed(s, err, f.taskId, 'log chunk'));
        await s.track(p);
      },
      'task.result': async (s, f) => {
        if (!deps.scheduler.holds(s.delegateId, f.taskId)) {
          s.send({ type: 'log.ack', taskId: f.taskId, attempt: f.attempt, seq: f.seq, done: true });
          return;
        }
        // Stored, or refused because the server already ended the task (-1): either way the
        // delegate may forget it. Not taken while a chunk before it is missing: the ack
        // stays at the last stored chunk and the result is resent after the reconnect.
        const accepted = s.accepts.get(f.taskId) ?? Promise.resolve();
        const p = accepted.then(() => deps.logs.submitResult(s.delegateId, f)).then((seq) => {
          if (seq === -1 || seq >= f.seq) s.send({ type: 'log.ack', taskId: f.taskId, attempt: f.attempt, seq: f.seq, done: true });
          else s.send({ type: 'log.ack', taskId: f.taskId, attempt: f.attempt, seq });
        }, (err) => this.storeFailed(s, err, f.taskId, 'result'));
        await s.track(p);
      },
      'upgrade.status': async (s, f) => {
        await setUpgradeState(deps.store.db, s.delegateId, { version: f.version, state: f.state, error: f.error ?? null },
          f.state === 'failed' || f.state === 'rolledBack' ? f.version : undefined);
        this.emit('upgrade.status', s, f as UpgradeStatus);
      },
    };
  }

  attach(server: Server): void {
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', () => undefined);
      void this.handleUpgrade(req, socket, head).catch((err) => {
        this.deps.logger.error({ err }, 'upgrade failed');
        refuse(socket, 500, 'INTERNAL', 'internal error');
      });
    });
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.deps.config.heartbeatMs);
    this.heartbeatTimer.unref();
  }

  private async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    const m = this.deps.metrics;
    if (path !== CONNECT_PATH) {
      m.upgradesRefused.inc({ code: 'NOT_FOUND' });
      return refuse(socket, 404, 'NOT_FOUND', `no WebSocket endpoint at ${path}`);
    }
    if (this.deps.isShuttingDown()) {
      m.upgradesRefused.inc({ code: 'UNAVAILABLE' });
      return refuse(socket, 503, 'UNAVAILABLE', 'server is shutting down');
    }
    const secret = bearer(req.headers.authorization);
    const p = secret ? await this.deps.tokens.lookup(secret, this.deps.clock.now()) : null;
    if (!p) {
      m.upgradesRefused.inc({ code: 'UNAUTHORIZED' });
      return refuse(socket, 401, 'UNAUTHORIZED', secret ? 'unknown or revoked token' : 'missing Authorization: Bearer TOKEN');
    }
    if (p.kind !== 'delegate') {
      m.upgradesRefused.inc({ code: 'FORBIDDEN' });
      return refuse(socket, 403, 'FORBIDDEN', 'only a delegate token can connect a delegate');
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, socket, p));
  }

  /**
   * A chunk or result could not be stored. Later acknowledgements of the task cannot pass
   * it (they are cumulative), so the session is closed: the delegate reconnects at once
   * and resends everything unacknowledged, in order.
   */
  private storeFailed(s: Session, err: unknown, taskId: string, what: string): void {
    s.log.error({ err, taskId }, `${what} not stored; closing the session so the delegate resends it`);
    s.close(CloseCode.StoreFailed, `the server could not store a ${what}; resend after reconnecting`);
  }

  /**
   * Holds a session's writes until the end of the tick: the assignments, acks and
   * heartbeats sent to one delegate in a tick leave in one write instead of one each.
   */
  cork(s: Session): void {
    s.corked = true;
    s.socket.cork();
    if (this.corked.push(s) === 1) setImmediate(() => this.flushCorked());
  }

  private flushCorked(): void {
    const list = this.corked;
    this.corked = [];
    for (const s of list) {
      if (!s.corked) continue; // flushed early (Session.flush)
      s.corked = false;
      s.socket.uncork();
    }
  }

  private onConnection(ws: WebSocket, socket: Duplex, p: Principal): void {
    const now = this.deps.clock.now();
    const s = new Session(ws, socket, p, this, now);
    this.all.add(s);
    this.deps.metrics.sessionsOpened.inc();
    const helloTimer = setTimeout(() => {
      if (!s.hello) s.close(CloseCode.HelloTimeout, 'no hello within the time limit');
    }, this.deps.config.helloTimeoutMs);
    helloTimer.unref();
    ws.on('pong', () => { s.lastSeen = this.deps.clock.now(); });
    ws.on('error', (err) => s.log.debug({ err: err.message }, 'socket error'));
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(s, data, isBinary));
    ws.on('close', (code: number) => {
      clearTimeout(helloTimer);
      if (!s.closed) {
        s.closed = true;
        this.deps.metrics.sessionsClosed.inc({ reason: code === 1009 ? 'FrameTooLarge' : closeCodeName(code) });
        if (code === 1009) this.deps.metrics.invalidFrames.inc({ code: '1009' });
      }
      this.all.delete(s);
      void this.onClosed(s);
    });
  }

  private onMessage(s: Session, data: RawData, isBinary: boolean): void {
    if (s.closed) return;
    const now = this.deps.clock.now();
    s.lastSeen = now;
    const m = this.deps.metrics;
    if (!s.takeToken(now)) {
      m.invalidFrames.inc({ code: String(CloseCode.RateLimited) });
      return s.close(CloseCode.RateLimited, `more than ${this.deps.config.maxFramesPerSecond} frames per second`);
    }
    if (!isBinary) {
      m.invalidFrames.inc({ code: String(CloseCode.InvalidFrame) });
      return s.close(CloseCode.InvalidFrame, 'text frames are not accepted; send msgpack binary frames');
    }
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
    const r = decodeDelegateFrame(buf);
    if (!r.ok) {
      m.invalidFrames.inc({ code: String(r.code) });
      return s.close(r.code, r.message);
    }
    const f = r.frame;
    m.framesIn.inc({ type: f.type });
    if (!s.hello && !s.helloPending()) {
      if (f.type !== 'hello') {
        m.invalidFrames.inc({ code: String(CloseCode.FrameBeforeHello) });
        return s.close(CloseCode.FrameBeforeHello, `${f.type} before hello`);
      }
      s.markHelloPending();
      s.enqueue(() => this.onHello(s, f));
      return;
    }
    const h = this.handlers[f.type] as (s: Session, f: DelegateFrame) => Promise<void>;
    s.enqueue(() => (s.closed && f.type !== 'log.chunk' && f.type !== 'task.result' ? Promise.resolve() : h(s, f)));
  }

  private async onHello(s: Session, h: Hello): Promise<void> {
    if (!SUPPORTED_PROTOCOLS.includes(h.protocol)) {
      this.deps.metrics.invalidFrames.inc({ code: String(CloseCode.UnsupportedProtocol) });
      return s.close(CloseCode.UnsupportedProtocol, `protocol ${h.protocol} is not supported; this server speaks ${SUPPORTED_PROTOCOLS.join(', ')}`);
    }
    const db = this.deps.store.db;
    const existing = await db.selectFrom('delegates').select(['account_id']).where('id', '=', h.delegateId).executeTakeFirst();
    if (existing && existing.account_id !== s.accountId) {
      return s.close(CloseCode.DelegateMismatch, 'this delegate id is registered to another account');
    }
    if (s.closed) return;
    s.delegateId = h.delegateId;
    s.name = h.name;
    s.version = h.version;
    s.tags = internSet(h.tags);
    s.capabilities = internSet(h.capabilities);
    s.capacity = h.capacity;
    s.probation = h.probation === true;
    const old = this.byDelegate.get(h.delegateId);
    if (old && old !== s) {
      old.close(CloseCode.Replaced, 'replaced by a newer session of the same delegate');
      await this.deps.scheduler.detach(old.delegateId, old);
      await old.idle();
    }
    this.byDelegate.set(h.delegateId, s);
    const now = this.deps.clock.now();
    const acc = await this.deps.store.writer.run(async (trx) => {
      await upsertOnHello(trx, h, { accountId: s.accountId, tokenId: s.tokenId, sessionId: s.sessionId, serverId: this.deps.config.serverId, now });
      return trx.selectFrom('accounts').select(['name', 'ring']).where('id', '=', s.accountId).executeTakeFirst();
    });
    const rec = h.running.length || this.deps.scheduler.mayHold(h.delegateId)
      ? await this.deps.scheduler.reconcile(h.delegateId, h.running.map((r) => ({ taskId: r.taskId, attempt: r.attempt })))
      : { acks: [], forget: [], cancel: [] };
    s.hello = h.failedVersions?.length ? { failedVersions: h.failedVersions } : {};
    s.send({
      type: 'welcome',
      sessionId: s.sessionId,
      protocol: PROTOCOL_VERSION,
      heartbeatMs: this.deps.config.heartbeatMs,
      limits: { maxFrameBytes: this.deps.config.maxFrameBytes, maxFramesPerSecond: this.deps.config.maxFramesPerSecond, maxChunkLines: 2000 },
      serverTime: now,
      acks: rec.acks,
      forget: rec.forget,
      account: acc?.name ?? '',
      ring: acc?.ring ?? '',
    });
    for (const taskId of rec.cancel) {
      const a = rec.acks.find((x) => x.taskId === taskId);
      s.send({ type: 'task.cancel', taskId, attempt: a?.attempt ?? 1, reason: 'canceled while the delegate was away' });
    }
    this.deps.metrics.delegatesConnected.set(this.byDelegate.size);
    s.log.info({ version: h.version, capacity: h.capacity, running: h.running.length }, 'delegate connected');
    if (!s.closed) {
      await this.deps.scheduler.attach(s);
      this.emit('session.opened', s);
    }
  }

  private async onClosed(s: Session): Promise<void> {
    if (!s.hello || this.byDelegate.get(s.delegateId) !== s) return;
    this.byDelegate.delete(s.delegateId);
    this.deps.metrics.delegatesConnected.set(this.byDelegate.size);
    await s.idle();
    try {
      await this.deps.scheduler.detach(s.delegateId, s);
      await this.deps.store.writer.run((trx) => markDisconnected(trx, s.delegateId, s.sessionId, this.deps.clock.now()));
    } catch (err) {
      s.log.error({ err }, 'could not record the disconnect');
    }
    s.log.info('delegate disconnected');
    this.emit('session.closed', s);
  }

  private heartbeat(): void {
    const now = this.deps.clock.now();
    const limit = 3 * this.deps.config.heartbeatMs;
    const touched: Array<{ id: string; running: number }> = [];
    // one encoding for every session: at 10,000 sessions this is 2,000 frames a second
    const beat = encodeFrame({ type: 'heartbeat', at: now });
    let sent = 0;
    for (const s of this.all) {
      if (now - s.lastSeen > limit) {
        s.log.warn('missed three heartbeats; closing');
        s.close(CloseCode.HeartbeatTimeout, 'missed three heartbeat intervals');
        s.ws.terminate();
        continue;
      }
      if (!s.hello) continue;
      try { s.ws.ping(); } catch { /* closed meanwhile */ }
      if (s.sendEncoded(beat)) sent++;
      touched.push({ id: s.delegateId, running: s.running });
    }
    if (sent) this.deps.metrics.framesOut.inc({ type: 'heartbeat' }, sent);
    // last_seen_at and running counts reach the database every 30 s at most; listings
    // overlay the live values of this server's sessions.
    if (touched.length && now - this.lastFlush >= Math.max(30_000, this.deps.config.heartbeatMs)) {
      this.lastFlush = now;
      void this.touchMany(touched, now);
    }
  }

  private async touchMany(list: Array<{ id: string; running: number }>, now: number): Promise<void> {
    try {
      await this.deps.store.db.transaction().execute(async (trx) => {
        for (const t of list) {
          await trx.updateTable('delegates').set({ last_seen_at: now, running: t.running, connected: 1 }).where('id', '=', t.id).execute();
        }
      });
    } catch (err) {
      this.deps.logger.error({ err }, 'could not record heartbeats');
    }
  }

  // ---- used by other modules -------------------------------------------------------------

  session(delegateId: string): Session | undefined {
    return this.byDelegate.get(delegateId);
  }

  sessions(): Session[] {
    return [...this.byDelegate.values()];
  }

  onTokenRevoked(tokenId: string): void {
    for (const s of this.all) {
      if (s.tokenId === tokenId) s.close(CloseCode.TokenRevoked, 'the delegate token was revoked');
    }
  }

  onAccountRingChanged(accountId: string): void {
    this.emit('account.ring', accountId);
  }

  /** SIGTERM: close every session with "going away". */
  async closeAll(): Promise<void> {
    for (const s of this.all) s.close(CloseCode.GoingAway, 'server going away');
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    await Promise.all([...this.all].map((s) => s.idle()));
    this.wss.close();
  }

  get connectedCount(): number {
    return this.byDelegate.size;
  }
}

/** A close reason must fit in 123 bytes of UTF-8; cut on a character boundary. */
export function closeReason(reason: string): string {
  let r = reason.replace(/[^\x20-\x7e]/g, '?');
  if (r.length > 120) r = `${r.slice(0, 117)}...`;
  return r;
}

const interned = new Map<string, ReadonlySet<string>>();
/** Delegates of one pool share one set object for identical tag lists. */
function internSet(list: string[]): ReadonlySet<string> {
  const key = list.join('\u0000');
  let set = interned.get(key);
  if (!set) {
    set = new Set(list);
    if (interned.size < 10_000) interned.set(key, set);
  }
  return set;
}

function refuse(socket: Duplex, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  const text = { 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 500: 'Internal Server Error', 503: 'Service Unavailable' }[status] ?? 'Error';
  try {
    socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  } catch {
    socket.destroy();
  }
}
