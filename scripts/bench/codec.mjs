// Codec: encode + decode + validate of a log.chunk frame of 100 lines, msgpackr (the wire
// path) against JSON (JSON.stringify + JSON.parse + the same validation) in the same run.
// Target: msgpackr path >= 1.5x JSON.
import { encodeFrame, decodeDelegateFrame, validateDelegateFrame } from '../../shared/dist/index.js';

const lines = [];
for (let i = 0; i < 100; i++) lines.push({ s: i % 7 === 0 ? 1 : 0, t: 1_795_000_000_000 + i, l: `2026-11-22T00:00:${String(i % 60).padStart(2, '0')}Z deploy step ${i}: rolling out replica ${i % 5} of loans-api` });
const frame = { type: 'log.chunk', taskId: '3f1c8a52-6f0e-4d0b-9a7e-5b0f0e6f2a11', attempt: 1, seq: 42, lines };

function bench(name, fn, ms = 1500) {
  for (let i = 0; i < 2000; i++) fn(); // warm up
  let n = 0;
  const t0 = process.hrtime.bigint();
  const end = Date.now() + ms;
  while (Date.now() < end) { for (let i = 0; i < 200; i++) fn(); n += 200; }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  return n / secs;
}

const msg = bench('msgpackr', () => {
  const r = decodeDelegateFrame(encodeFrame(frame));
  if (!r.ok) throw new Error(r.message);
});
const json = bench('json', () => {
  const v = JSON.parse(Buffer.from(JSON.stringify(frame)).toString());
  if (!validateDelegateFrame(v)) throw new Error('invalid');
});
const size = encodeFrame(frame).length;
const jsize = Buffer.byteLength(JSON.stringify(frame));
const ratio = msg / json;
console.log(`frame: log.chunk 100 lines: msgpackr ${size} B, JSON ${jsize} B (${(jsize / size).toFixed(2)}x larger)`);
console.log(`codec: msgpackr encode+decode+validate ${Math.round(msg)} frames/s; baseline JSON ${Math.round(json)} frames/s; ratio ${ratio.toFixed(2)}x; target >= 1.5x: ${ratio >= 1.5 ? 'PASS' : 'MISS'}`);
