/**
 * Recovery of the segment log: replays segments in order and rebuilds the state of every
 * task attempt that is neither dropped nor done. Pure (no file system), so the spool can
 * decide what to do with the files.
 */
import { decodeDelegateFrame } from '@ferry/shared';
import type { LegacyTask } from './legacy.js';
import { RecordType, readSegRecords, type ProcessInfo, type SpoolEntry, type TaskMeta } from './records.js';

export const taskKey = (taskId: string, attempt: number): string => `${taskId}\u0000${attempt}`;

export interface ReplayedTask {
  ref: number;
  meta: TaskMeta;
  key: string;
  acked: number;
  /** highest frame sequence seen */
  maxSeq: number;
  resultSeq: number;
  process: ProcessInfo | undefined;
  /** frames seen, ascending by sequence, without duplicates */
  frames: SpoolEntry[];
  dropped: boolean;
}

export interface SegmentReplay {
  /** bytes up to the end of the last usable record */
  usable: number;
  /** why the usable part ends before the end of the file */
  problem?: string;
  /** a segment of a format version this code does not know: leave it alone */
  unsupported?: boolean;
}

/** The state a TaskSpool is rebuilt from. */
export interface RecoveredState {
  entries: SpoolEntry[];
  lastSeq: number;
  ackedSeq: number;
  resultSeq: number;
  process: ProcessInfo | undefined;
}

function parseMeta(payload: Buffer): TaskMeta | undefined {
  try {
    const m = JSON.parse(payload.toString('utf8')) as TaskMeta;
    if (typeof m.taskId === 'string' && Number.isInteger(m.attempt) && m.attempt >= 1) return m;
  } catch { /* garbage */ }
  return undefined;
}

export class LogReplay {
  /** every ref seen with a Meta, the dropped ones included */
  private readonly byRef = new Map<number, ReplayedTask>();
  /** task attempts not dropped, in the order their Meta first appeared */
  readonly live = new Map<string, ReplayedTask>();
  /** every task attempt the log has a Meta of, dropped or not */
  private readonly seenKeys = new Set<string>();
  /** highest ref in any record read; new refs are above it */
  maxRef = 0;

  /** Replays one segment (they must come in ascending id order). */
  segment(buf: Buffer): SegmentReplay {
    const { records, validBytes } = readSegRecords(buf);
    let usable = validBytes;
    let problem = validBytes < buf.length ? 'torn or corrupt record' : undefined;
    const head = records[0];
    if (!head) return { usable: 0, ...(buf.length > 0 ? { problem: 'no segment header' } : {}) };
    if (head.type !== RecordType.Segment) return { usable: 0, problem: 'no segment header' };
    let version: unknown;
    try { version = (JSON.parse(head.payload.toString('utf8')) as { v?: unknown }).v; } catch { /* below */ }
    if (version !== 1) return { usable: 0, unsupported: true, problem: `segment format version ${String(version)}` };

    for (let i = 1; i < records.length; i++) {
      const r = records[i]!;
      if (r.ref > this.maxRef) this.maxRef = r.ref;
      if (r.type === RecordType.Meta) {
        const meta = parseMeta(r.payload);
        if (!meta) {
          usable = r.offset;
          problem = 'garbled task header';
          break;
        }
        this.meta(r.ref, meta);
        continue;
      }
      const t = this.byRef.get(r.ref);
      // A record without a known Meta belongs to an attempt whose older segments were
      // reclaimed after it was dropped (or finished): nothing to recover.
      if (!t || t.dropped) continue;
      if (r.type === RecordType.Frame) {
        const d = decodeDelegateFrame(r.payload);
        if (!d.ok || (d.frame.type !== 'log.chunk' && d.frame.type !== 'task.result') || d.frame.taskId !== t.meta.taskId || d.frame.attempt !== t.meta.attempt) {
          // A record that decodes to garbage ends the usable part, like a torn tail.
          usable = r.offset;
          problem = 'garbled frame';
          break;
        }
        const seq = d.frame.seq;
        // Carried-forward frames repeat ones already seen in older segments.
        if (seq <= t.maxSeq) continue;
        t.maxSeq = seq;
        const result = d.frame.type === 'task.result';
        if (result) t.resultSeq = seq;
        t.frames.push({ seq, bytes: Buffer.from(r.payload), result });
      } else if (r.type === RecordType.Ack) {
        if (r.payload.length === 4) t.acked = Math.max(t.acked, r.payload.readUInt32BE(0));
      } else if (r.type === RecordType.Process) {
        try { t.process = JSON.parse(r.payload.toString('utf8')) as ProcessInfo; } catch { /* ignore */ }
      } else if (r.type === RecordType.Drop) {
        t.dropped = true;
        if (this.live.get(t.key) === t) this.live.delete(t.key);
      }
      // other types: written by a newer version; skipped
    }
    return { usable, ...(problem ? { problem } : {}) };
  }

  private meta(ref: number, meta: TaskMeta): void {
    const key = taskKey(meta.taskId, meta.attempt);
    this.seenKeys.add(key);
    const known = this.byRef.get(ref);
    // the same attempt again: written when it was carried forward into a newer segment
    if (known && !known.dropped && known.key === key) return;
    const live = this.live.get(key);
    if (live) {
      this.byRef.set(ref, live);
      return;
    }
    const t: ReplayedTask = { ref, meta, key, acked: 0, maxSeq: 0, resultSeq: 0, process: undefined, frames: [], dropped: false };
    this.byRef.set(ref, t);
    this.live.set(key, t);
  }

  /**
   * Adds a task attempt read from a legacy per-task file. Returns undefined when the log
   * already has this attempt (it was migrated before, the file is stale).
   */
  addLegacy(l: LegacyTask): ReplayedTask | undefined {
    const key = taskKey(l.meta.taskId, l.meta.attempt);
    if (this.seenKeys.has(key)) return undefined;
    this.seenKeys.add(key);
    const t: ReplayedTask = {
      ref: ++this.maxRef, meta: l.meta, key, acked: l.acked, maxSeq: l.maxSeq, resultSeq: l.resultSeq, process: l.process, frames: l.frames, dropped: false,
    };
    this.byRef.set(t.ref, t);
    this.live.set(key, t);
    return t;
  }
}

/**
 * What a TaskSpool is rebuilt from, or undefined when the attempt is done (its result is
 * acknowledged: nothing left to send). The entries are the frames above the ack position,
 * contiguous; lastSeq covers every sequence ever written or acknowledged.
 */
export function recoveredState(t: ReplayedTask): { state?: RecoveredState; gapAt?: number } {
  if (t.resultSeq > 0 && t.acked >= t.resultSeq) return {};
  const entries: SpoolEntry[] = [];
  let next = t.acked + 1;
  let gapAt: number | undefined;
  for (const f of t.frames) {
    if (f.seq < next) continue;
    if (f.seq !== next) {
      gapAt = next;
      break;
    }
    entries.push(f);
    next++;
  }
  const state: RecoveredState = { entries, lastSeq: Math.max(t.maxSeq, t.acked), ackedSeq: t.acked, resultSeq: t.resultSeq, process: t.process };
  return gapAt === undefined ? { state } : { state, gapAt };
}
