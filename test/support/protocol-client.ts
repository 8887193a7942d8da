/**
 * A raw delegate-protocol client (CONTRACT §7) for fuzz tests and benchmarks: it speaks
 * the wire directly, so a test can send valid frames, frames out of order, or garbage.
 *
 *   const c = await connectProtocol(server.url, token);
 *   c.send(helloFrame({ capacity: 2 }));
 *   const welcome = await c.next('welcome');
 *   c.sendRaw(Buffer.from([0xc1]));            // not msgpack
 *   expect((await c.closed).code).toBe(CloseCode.InvalidFrame);
 */
import { randomUUID } from 'node:crypto';
import { pack } from 'msgpackr';
import WebSocket from 'ws';
import {
  decodeServerFrame, encodeFrame, PROTOCOL_VERSION,
  type DelegateFrame, type Hello, type ServerFrame, type ServerFrameOf, type ServerFrameType,
} from '@ferry/shared';

export const DELEGATE_CONNECT_PATH = '/api/v1/delegate/connect';

export interface CloseInfo {
  code: number;
  reason: string;
}

/** The upgrade was refused with an HTTP answer (e.g. 401 with the JSON error). */
export class UpgradeRefusedError extends Error {
  constructor(readonly status: number, readonly body: string, readonly headers: Record<string, string | string[] | undefined>) {
    super(`WebSocket upgrade refused: HTTP ${status} ${body.slice(0, 300)}`);
  }

  /** The body parsed as JSON (the contract's `{"error": {...}}`), or undefined. */
  json<T = { error: { code: string; message: string } }>(): T | undefined {
    try { return JSON.parse(this.body) as T; } catch { return undefined; }
  }
}

export interface ConnectOptions {
  /** default /api/v1/delegate/connect */
  path?: string;
  headers?: Record<string, string>;
  /** connect timeout, default 10 s */
  timeout?: number;
  /** largest frame this client accepts (ws maxPayload), default 64 MiB */
  maxPayload?: number;
}

interface Waiter {
  type: string | undefined;
  resolve: (f: ServerFrame) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class ProtocolClient {
  /** decoded frames not yet taken by next() */
  readonly queue: ServerFrame[] = [];
  /** every decoded frame, in order of arrival */
  readonly received: ServerFrame[] = [];
  /** frames from the server that failed to decode or validate */
  readonly invalid: { code: number; message: string; raw: Buffer }[] = [];
  readonly closed: Promise<CloseInfo>;
  private closeInfo: CloseInfo | undefined;
  private waiters: Waiter[] = [];

  constructor(readonly ws: WebSocket) {
    this.closed = new Promise<CloseInfo>((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') };
        for (const w of this.waiters.splice(0)) {
          clearTimeout(w.timer);
          w.reject(new Error(`connection closed (${code} ${this.closeInfo.reason}) while waiting for ${w.type ?? 'a frame'}`));
        }
        resolve(this.closeInfo);
      });
    });
    ws.on('error', () => { /* surfaces as 'close' */ });
    ws.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
      const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      const decoded = decodeServerFrame(buf);
      if (!decoded.ok) {
        this.invalid.push({ code: decoded.code, message: `${isBinary ? '' : '(text) '}${decoded.message}`, raw: buf });
        return;
      }
      this.received.push(decoded.frame);
      const i = this.waiters.findIndex((w) => w.type === undefined || w.type === decoded.frame.type);
      const w = i >= 0 ? this.waiters.splice(i, 1)[0] : undefined;
      if (w) {
        clearTimeout(w.timer);
        w.resolve(decoded.frame);
      } else {
        this.queue.push(decoded.frame);
      }
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Close info once closed, else undefined. */
  get closeStatus(): CloseInfo | undefined {
    return this.closeInfo;
  }

  /** Encode (msgpack, as the delegate does) and send a frame. */
  send(frame: DelegateFrame): void {
    this.ws.send(encodeFrame(frame), { binary: true });
  }

  /** msgpack-encode any value, valid or not, and send it as a binary frame. */
  sendValue(value: unknown): void {
    this.ws.send(pack(value), { binary: true });
  }

  /** Send bytes as they are (a string goes as a text frame). */
  sendRaw(data: Buffer | Uint8Array | string): void {
    this.ws.send(data, { binary: typeof data !== 'string' });
  }

