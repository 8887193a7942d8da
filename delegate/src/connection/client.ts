/**
 * The delegate's WebSocket client: one session at a time, `hello` first, then frames by
 * type. Spooled chunks and results are pulled from the spool in sequence order and sent
 * within the server's limits; after a reconnect everything not acknowledged is sent
 * again. Reconnects use exponential backoff with full jitter and never give up.
 */
import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import {
  CloseCode, DEFAULT_LIMITS, FATAL_CLOSE_CODES, closeCodeName, decodeServerFrame, decodeDelegateFrame, encodeFrame,
  type DelegateFrame, type Hello, type ServerFrame, type SessionLimits, type Welcome,
} from '@ferry/shared';
import type { Logger } from 'pino';
import { taskKey, type Spool } from '../spool/spool.js';
import { Backoff } from './backoff.js';
import { RateLimiter } from './rate-limiter.js';

export type NonWelcomeFrame = Exclude<ServerFrame, Welcome>;

export interface ConnectionOptions {
  /** control plane base URL (http, https, ws or wss) */
  url: string;
  token: string;
  spool: Spool;
  backoff: Backoff;
  logger: Logger;
  /** built fresh for every session */
  hello: () => Hello;
  /** applied before anything is resent: acks and forget */
  onWelcome: (w: Welcome) => void | Promise<void>;
  onFrame: (f: NonWelcomeFrame) => void;
  /** what heartbeats report */
  status: () => { running: string[]; load: number };
  /** no welcome within this long after the socket opened: give up on the session (default 30s) */
  helloTimeoutMs?: number;
  /** a session up this long earns a reset of the backoff (default 30s) */
  stableSessionMs?: number;
}

export type SessionEnd =
  | { kind: 'close'; code: number; reason: string }
  | { kind: 'http'; status: number; body: string }
  | { kind: 'error'; message: string }
  | { kind: 'timeout'; message: string }
  | { kind: 'stopped' };

/** Bytes allowed in the socket's send buffer before the pump waits. */
const HIGH_WATER_BYTES = 4 << 20;
/**
 * Spooled bytes sent in a session and not yet acknowledged. The window keeps the queue in
 * front of the server short, so under load a quiet task's line is not stuck behind
 * megabytes of a loud one's (the pump takes tasks in turn); a full window still carries
 * far more than the server stores between two acknowledgements.
 */
export const SEND_WINDOW_BYTES = 256 << 10;

