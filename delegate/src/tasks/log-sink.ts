/**
 * A task's log: lines are masked, timestamped and batched into log.chunk frames bounded
 * by time and size (lines and bytes), each appended to the task's spool. Batching adapts
 * to the pipeline: while fewer than IMMEDIATE_IN_FLIGHT of the task's chunks wait for an
 * acknowledgement, the lines of this tick go out at once (a person tailing a step sees
 * each line promptly, also under load); past that, lines gather for up to flushMs.
 */
import type { LogLine, Masker } from '@ferry/shared';
import type { Spool, TaskSpool } from '../spool/spool.js';

export interface ChunkLimits {
  maxLines: number;
  maxBytes: number;
  flushMs: number;
}

/** Chunk limits derived from the session limits the server announced. */
export function chunkLimits(limits: { maxFrameBytes: number; maxChunkLines: number }, flushMs: number): ChunkLimits {
  return {
    maxLines: Math.max(1, Math.min(limits.maxChunkLines, 10_000)),
    // half a frame leaves room for the frame's own fields and msgpack overhead
    maxBytes: Math.max(1024, Math.min(1 << 20, Math.floor(limits.maxFrameBytes / 2))),
    flushMs,
  };
}

/** Longest line in characters that fits a chunk even as 3-byte UTF-8. */
export const maxLineChars = (l: ChunkLimits): number => Math.max(64, Math.min(1 << 20, Math.floor((l.maxBytes - 256) / 3)));

/** Chunks of a task that may be unacknowledged before its lines are batched by time. */
export const IMMEDIATE_IN_FLIGHT = 4;

/** msgpack overhead of one line map {s, t, l} */
const LINE_OVERHEAD = 24;

export type Stream = 0 | 1 | 2;

export class LogSink {
  private lines: LogLine[] = [];
  private bytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private immediate: NodeJS.Immediate | null = null;
  private closed = false;
  private count = 0;

  constructor(
    private readonly task: TaskSpool,
    private readonly spool: Spool,
    private readonly masker: Masker,
    private readonly limits: () => ChunkLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /** Lines accepted so far. */
  get lineCount(): number {
    return this.count;
  }

  /**
   * True while the spool is full and this task holds more than its fair share: the
   * producer should stop reading until waitForRoom. A task writing little never pauses.
   */
  get shouldPause(): boolean {
    return this.task.mustWait;
  }

  waitForRoom(signal?: AbortSignal): Promise<void> {
    return this.task.waitForRoom(signal);
  }

  line(stream: Stream, text: string): void {
    if (this.closed) return;
    const limits = this.limits();
    const masked = this.masker.mask(text);
    const max = maxLineChars(limits);
    const t = this.now();
    if (masked.length <= max) {
      this.add({ s: stream, t, l: masked }, limits);
    } else {
      for (let i = 0; i < masked.length; i += max) this.add({ s: stream, t, l: masked.slice(i, i + max) }, limits);
    }
  }

  /** A line from the delegate itself (stream 2). */
  note(text: string): void {
    this.line(2, text);
  }

  private add(l: LogLine, limits: ChunkLimits): void {
    const size = Buffer.byteLength(l.l, 'utf8') + LINE_OVERHEAD;
    if (this.lines.length > 0 && this.bytes + size > limits.maxBytes) this.flush();
    this.lines.push(l);
    this.bytes += size;
    this.count += 1;
    if (this.lines.length >= limits.maxLines || this.bytes >= limits.maxBytes) {
      this.flush();
    } else if (!this.timer && !this.immediate) {
      if (this.task.lastSeq - this.task.ackedSeq < IMMEDIATE_IN_FLIGHT) {
        this.immediate = setImmediate(() => {
          this.immediate = null;
          this.flush();
        });
      } else {
        this.timer = setTimeout(() => {
          this.timer = null;
          this.flush();
        }, limits.flushMs);
      }
    }
  }

  /** Appends the buffered lines as one chunk. */
  flush(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.immediate) {
      clearImmediate(this.immediate);
      this.immediate = null;
    }
    if (this.lines.length === 0) return;
    const lines = this.lines;
    this.lines = [];
    this.bytes = 0;
    try {
      this.task.append((seq) => ({ type: 'log.chunk', taskId: this.task.taskId, attempt: this.task.attempt, seq, lines }));
    } catch {
      // the task was forgotten by the server meanwhile: nothing left to send to
    }
  }

  /** Flushes and refuses further lines. */
  close(): void {
    this.flush();
    this.closed = true;
  }
}