  /**
   * The next server frame (of `type`, when given; frames of other types stay queued).
   * Rejects on timeout (default 10 s) or when the connection closes first.
   */
  next<T extends ServerFrameType>(type: T, timeout?: number): Promise<ServerFrameOf<T>>;
  next(type?: undefined, timeout?: number): Promise<ServerFrame>;
  next(type?: string, timeout = 10_000): Promise<ServerFrame> {
    const i = this.queue.findIndex((f) => type === undefined || f.type === type);
    if (i >= 0) return Promise.resolve(this.queue.splice(i, 1)[0] as ServerFrame);
    if (this.closeInfo) {
      return Promise.reject(new Error(`connection closed (${this.closeInfo.code} ${this.closeInfo.reason}) before ${type ?? 'a frame'}`));
    }
    return new Promise<ServerFrame>((resolve, reject) => {
      const w: Waiter = {
        type,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new Error(`no ${type ?? 'frame'} from the server within ${timeout} ms (queued: ${this.queue.map((f) => f.type).join(', ') || 'none'})`));
        }, timeout),
      };
      this.waiters.push(w);
    });
  }

  /** Send a delegate heartbeat. */
  heartbeat(running: string[] = [], load = 0): void {
    this.send({ type: 'heartbeat', at: Date.now(), running, load });
  }

  /** Close (default 1000) and wait for the close handshake (or a forced end after 5 s). */
  async close(code = 1000, reason = ''): Promise<CloseInfo> {
    if (this.closeInfo) return this.closeInfo;
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close(code, reason);
    const timer = setTimeout(() => this.ws.terminate(), 5_000);
    try {
      return await this.closed;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Drop the TCP connection without a close frame. */
  terminate(): void {
    this.ws.terminate();
  }
}

/** `http://host:port` (or ws://) → the delegate endpoint's ws:// URL. */
export function delegateEndpoint(baseUrl: string, path = DELEGATE_CONNECT_PATH): string {
  const u = new URL(baseUrl);
  u.protocol = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
  u.pathname = path;
  return u.toString();
}

/**
 * Open a WebSocket to the delegate endpoint with `token`. Rejects with UpgradeRefusedError
 * when the server answers the upgrade with an HTTP status instead.
 */
export function connectProtocol(baseUrl: string, token: string | undefined, opts: ConnectOptions = {}): Promise<ProtocolClient> {
  const headers: Record<string, string> = { ...opts.headers };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const ws = new WebSocket(delegateEndpoint(baseUrl, opts.path), {
    headers,
    maxPayload: opts.maxPayload ?? 64 * 1024 * 1024,
    perMessageDeflate: false,
    handshakeTimeout: opts.timeout ?? 10_000,
  });
  // attach the client's listeners now so no early frame is missed
  const client = new ProtocolClient(ws);
  return new Promise<ProtocolClient>((resolve, reject) => {
    ws.once('open', () => resolve(client));
    ws.once('unexpected-response', (req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        reject(new UpgradeRefusedError(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8'), res.headers));
        req.destroy();
      });
      res.on('error', () => reject(new UpgradeRefusedError(res.statusCode ?? 0, '', res.headers)));
    });
    ws.once('error', (err) => reject(err));
  });
}

/** A valid hello (fresh delegate id unless given). */
export function helloFrame(overrides: Partial<Omit<Hello, 'type'>> = {}): Hello {
  return {
    type: 'hello',
    protocol: PROTOCOL_VERSION,
    delegateId: randomUUID(),
    name: `raw-${process.pid}`,
    version: '0.0.0-test',
    tags: [],
    capabilities: ['shell'],
    capacity: 1,
    running: [],
    ...overrides,
  };
}

/** Connect, send a hello, and wait for the welcome. */
export async function connectAndHello(
  baseUrl: string, token: string, hello: Partial<Omit<Hello, 'type'>> = {}, opts: ConnectOptions = {},
): Promise<{ client: ProtocolClient; hello: Hello; welcome: ServerFrameOf<'welcome'> }> {
  const client = await connectProtocol(baseUrl, token, opts);
  const h = helloFrame(hello);
  client.send(h);
  try {
    const welcome = await client.next('welcome', opts.timeout ?? 10_000);
    return { client, hello: h, welcome };
  } catch (err) {
    client.terminate();
    throw err;
  }
}