export function connectUrl(base: string): string {
  const u = new URL(base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/api/v1/delegate/connect`;
  return u.toString();
}

/** Whether an end of session means an operator must act (bad token, protocol mismatch). */
export function isFatalEnd(end: SessionEnd): boolean {
  if (end.kind === 'http') return end.status === 401 || end.status === 403;
  if (end.kind === 'close') return FATAL_CLOSE_CODES.includes(end.code);
  return false;
}

export function describeEnd(end: SessionEnd): Record<string, unknown> {
  switch (end.kind) {
    case 'close':
      return { reason: `closed ${end.code} ${closeCodeName(end.code)}${end.reason ? `: ${end.reason}` : ''}`, code: end.code, codeName: closeCodeName(end.code) };
    case 'http':
      return { reason: `upgrade refused with HTTP ${end.status}${end.body ? `: ${end.body}` : ''}`, status: end.status };
    case 'error':
      return { reason: `connection error: ${end.message}` };
    case 'timeout':
      return { reason: end.message };
    case 'stopped':
      return { reason: 'stopped' };
  }
}

class Session {
  readonly sent = new Map<string, number>();
  readonly control: Buffer[] = [];
  welcomed = false;
  lastReceived = Date.now();
  readonly openedAt = Date.now();
  end: SessionEnd | undefined;
  wake: (() => void) | null = null;
  timers: NodeJS.Timeout[] = [];
  /** the TCP socket under ws (from its upgrade response) */
  socket: Duplex | null = null;
  private corked = false;
  /** spooled frames sent and not acknowledged, per task key in sequence order */
  readonly unacked = new Map<string, Array<{ seq: number; bytes: number }>>();
  unackedBytes = 0;
  constructor(readonly ws: WebSocket) {}
  /**
   * Holds writes until the end of the tick, so the accepts, chunks and results made in one
   * tick leave in one write instead of one each.
   */
  cork(): void {
    const sock = this.socket;
    if (this.corked || !sock) return;
    this.corked = true;
    sock.cork();
    setImmediate(() => {
      this.corked = false;
      sock.uncork();
    });
  }
  get alive(): boolean {
    return this.ws.readyState === WebSocket.OPEN && this.end === undefined;
  }
  notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
  sentSpooled(key: string, seq: number, bytes: number): void {
    let list = this.unacked.get(key);
    if (!list) this.unacked.set(key, (list = []));
    list.push({ seq, bytes });
    this.unackedBytes += bytes;
  }
  /** Cumulative acknowledgement of a task's frames; true if it freed window room. */
  acked(key: string, seq: number): boolean {
    const list = this.unacked.get(key);
    if (!list) return false;
    let freed = 0;
    while (list.length > 0 && list[0]!.seq <= seq) freed += list.shift()!.bytes;
    if (list.length === 0) this.unacked.delete(key);
    this.unackedBytes -= freed;
    return freed > 0;
  }
  /** Forgets frames of tasks the spool no longer holds (dropped or forgotten: no ack will come). */
  prune(alive: (key: string) => boolean): void {
    for (const [key, list] of this.unacked) {
      if (alive(key)) continue;
      for (const e of list) this.unackedBytes -= e.bytes;
      this.unacked.delete(key);
    }
  }
}

/** Events: 'welcome' (Welcome), 'disconnected' (SessionEnd). */
export class Connection extends EventEmitter {
  private session: Session | null = null;
  private stopping = false;
  private loop: Promise<void> | null = null;
  private sleepCancel: (() => void) | null = null;
  private limits: SessionLimits = DEFAULT_LIMITS;
  private readonly limiter = new RateLimiter(DEFAULT_LIMITS.maxFramesPerSecond);
  private heartbeatMs = 10_000;
  /** sent once the next session is welcomed (e.g. an upgrade.status during a disconnect) */
  private deferred: DelegateFrame[] = [];
  /** the next session opens without the backoff delay (reconnectNow) */
  private immediate = false;
  private readonly onSpoolReady = (): void => this.session?.notify();

  constructor(private readonly opts: ConnectionOptions) {
    super();
  }

  get connected(): boolean {
    return this.session?.welcomed === true && this.session.alive;
  }

  get sessionLimits(): SessionLimits {
    return this.limits;
  }

  /** The server acknowledged a task's frames up to seq: frees send window room. */
  acked(taskId: string, attempt: number, seq: number): void {
    const s = this.session;
    if (s?.acked(taskKey(taskId, attempt), seq)) s.notify();
  }

  start(): void {
    if (this.loop) return;
    this.opts.spool.on('ready', this.onSpoolReady);
    this.loop = this.run();
  }

  /** Closes the session (1000) and stops reconnecting. */
  async stop(reason = 'delegate stopping'): Promise<void> {
    this.stopping = true;
    this.sleepCancel?.();
    const s = this.session;
    if (s && s.ws.readyState !== WebSocket.CLOSED) {
      const closed = new Promise<void>((r) => s.ws.once('close', () => r()));
      try {
        if (s.ws.readyState === WebSocket.OPEN) s.ws.close(CloseCode.Normal, reason);
        else s.ws.terminate();
      } catch { /* already closing */ }
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
      if ((s.ws.readyState as number) !== WebSocket.CLOSED) s.ws.terminate();
    }
    await this.loop;
    this.opts.spool.off('ready', this.onSpoolReady);
  }

  /**
   * Closes the current session and opens a new one at once, with a fresh hello (used
   * when probation ends: the server must see a normal session).
   */
  reconnectNow(reason: string): void {
    if (this.stopping || !this.loop) return;
    const s = this.session;
    if (!s || s.ws.readyState === WebSocket.CLOSED) {
      // between sessions: just cut the backoff wait short
      this.sleepCancel?.();
      return;
    }
    this.immediate = true;
    const close = (): void => {
      if (this.session !== s || s.ws.readyState === WebSocket.CLOSED) return;
      s.end ??= { kind: 'close', code: CloseCode.Normal, reason };
      try {
        if (s.ws.readyState === WebSocket.OPEN) s.ws.close(CloseCode.Normal, reason);
        else s.ws.terminate();
      } catch {
        s.ws.terminate();
      }
    };
    // control frames already queued (e.g. an upgrade.status) go out first, briefly
    const until = Date.now() + 1000;
    const poll = (): void => {
      if (s.control.length === 0 || !s.alive || Date.now() > until) close();
      else setTimeout(poll, 5);
    };
    poll();
  }

  /**
   * Sends a control frame (accept, reject, heartbeat, upgrade.status) ahead of spooled
   * data. Returns false if there is no welcomed session; with `defer`, the frame then
   * waits for the next session.
   */
  send(frame: DelegateFrame, opts: { defer?: boolean } = {}): boolean {
    const s = this.session;
    if (s?.welcomed && s.alive) {
      s.control.push(encodeFrame(frame));
      s.notify();
      return true;
    }
    if (opts.defer) this.deferred.push(frame);
    return false;
  }

  private async run(): Promise<void> {
    const { backoff, logger } = this.opts;
    while (!this.stopping) {
      const { end, welcomed, savedAttempts, upMs } = await this.runSession();
      if (this.stopping) break;
      if (this.immediate) {
        this.immediate = false;
        logger.info(describeEnd(end), 'reconnecting at once');
        continue;
      }
      // A session that was welcomed but died young does not earn the reset it got at welcome.
      if (welcomed && upMs < (this.opts.stableSessionMs ?? 30_000)) backoff.restore(savedAttempts);
      const fatal = isFatalEnd(end);
      const delayMs = fatal ? backoff.slow() : backoff.next();
      const info = { ...describeEnd(end), attempt: backoff.attempts, delayMs };
      if (fatal) logger.error(info, `connection refused; an operator must fix the token or version; retrying in ${delayMs}ms`);
      else if (end.kind === 'close' && end.code === CloseCode.Replaced) logger.warn(info, `another session with this delegate id took over; reconnecting in ${delayMs}ms`);
      else logger.warn(info, `disconnected; reconnecting in ${delayMs}ms`);
      await this.sleep(delayMs);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.sleepCancel = () => {
        this.sleepCancel = null;
        done();
      };
    });
  }

  private runSession(): Promise<{ end: SessionEnd; welcomed: boolean; savedAttempts: number; upMs: number }> {
    const { logger, backoff } = this.opts;
    return new Promise((resolve) => {
      let savedAttempts = backoff.attempts;
      let openedAt = Date.now();
      let ws: WebSocket;
      try {
        ws = new WebSocket(connectUrl(this.opts.url), {
          headers: { Authorization: `Bearer ${this.opts.token}` },
          perMessageDeflate: false,
          handshakeTimeout: 15_000,
          maxPayload: 64 << 20,
        });
      } catch (err) {
        resolve({ end: { kind: 'error', message: (err as Error).message }, welcomed: false, savedAttempts, upMs: 0 });
        return;
      }
      ws.binaryType = 'nodebuffer';
      const s = new Session(ws);
      this.session = s;
      const finish = (end: SessionEnd): void => {
        s.end ??= end;
      };

      ws.on('unexpected-response', (req, res: IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { if (body.length < 2048) body += d; });
        const done = (): void => {
          finish({ kind: 'http', status: res.statusCode ?? 0, body: summarizeErrorBody(body) });
          req.destroy();
          ws.terminate();
        };
        res.once('end', done);
        res.once('error', done);
        setTimeout(done, 2000).unref();
      });
      ws.on('upgrade', (res: IncomingMessage) => { s.socket = res.socket; });
      ws.on('open', () => {
        openedAt = Date.now();
        s.lastReceived = openedAt;
        try {
          ws.send(encodeFrame(this.opts.hello()));
        } catch (err) {
          finish({ kind: 'error', message: `sending hello: ${(err as Error).message}` });
          ws.terminate();
          return;
        }
        const helloTimeout = this.opts.helloTimeoutMs ?? 30_000;
        s.timers.push(setTimeout(() => {
          if (!s.welcomed) {
            finish({ kind: 'timeout', message: `no welcome within ${helloTimeout}ms` });
            ws.terminate();
          }
        }, helloTimeout));
      });
      ws.on('ping', () => { s.lastReceived = Date.now(); });
      ws.on('pong', () => { s.lastReceived = Date.now(); });
      ws.on('message', (data: Buffer) => {
        s.lastReceived = Date.now();
        const d = decodeServerFrame(data);
        if (!d.ok) {
          logger.error({ code: d.code, error: d.message }, 'invalid frame from the server; closing the session');
          finish({ kind: 'close', code: d.code, reason: d.message });
          ws.close(d.code, d.message.slice(0, 120));
          return;
        }
        const f = d.frame;
        if (f.type === 'welcome') {
          if (s.welcomed) {
            logger.warn('second welcome in one session; ignored');
            return;
          }
          s.welcomed = true;
          savedAttempts = backoff.attempts;
          backoff.reset();
          void this.welcome(s, f);
          return;
        }
        if (!s.welcomed) {
          logger.warn({ type: f.type }, 'frame before welcome; ignored');
          return;
        }
        try {
          this.opts.onFrame(f);
        } catch (err) {
          logger.error({ type: f.type, err: (err as Error).message }, 'handling a server frame failed');
        }
      });
      ws.on('error', (err) => {
        const code = (err as NodeJS.ErrnoException).code;
        finish({ kind: 'error', message: code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message });
      });
      ws.on('close', (code, reason) => {
        finish({ kind: 'close', code, reason: reason.toString('utf8') });
        for (const t of s.timers) clearTimeout(t);
        s.notify();
        if (this.session === s) this.session = null;
        const wasWelcomed = s.welcomed;
        if (wasWelcomed) this.emit('disconnected', s.end);
        resolve({ end: this.stopping ? { kind: 'stopped' } : s.end!, welcomed: wasWelcomed, savedAttempts, upMs: Date.now() - openedAt });
      });
    });
  }

  private async welcome(s: Session, w: Welcome): Promise<void> {
    const { logger } = this.opts;
    this.limits = w.limits;
    this.limiter.setRate(Math.max(1, Math.floor(w.limits.maxFramesPerSecond * 0.9)));
    this.heartbeatMs = w.heartbeatMs;
    try {
      await this.opts.onWelcome(w);
    } catch (err) {
      logger.error({ err: (err as Error).message }, 'applying welcome failed');
    }
    if (!s.alive) return;
    logger.info({ sessionId: w.sessionId, account: w.account, ring: w.ring, heartbeatMs: w.heartbeatMs, acks: w.acks.length, forget: w.forget.length, spooled: this.opts.spool.size }, 'connected');
    const deferred = this.deferred;
    this.deferred = [];
    for (const f of deferred) s.control.push(encodeFrame(f));
    s.timers.push(setInterval(() => this.heartbeat(s), this.heartbeatMs));
    s.timers.push(setInterval(() => {
      const silentMs = Date.now() - s.lastReceived;
      if (silentMs > 3 * this.heartbeatMs && s.end === undefined) {
        logger.warn({ silentMs }, 'nothing from the server for 3 heartbeat intervals; dropping the session');
        s.end = { kind: 'timeout', message: `nothing received for ${silentMs}ms` };
        s.ws.terminate();
      }
    }, Math.max(50, Math.floor(this.heartbeatMs / 2))));
    this.emit('welcome', w);
    void this.pump(s);
  }

  private heartbeat(s: Session): void {
    if (!s.alive) return;
    const st = this.opts.status();
    s.control.push(encodeFrame({ type: 'heartbeat', at: Date.now(), running: st.running.slice(0, 10_000), load: Math.max(0, st.load) }));
    s.notify();
  }

  /** Sends control frames first, then spooled entries in sequence, within the limits. */
  private async pump(s: Session): Promise<void> {
    const { spool, logger } = this.opts;
    while (s.alive) {
      if (s.ws.bufferedAmount > HIGH_WATER_BYTES) {
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      let bytes = s.control[0];
      let spooled: { key: string; seq: number } | undefined;
      if (!bytes && s.unackedBytes >= SEND_WINDOW_BYTES) {
        const live = new Set(spool.list().map((t) => t.key));
        s.prune((key) => live.has(key));
        if (s.unackedBytes >= SEND_WINDOW_BYTES) {
          await new Promise<void>((r) => { s.wake = r; });
          continue;
        }
      }
      if (!bytes) {
        const next = spool.nextToSend(s.sent);
        if (!next) {
          await new Promise<void>((r) => { s.wake = r; });
          continue;
        }
        bytes = next.entry.bytes;
        spooled = { key: next.task.key, seq: next.entry.seq };
      }
      const wait = this.limiter.take();
      if (wait > 0) {
        await new Promise((r) => setTimeout(r, wait));
        continue;
      }
      if (!spooled) s.control.shift();
      else {
        s.sent.set(spooled.key, spooled.seq);
        s.sentSpooled(spooled.key, spooled.seq, bytes.length);
      }
      if (bytes.length > this.limits.maxFrameBytes) {
        const smaller = shrinkFrame(bytes, this.limits.maxFrameBytes);
        logger.error({ bytes: bytes.length, maxFrameBytes: this.limits.maxFrameBytes }, 'frame larger than the server accepts; sending it cut down');
        bytes = smaller;
      }
      try {
        s.cork();
        s.ws.send(bytes, { binary: true });
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'send failed');
        return;
      }
    }
  }
}

function summarizeErrorBody(body: string): string {
  try {
    const j = JSON.parse(body) as { error?: { code?: string; message?: string } };
    if (j.error?.code) return `${j.error.code}: ${j.error.message ?? ''}`.slice(0, 300);
  } catch { /* not JSON */ }
  return body.replace(/\s+/g, ' ').trim().slice(0, 300);
}

/**
 * A spooled frame is larger than the server's frame limit (the limit went down after it
 * was spooled). Its sequence cannot change, so the frame is cut down to fit and says so.
 */
export function shrinkFrame(bytes: Buffer, maxFrameBytes: number): Buffer {
  const d = decodeDelegateFrame(bytes);
  if (!d.ok) return bytes;
  const f = d.frame;
  const budget = Math.max(256, maxFrameBytes - 1024);
  if (f.type === 'log.chunk') {
    const kept: typeof f.lines = [];
    let size = 0;
    for (const l of f.lines) {
      const n = Buffer.byteLength(l.l) + 24;
      if (size + n > budget - 200) break;
      kept.push(l);
      size += n;
    }
    const dropped = f.lines.length - kept.length;
    kept.push({ s: 2, t: Date.now(), l: `ferry: ${dropped} line(s) dropped: the chunk exceeded the server's frame limit of ${maxFrameBytes} bytes` });
    return encodeFrame({ ...f, lines: kept });
  }
  if (f.type === 'task.result') {
    const { data: _data, ...rest } = f;
    let smaller = encodeFrame(rest);
    if (smaller.length > maxFrameBytes) smaller = encodeFrame({ ...rest, outputs: {} });
    return smaller;
  }
  return bytes;
}
