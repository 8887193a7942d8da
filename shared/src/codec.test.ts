import { describe, expect, it } from 'vitest';
import { pack } from 'msgpackr';
import { decodeDelegateFrame, decodeServerFrame, encodeFrame } from './codec.js';
import { CloseCode } from './protocol.js';
import { Masker } from './mask.js';
import { parseDuration } from './duration.js';

describe('codec', () => {
  it('round-trips every delegate frame and validates it', () => {
    const chunk = { type: 'log.chunk', taskId: 't1', attempt: 1, seq: 3, lines: [{ s: 0, t: 1, l: 'hello' }, { s: 1, t: 2, l: 'é ✓' }] } as const;
    const r = decodeDelegateFrame(encodeFrame(chunk));
    expect(r).toEqual({ ok: true, frame: chunk });
  });

  it('returns bad frames as values with a specific close code, never throws', () => {
    expect(decodeDelegateFrame(Buffer.from([0xc1]))).toMatchObject({ ok: false, code: CloseCode.InvalidFrame });
    expect(decodeDelegateFrame(pack([1, 2, 3]))).toMatchObject({ ok: false, code: CloseCode.InvalidFrame, message: 'frame is not a map' });
    expect(decodeDelegateFrame(pack({ x: 1 }))).toMatchObject({ ok: false, code: CloseCode.InvalidFrame, message: 'frame has no type' });
    expect(decodeDelegateFrame(pack({ type: 'welcome' }))).toMatchObject({ ok: false, code: CloseCode.UnknownType });
    const bad = decodeDelegateFrame(pack({ type: 'log.chunk', taskId: 't', attempt: 1, seq: 0, lines: [] }));
    expect(bad).toMatchObject({ ok: false, code: CloseCode.InvalidFrame });
    expect((bad as { message: string }).message).toMatch(/^invalid log.chunk: \/seq/);
    // A delegate frame is not a server frame and vice versa.
    expect(decodeServerFrame(encodeFrame({ type: 'task.accept', taskId: 't', attempt: 1 }))).toMatchObject({ ok: false, code: CloseCode.UnknownType });
  });
});

describe('masking', () => {
  it('masks a secret, its base64 and its URL-encoded forms, longest first', () => {
    const m = new Masker(['p@ss word/1', 'p@ss']);
    const b64 = Buffer.from('p@ss word/1').toString('base64');
    expect(m.mask(`a p@ss word/1 b ${b64} c ${encodeURIComponent('p@ss word/1')} d p@ss`)).toBe('a *** b *** c *** d ***');
    expect(new Masker([]).mask('nothing')).toBe('nothing');
  });
});

describe('durations', () => {
  it('parses the contract formats and refuses the rest', () => {
    expect([parseDuration('500ms'), parseDuration('30s'), parseDuration('5m'), parseDuration('1h'), parseDuration('1d'), parseDuration(250)]).toEqual([500, 30_000, 300_000, 3_600_000, 86_400_000, 250]);
    expect(parseDuration('5 minutes')).toBeUndefined();
    expect(parseDuration(-1)).toBeUndefined();
  });
});
