/**
 * The wire codec: msgpack (msgpackr) plus schema validation. Decoding never throws:
 * a bad frame is a value `{ok: false, code, message}` handled in one place.
 * Records (msgpackr structures) are off: frames are small and varied, and plain maps
 * keep a session's codec stateless so a reconnect needs no reset.
 */
import { Packr, Unpackr } from 'msgpackr';
import { Ajv, type ValidateFunction } from 'ajv';
import type { TSchema } from '@sinclair/typebox';
import { CloseCode } from './protocol.js';
import {
  DelegateFrames, ServerFrames,
  type DelegateFrame, type ServerFrame,
} from './frames.js';

export type DecodeResult<F> =
  | { ok: true; frame: F }
  | { ok: false; code: number; message: string };

const ajv = new Ajv({ allErrors: false, strict: false, coerceTypes: false, useDefaults: false });

/**
 * Validators compiled once, on first use of each frame type: a process that only ever
 * sees a few types (a starting delegate worker, the supervisor) does not pay for the rest.
 */
class Catalogue {
  private readonly compiled = new Map<string, ValidateFunction>();
  constructor(private readonly schemas: Record<string, TSchema>) {}
  get(type: string): ValidateFunction | undefined {
    let v = this.compiled.get(type);
    if (v) return v;
    if (!Object.prototype.hasOwnProperty.call(this.schemas, type)) return undefined;
    v = ajv.compile(this.schemas[type]!);
    this.compiled.set(type, v);
    return v;
  }
}
const compileCatalogue = (cat: Record<string, TSchema>) => new Catalogue(cat);

const delegateValidators = compileCatalogue(DelegateFrames);
const serverValidators = compileCatalogue(ServerFrames);

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number' });
const unpackr = new Unpackr({ useRecords: false, moreTypes: false, int64AsType: 'number', mapsAsObjects: true });

export function encodeFrame(frame: DelegateFrame | ServerFrame): Buffer {
  return packr.pack(frame);
}

function decodeWith<F>(buf: Uint8Array, validators: Catalogue): DecodeResult<F> {
  let value: unknown;
  try {
    value = unpackr.unpack(buf);
  } catch (err) {
    return { ok: false, code: CloseCode.InvalidFrame, message: `not msgpack: ${(err as Error).message}`.slice(0, 120) };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, code: CloseCode.InvalidFrame, message: 'frame is not a map' };
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string') return { ok: false, code: CloseCode.InvalidFrame, message: 'frame has no type' };
  const validate = validators.get(type);
  if (!validate) return { ok: false, code: CloseCode.UnknownType, message: `unknown frame type ${JSON.stringify(type.slice(0, 40))}` };
  if (!validate(value)) {
    const e = validate.errors?.[0];
    return { ok: false, code: CloseCode.InvalidFrame, message: `invalid ${type}: ${e?.instancePath || '/'} ${e?.message ?? ''}`.slice(0, 120) };
  }
  return { ok: true, frame: value as F };
}

/** Server side: decode and validate a frame sent by a delegate. */
export const decodeDelegateFrame = (buf: Uint8Array): DecodeResult<DelegateFrame> => decodeWith(buf, delegateValidators);
/** Delegate side: decode and validate a frame sent by the server. */
export const decodeServerFrame = (buf: Uint8Array): DecodeResult<ServerFrame> => decodeWith(buf, serverValidators);

/** The same check without msgpack, for benchmarks and tests comparing with JSON. */
export function validateDelegateFrame(value: unknown): boolean {
  const type = (value as { type?: unknown })?.type;
  const v = typeof type === 'string' ? delegateValidators.get(type) : undefined;
  return !!v && v(value) === true;
}
