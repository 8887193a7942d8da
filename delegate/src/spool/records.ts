/**
 * The spool's on-disk record formats.
 *
 * Segment log (current): the spool is a sequence of segment files `log-<16-digit id>.seg`,
 * shared by all task attempts. A segment is a sequence of records
 *
 *   [u32 BE length][u32 BE crc32][u8 type][u48 BE ref][payload]
 *
 * where `length` counts type + ref + payload (7 + payload bytes) and the crc32 (IEEE, as
 * zlib computes it) covers those same bytes. `ref` names the task attempt: a number the
 * spool assigns when it creates the attempt, above every ref found in the log when it was
 * opened, so one ref never names two attempts in the log. The first record of a segment
 * is a Segment record (ref 0). A record whose length is out of bounds, runs past the end
 * of the file or fails its crc ends the usable part of the segment: that is how a torn
 * tail (a crash mid-append) is recognised and cut off.
 *
 * Legacy per-task files (`*.spool`, written by earlier delegates and only read now to
 * migrate them): one file per task attempt, records `[u32 BE length][u8 type][payload]`
 * (length counts type + payload) without ref or checksum; the first record is the Meta.
 */
import * as zlib from 'node:zlib';

export const RecordType = {
  /** JSON TaskMeta; the first record of a task attempt (written again when it is carried forward) */
  Meta: 1,
  /** a msgpack delegate frame (log.chunk or task.result), exactly as sent on the wire */
  Frame: 2,
  /** u32 BE: every sequence up to here is acknowledged by the server */
  Ack: 3,
  /** JSON ProcessInfo: the process group the task started, to kill it after a worker crash */
  Process: 4,
  /** empty: the task attempt is done or forgotten; nothing of it is to be recovered (segments only) */
  Drop: 5,
  /** JSON SegmentHeader; the first record of every segment, ref 0 (segments only) */
  Segment: 6,
} as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

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

export interface SpoolEntry {
  seq: number;
  /** the encoded frame, sent as is */
  bytes: Buffer;
  result: boolean;
}

export interface SegmentHeader {
  /** format version of the segment; this code writes and reads 1 */
  v: 1;
  id: number;
}

// ---------------------------------------------------------------- crc32

type Crc32 = (data: Uint8Array, value?: number) => number;

let crcTable: Int32Array | null = null;

/** Table-driven crc32 for Node versions without zlib.crc32 (before 20.15). */
export function jsCrc32(data: Uint8Array, value = 0): number {
  if (!crcTable) {
    crcTable = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c;
    }
  }
  const table = crcTable;
  let c = ~value;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

export const crc32: Crc32 = (zlib as { crc32?: Crc32 }).crc32 ?? jsCrc32;

// ---------------------------------------------------------------- segment records

/** length + crc + type + ref */
export const SEG_RECORD_HEADER_BYTES = 15;
/** bytes of a segment record with this payload length */
export const segRecordBytes = (payloadBytes: number): number => SEG_RECORD_HEADER_BYTES + payloadBytes;

/** Writes one segment record into `buf` at `off`; returns the offset after it. */
export function putSegRecord(buf: Buffer, off: number, type: RecordType, ref: number, payload: Uint8Array): number {
  const end = off + SEG_RECORD_HEADER_BYTES + payload.length;
  buf.writeUInt32BE(7 + payload.length, off);
  buf.writeUInt8(type, off + 8);
  buf.writeUIntBE(ref, off + 9, 6);
  buf.set(payload, off + SEG_RECORD_HEADER_BYTES);
  buf.writeUInt32BE(crc32(buf.subarray(off + 8, end)), off + 4);
  return end;
}

export interface SegRecord {
  type: number;
  ref: number;
  payload: Buffer;
  /** offset of the record's first byte in the segment */
  offset: number;
}

/** Splits a segment into records; `validBytes` ends at the last whole record with a good crc. */
export function readSegRecords(buf: Buffer): { records: SegRecord[]; validBytes: number } {
  const records: SegRecord[] = [];
  let off = 0;
  while (off + SEG_RECORD_HEADER_BYTES <= buf.length) {
    const len = buf.readUInt32BE(off);
    if (len < 7 || len > MAX_RECORD_BYTES || off + 8 + len > buf.length) break;
    const body = buf.subarray(off + 8, off + 8 + len);
    if (crc32(body) !== buf.readUInt32BE(off + 4)) break;
    records.push({ type: body.readUInt8(0), ref: body.readUIntBE(1, 6), payload: body.subarray(7), offset: off });
    off += 8 + len;
  }
  return { records, validBytes: off };
}

export const jsonPayload = (value: unknown): Buffer => Buffer.from(JSON.stringify(value), 'utf8');

export function ackPayload(seq: number): Buffer {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(seq >>> 0, 0);
  return p;
}

// ---------------------------------------------------------------- legacy per-task files

export const LEGACY_RECORD_HEADER_BYTES = 5;

/** Encodes a legacy record (tests write legacy files with it). */
export function encodeLegacyRecord(type: RecordType, payload: Uint8Array): Buffer {
  const buf = Buffer.allocUnsafe(LEGACY_RECORD_HEADER_BYTES + payload.length);
  buf.writeUInt32BE(payload.length + 1, 0);
  buf.writeUInt8(type, 4);
  buf.set(payload, LEGACY_RECORD_HEADER_BYTES);
  return buf;
}

export interface RawRecord {
  type: number;
  payload: Buffer;
  /** offset of the record's first byte in the file */
  offset: number;
}

/** Splits a legacy file into records; `validBytes` ends at the last whole record. */
export function readLegacyRecords(buf: Buffer): { records: RawRecord[]; validBytes: number } {
  const records: RawRecord[] = [];
  let off = 0;
  while (off + LEGACY_RECORD_HEADER_BYTES <= buf.length) {
    const len = buf.readUInt32BE(off);
    if (len < 1 || len > MAX_RECORD_BYTES || off + 4 + len > buf.length) break;
    records.push({ type: buf.readUInt8(off + 4), payload: buf.subarray(off + LEGACY_RECORD_HEADER_BYTES, off + 4 + len), offset: off });
    off += 4 + len;
  }
  return { records, validBytes: off };
}
