/**
 * Reading the per-task spool files (`*.spool`) of delegates before the segment log. The
 * spool loads them once on open, writes their state into the log and deletes them.
 */
import { decodeDelegateFrame } from '@ferry/shared';
import { RecordType, readLegacyRecords, type ProcessInfo, type SpoolEntry, type TaskMeta } from './records.js';

export interface LegacyTask {
  meta: TaskMeta;
  /** highest acknowledged sequence recorded */
  acked: number;
  /** highest frame sequence in the file */
  maxSeq: number;
  resultSeq: number;
  process: ProcessInfo | undefined;
  /** every frame in the file, ascending, acknowledged ones included */
  frames: SpoolEntry[];
  /** bytes before a torn tail or the first garbled record */
  usableBytes: number;
}

/** Parses a legacy file; undefined when it has no task header. */
export function parseLegacySpool(buf: Buffer): LegacyTask | undefined {
  const { records, validBytes } = readLegacyRecords(buf);
  const first = records[0];
  let meta: TaskMeta | undefined;
  if (first?.type === RecordType.Meta) {
    try {
      const m = JSON.parse(first.payload.toString('utf8')) as TaskMeta;
      if (typeof m.taskId === 'string' && Number.isInteger(m.attempt) && m.attempt >= 1) meta = m;
    } catch { /* fall through */ }
  }
  if (!meta) return undefined;
  let acked = 0;
  let maxSeq = 0;
  let resultSeq = 0;
  let process: ProcessInfo | undefined;
  const frames: SpoolEntry[] = [];
  let usable = validBytes;
  for (const r of records.slice(1)) {
    if (r.type === RecordType.Ack && r.payload.length === 4) {
      acked = Math.max(acked, r.payload.readUInt32BE(0));
    } else if (r.type === RecordType.Process) {
      try { process = JSON.parse(r.payload.toString('utf8')) as ProcessInfo; } catch { /* ignore */ }
    } else if (r.type === RecordType.Frame) {
      const d = decodeDelegateFrame(r.payload);
      if (!d.ok || (d.frame.type !== 'log.chunk' && d.frame.type !== 'task.result') || d.frame.taskId !== meta.taskId || d.frame.seq <= maxSeq) {
        // A record that decodes to garbage ends the usable part, like a torn tail.
        usable = r.offset;
        break;
      }
      maxSeq = d.frame.seq;
      if (d.frame.type === 'task.result') resultSeq = d.frame.seq;
      frames.push({ seq: d.frame.seq, bytes: Buffer.from(r.payload), result: d.frame.type === 'task.result' });
    }
  }
  return { meta, acked, maxSeq, resultSeq, process, frames, usableBytes: usable };
}
