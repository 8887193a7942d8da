/**
 * The spool file format: one append-only file per task attempt, a sequence of
 * length-prefixed records `[u32 BE length][u8 type][payload]` (length counts type + payload).
 * A torn tail (a crash mid-append) is detected by its length and cut off on reopen.
 */
export const RecordType = {
  /** JSON TaskMeta; always the first record */
  Meta: 1,
  /** a msgpack delegate frame (log.chunk or task.result), exactly as sent on the wire */
  Frame: 2,
  /** u32 BE: every sequence up to here is acknowledged by the server */
  Ack: 3,
  /** JSON ProcessInfo: the process group the task started, to kill it after a worker crash */
  Process: 4,
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

export const RECORD_HEADER_BYTES = 5;
/** Larger than any frame the delegate writes; a bigger length means a corrupt file. */
export const MAX_RECORD_BYTES = 256 * 1024 * 1024;

export interface TaskMeta {
  v: 1;
  taskId: string;
  attempt: number;
  startedAt: number;
  kind?: string;
}

export interface ProcessInfo {
  pid: number;
  /** /proc start time of the process (Linux), guards against a recycled pid */
  startTime?: string;
}

export function encodeRecord(type: RecordType, payload: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + payload.length);
  buf.writeUInt32BE(payload.length + 1, 0);
  buf.writeUInt8(type, 4);
  buf.set(payload, RECORD_HEADER_BYTES);
  return buf;
}

export const encodeJsonRecord = (type: RecordType, value: unknown): Buffer =>
  encodeRecord(type, Buffer.from(JSON.stringify(value), 'utf8'));

export function encodeAckRecord(seq: number): Buffer {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(seq >>> 0, 0);
  return encodeRecord(RecordType.Ack, p);
}

export interface RawRecord {
  type: number;
  payload: Buffer;
  /** offset of the record's first byte in the file */
  offset: number;
}

/** Splits a file into records; `validBytes` ends at the last whole record. */
export function readRecords(buf: Buffer): { records: RawRecord[]; validBytes: number } {
  const records: RawRecord[] = [];
  let off = 0;
  while (off + RECORD_HEADER_BYTES <= buf.length) {
    const len = buf.readUInt32BE(off);
    if (len < 1 || len > MAX_RECORD_BYTES || off + 4 + len > buf.length) break;
    records.push({ type: buf.readUInt8(off + 4), payload: buf.subarray(off + RECORD_HEADER_BYTES, off + 4 + len), offset: off });
    off += 4 + len;
  }
  return { records, validBytes: off };
}
