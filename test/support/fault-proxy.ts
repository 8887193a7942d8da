/**
 * A TCP proxy that breaks the network on demand, for putting between a delegate and the
 * control plane: cut every live connection (`cutAll`), refuse new ones (`setBlocked`),
 * or stall traffic without closing anything (`pause`/`resume`, a silent partition).
 *
 *   const proxy = await startFaultProxy({ port: server.port });
 *   const delegate = startDelegate({ url: proxy.url, token });
 *   …
 *   proxy.cutAll();             // every delegate socket drops mid-stream
 *   await proxy.close();
 */
import { connect, createServer, type Server, type Socket } from 'node:net';

export interface FaultProxyTarget {
  host?: string;
  port: number;
}

export interface FaultProxyStats {
  /** connections accepted and forwarded since the start */
  accepted: number;
  /** connections open now */
  active: number;
  /** connections refused while blocked */
  refused: number;
  /** connections cut by cutAll() */
  cut: number;
  /** bytes forwarded client → target and target → client */
  bytesUp: number;
  bytesDown: number;
}

interface Pair {
  client: Socket;
  upstream: Socket;
}

export class FaultProxy {
  private readonly pairs = new Set<Pair>();
  private blocked = false;
  private paused = false;
  private readonly counters: FaultProxyStats = { accepted: 0, active: 0, refused: 0, cut: 0, bytesUp: 0, bytesDown: 0 };

  private constructor(private readonly server: Server, readonly port: number, readonly target: Required<FaultProxyTarget>) {}

  static async start(target: FaultProxyTarget, listenPort = 0): Promise<FaultProxy> {
    const t = { host: target.host ?? '127.0.0.1', port: target.port };
    const server = createServer({ pauseOnConnect: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listenPort, '127.0.0.1', () => resolve());
    });
    const addr = server.address();
    const proxy = new FaultProxy(server, typeof addr === 'object' && addr ? addr.port : 0, t);
    server.on('connection', (s) => proxy.onConnection(s));
    return proxy;
  }

  /** `http://127.0.0.1:PORT`: give this to the delegate instead of the server's URL. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get stats(): Readonly<FaultProxyStats> {
    return { ...this.counters, active: this.pairs.size };
  }

  get isBlocked(): boolean { return this.blocked; }
  get isPaused(): boolean { return this.paused; }

  private onConnection(client: Socket): void {
    if (this.blocked) {
      this.counters.refused++;
      client.resetAndDestroy();
      return;
    }
    this.counters.accepted++;
    const upstream = connect({ host: this.target.host, port: this.target.port });
    const pair: Pair = { client, upstream };
    this.pairs.add(pair);
    client.setNoDelay(true);
    upstream.setNoDelay(true);

    let closed = false;
    const closeBoth = () => {
      if (closed) return;
      closed = true;
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    this.forward(client, upstream, (n) => { this.counters.bytesUp += n; });
    this.forward(upstream, client, (n) => { this.counters.bytesDown += n; });
    client.on('error', closeBoth).on('close', closeBoth);
    upstream.on('error', closeBoth).on('close', closeBoth);
    // a half-close is passed on as one
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    // adding 'data' listeners set both flowing: hold the client until the target answers
    client.pause();
    if (this.paused) upstream.pause();
    upstream.once('connect', () => {
      if (!this.paused && !closed) client.resume();
    });
  }

  /** Copy data from `src` to `dst` with backpressure, holding everything while paused. */
  private forward(src: Socket, dst: Socket, count: (n: number) => void): void {
    src.on('data', (chunk: Buffer) => {
      count(chunk.length);
      if (!dst.write(chunk)) {
        src.pause();
        dst.once('drain', () => {
          if (!this.paused) src.resume();
        });
      }
    });
  }

  /** Destroy every live connection pair (both sides see the socket drop). `reset` sends RST instead of FIN. */
  cutAll(opts: { reset?: boolean } = {}): number {
    const n = this.pairs.size;
    for (const pair of [...this.pairs]) {
      this.pairs.delete(pair);
      if (opts.reset) {
        pair.client.resetAndDestroy();
        pair.upstream.resetAndDestroy();
      } else {
        pair.client.destroy();
        pair.upstream.destroy();
      }
    }
    this.counters.cut += n;
    return n;
  }

  /** While blocked, new connections are accepted and reset at once (existing ones live on). */
  setBlocked(blocked: boolean): void {
    this.blocked = blocked;
  }

  /** Stop forwarding on every connection (new ones too) without closing anything. */
  pause(): void {
    this.paused = true;
    for (const { client, upstream } of this.pairs) {
      client.pause();
      upstream.pause();
    }
  }

  resume(): void {
    this.paused = false;
    for (const { client, upstream } of this.pairs) {
      if (upstream.readyState === 'open') client.resume();
      upstream.resume();
    }
  }

  /** Close the listener and every connection. */
  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Start a proxy on 127.0.0.1 (a free port unless `listenPort`) forwarding to `target`. */
export function startFaultProxy(target: FaultProxyTarget, listenPort = 0): Promise<FaultProxy> {
  return FaultProxy.start(target, listenPort);
}
