#!/usr/bin/env node
// `pnpm demo`: the local-service example (examples/local-service/) end to end, against a
// fresh data dir, with a real `ferry server` and a real `ferry-delegate`:
//
//   1. deploy v1: dev → approval (approved with `ferry approve`) → prod     → Succeeded
//   2. deploy v2: its prod health check fails (a config file is missing), the stage rolls
//      back to v1 (the last version that succeeded there)                  → Failed
//   3. the fix: create the config file, `ferry resume ID --from-stage prod` → Succeeded
//
// Streams progress and logs (`ferry run --follow`), prints the final status trees, stops
// everything it started (also the demo service's processes) and exits 0 — or 1 with the
// reason when anything is not as it should be. FERRY_DEMO_KEEP=1 keeps the temp dir.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FERRY = path.join(root, 'control-plane', 'bin', 'ferry.js');
const DELEGATE = path.join(root, 'delegate', 'bin', 'ferry-delegate.js');
const EXAMPLE = path.join(root, 'examples', 'local-service');
const KEEP = process.env.FERRY_DEMO_KEEP === '1';
const TIMEOUT_MS = Number(process.env.FERRY_DEMO_TIMEOUT_MS ?? 150_000);

const started = Date.now();
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-demo-'));
const dataDir = path.join(work, 'data');
const services = path.join(work, 'services');
const logFile = path.join(work, 'processes.log');
fs.mkdirSync(dataDir, { recursive: true });
fs.mkdirSync(services, { recursive: true });
const processLog = fs.createWriteStream(logFile);

class DemoError extends Error {}
const fail = (msg) => { throw new DemoError(msg); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = (s = '') => process.stdout.write(`${s}\n`);
const tty = Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
const style = (code, s) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const heading = (s) => out(`\n${style(1, `━━ ${s}`)}`);
const note = (s) => out(style(2, `# ${s}`));
const command = (args) => out(style(36, `$ ferry ${shown(args)}`));
const shown = (args) => args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(' ');

/** The environment for Ferry processes: none of the caller's FERRY_* settings leak in. */
function env(extra) {
  const e = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('FERRY_')) e[k] = v;
  return { ...e, ...extra };
}

// ---- the processes ----------------------------------------------------------------------

const children = [];
let server = null;
let delegate = null;
let url = '';
let token = '';

function track(child, name) {
  children.push(child);
  child.stdout?.on('data', (d) => processLog.write(`[${name}] ${d}`));
  child.stderr?.on('data', (d) => processLog.write(`[${name}] ${d}`));
  child.exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  return child;
}

async function startServer() {
  server = track(spawn(process.execPath, [FERRY, 'server'], {
    env: env({ FERRY_LISTEN: '127.0.0.1:0', FERRY_DATA_DIR: dataDir, FERRY_LOG_LEVEL: 'warn' }),
    stdio: ['ignore', 'pipe', 'pipe'],
  }), 'server');
  url = await new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new DemoError('ferry server did not say "listening on" within 30 s')), 30_000);
    server.stdout.on('data', (d) => {
      buf += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(buf);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    server.once('exit', (code) => { clearTimeout(timer); reject(new DemoError(`ferry server exited with ${code} before it listened`)); });
  });
  const file = path.join(dataDir, 'admin-token');
  for (let i = 0; i < 100 && !fs.existsSync(file); i++) await sleep(50);
  token = fs.readFileSync(file, 'utf8').trim();
}

/** Runs the CLI and collects its output (printing the command unless quiet). */
function ferry(args, o = {}) {
  if (!o.quiet) command(args);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FERRY, ...args], { env: env({ FERRY_URL: url, FERRY_TOKEN: token }), stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    child.exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; if (o.show) process.stdout.write(d); });
    child.stderr.on('data', (d) => { stderr += d; if (o.show) process.stderr.write(d); });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function ferryOk(args, o = {}) {
  const r = await ferry(args, o);
  if (r.code !== 0) fail(`\`ferry ${shown(args)}\` exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
  return r;
}

const json = async (args) => JSON.parse((await ferryOk([...args, '--json'], { quiet: true })).stdout);

/**
 * Starts a streaming command (`ferry run … --follow`, `ferry resume … --follow`), its
 * output shown as it comes. Resolves `id` with the execution id the first line names.
 */
function stream(args) {
  command(args);
  const child = track(spawn(process.execPath, [FERRY, ...args], { env: env({ FERRY_URL: url, FERRY_TOKEN: token }), stdio: ['ignore', 'pipe', 'pipe'] }), 'cli');
  let resolveId;
  const id = new Promise((r) => { resolveId = r; });
  const lines = (from, onLine) => {
    let partial = '';
    from.on('data', (d) => {
      const parts = (partial + d).split('\n');
      partial = parts.pop();
      for (const l of parts) onLine(l);
    });
    from.on('end', () => { if (partial) onLine(partial); });
  };
  lines(child.stdout, (l) => {
    out(`  │ ${l}`);
    const m = /^execution (\S+) of /.exec(l);
    if (m) resolveId(m[1]);
  });
  lines(child.stderr, (l) => out(`  │ ${l}`));
  const closed = new Promise((r) => child.once('close', r));
  const code = child.exited.then(async (e) => { await Promise.race([closed, sleep(2000)]); return e.code ?? 128; });
  return { id, code };
}

async function waitFor(what, fn, timeout = 60_000) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) fail(`timed out after ${timeout / 1000} s waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(250);
  }
}

const stageOf = (doc, id) => doc.stages.find((s) => s.id === id) ?? fail(`execution ${doc.id} has no stage ${id}`);
const pairOf = (a) => (a ? `<${a.status}, ${a.operationStatus}>` : '(no attempt)');
const lastAttempt = (s) => s.attempts[s.attempts.length - 1];

function expect(cond, msg) {
  if (!cond) fail(msg);
}

/** What the prod (or dev) instance of the service answers now. */
async function answer(env) {
  const port = fs.readFileSync(path.join(services, env, 'port'), 'utf8').trim();
  const r = await fetch(`http://127.0.0.1:${port}/`);
  return (await r.text()).trim();
}

/** Waits for the approval stage to wait, then approves it with `ferry approve`. */
async function approveWhenAsked(id, comment) {
  await waitFor('the approval of prod to wait', async () => {
    const d = await json(['execution', id]);
    if (['Failed', 'Aborted', 'Rejected', 'Expired'].includes(d.status)) fail(`execution ${id} ended ${d.status} before its approval`);
    const a = lastAttempt(stageOf(d, 'approve-prod'));
    return a && a.status === 'NotDeployed' && a.operationStatus === 'Pending';
  });
  note('the approval waits: <NotDeployed, Pending>. A person approves it:');
  await ferryOk(['approve', id, '--stage', 'approve-prod', '--comment', comment], { show: true });
}

// ---- clean-up -------------------------------------------------------------------------------

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** The demo service's processes (deploy.sh keeps their pid in services/ENV/pid). */
async function stopServices() {
  const pids = [];
  for (const e of fs.existsSync(services) ? fs.readdirSync(services) : []) {
    const f = path.join(services, e, 'pid');
    if (!fs.existsSync(f)) continue;
    const pid = Number(fs.readFileSync(f, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 1 && alive(pid)) pids.push(pid);
  }
  for (const pid of pids) { try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ } }
  const end = Date.now() + 5000;
  while (pids.some(alive) && Date.now() < end) await sleep(50);
  for (const pid of pids.filter(alive)) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  return pids.length;
}

async function stopChild(child, name, timeout = 15_000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const r = await Promise.race([child.exited, sleep(timeout).then(() => null)]);
  if (!r) {
    child.kill('SIGKILL');
    await child.exited;
    throw new DemoError(`${name} did not stop within ${timeout / 1000} s of SIGTERM (killed)`);
  }
}

let cleaning = null;
function cleanup() {
  cleaning ??= (async () => {
    const problems = [];
    const n = await stopServices().catch((e) => { problems.push(e.message); return 0; });
    for (const c of children.filter((x) => x !== server && x !== delegate)) await stopChild(c, 'ferry CLI', 5000).catch((e) => problems.push(e.message));
    await stopChild(delegate, 'ferry-delegate').catch((e) => problems.push(e.message));
    await stopChild(server, 'ferry server').catch((e) => problems.push(e.message));
    await new Promise((r) => processLog.end(r));
    return { services: n, problems };
  })();
  return cleaning;
}

function interrupted(sig) {
  out(`\n${sig}: stopping…`);
  void cleanup().finally(() => {
    if (!KEEP) fs.rmSync(work, { recursive: true, force: true });
    process.exit(130);
  });
}
process.on('SIGINT', () => interrupted('SIGINT'));
process.on('SIGTERM', () => interrupted('SIGTERM'));

// ---- the demo --------------------------------------------------------------------------------

async function demo() {
  for (const f of [FERRY, DELEGATE, path.join(root, 'control-plane', 'dist'), path.join(root, 'delegate', 'dist')]) {
    if (!fs.existsSync(f)) fail(`${path.relative(root, f)} is missing: run \`pnpm install\` (or \`pnpm build\`) first`);
  }
  heading('Ferry demo: the local-service example (examples/local-service/)');
  note(`a fresh data dir: ${dataDir}`);
  await startServer();
  note(`ferry server listens on ${url}`);

  const created = await json(['token', 'create', '--kind', 'delegate', '--name', 'demo-delegate']);
  delegate = track(spawn(process.execPath, [DELEGATE], {
    env: env({
      FERRY_URL: url, FERRY_DELEGATE_TOKEN: created.token, FERRY_DELEGATE_NAME: 'local',
      FERRY_DELEGATE_TAGS: 'local', FERRY_STATE_DIR: path.join(work, 'delegate'), FERRY_LOG_LEVEL: 'warn',
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  }), 'delegate');
  delegate.exited.then((e) => { if (!cleaning) processLog.write(`[demo] the delegate exited unexpectedly: ${JSON.stringify(e)}\n`); });
  await waitFor('the delegate to connect', async () => (await json(['delegates'])).some((d) => d.name === 'local' && d.connected), 60_000);
  await ferryOk(['delegates'], { show: true });
  await ferryOk(['pipeline', 'apply', '-f', path.relative(process.cwd(), path.join(EXAMPLE, 'pipeline.yaml')) || path.join(EXAMPLE, 'pipeline.yaml')], { show: true });
  const inputs = ['--input', `root=${EXAMPLE}`, '--input', `state=${services}`];

  // 1. v1 ------------------------------------------------------------------------------------
  heading('1/3  deploy v1: dev, then an approval, then prod');
  const run1 = stream(['run', 'local-service', '--artifact', 'v1', ...inputs, '--follow']);
  const v1 = await Promise.race([run1.id, run1.code.then((c) => fail(`ferry run exited ${c} before it named the execution`))]);
  await approveWhenAsked(v1, 'v1 looks good in dev');
  const code1 = await run1.code;
  expect(code1 === 0, `ferry run --follow of v1 exited ${code1}, expected 0 (the execution should have Succeeded)`);
  const d1 = await json(['execution', v1]);
  expect(d1.status === 'Succeeded', `execution ${v1} is ${d1.status}, expected Succeeded`);
  for (const s of d1.stages) expect(s.status === 'Succeeded', `stage ${s.id} of ${v1} is ${s.status}, expected Succeeded`);
  const a1 = await answer('prod');
  expect(a1 === 'hello from v1', `prod answers "${a1}", expected "hello from v1"`);
  note(`prod answers: ${a1}`);

  // 2. v2, which fails its health check in prod ------------------------------------------------
  heading('2/3  deploy v2: healthy in dev, but prod lacks its config: the health check fails and prod rolls back to v1');
  fs.mkdirSync(path.join(services, 'prod'), { recursive: true });
  fs.writeFileSync(path.join(services, 'prod', 'needs-config'), 'v2\n');
  note(`v2 needs ${path.join(services, 'prod', 'config-v2')} in prod; it is not there yet`);
  const run2 = stream(['run', 'local-service', '--artifact', 'v2', ...inputs, '--follow']);
  const v2 = await Promise.race([run2.id, run2.code.then((c) => fail(`ferry run exited ${c} before it named the execution`))]);
  await approveWhenAsked(v2, 'v2 looks good in dev');
  const code2 = await run2.code;
  expect(code2 === 1, `ferry run --follow of v2 exited ${code2}, expected 1 (the execution should have Failed)`);
  const d2 = await json(['execution', v2]);
  expect(d2.status === 'Failed', `execution ${v2} is ${d2.status}, expected Failed`);
  expect(stageOf(d2, 'dev').status === 'Succeeded', `stage dev of ${v2} is ${stageOf(d2, 'dev').status}, expected Succeeded`);
  const prod2 = stageOf(d2, 'prod');
  expect(prod2.status === 'Failed', `stage prod of ${v2} is ${prod2.status}, expected Failed`);
  expect(pairOf(lastAttempt(prod2)) === '<Failed, PhaseFailed>', `prod's attempt is ${pairOf(lastAttempt(prod2))}, expected <Failed, PhaseFailed>`);
  expect(prod2.rolledBack === true, `stage prod of ${v2} was not rolled back (rolledBack: ${prod2.rolledBack})`);
  expect(prod2.rollbackArtifact === 'v1', `stage prod of ${v2} rolled back to ${prod2.rollbackArtifact}, expected v1`);
  const a2 = await answer('prod');
  expect(a2 === 'hello from v1', `after the rollback prod answers "${a2}", expected "hello from v1"`);
  note(`prod was rolled back and answers: ${a2}`);

  // 3. the fix and the resume -------------------------------------------------------------------
  heading('3/3  the fix: create the config v2 needs, then resume from prod (dev and the approval are not run again)');
  fs.writeFileSync(path.join(services, 'prod', 'config-v2'), 'feature=on\n');
  note(`created ${path.join(services, 'prod', 'config-v2')}`);
  const run3 = stream(['resume', v2, '--from-stage', 'prod', '--follow']);
  const code3 = await run3.code;
  expect(code3 === 0, `ferry resume --follow exited ${code3}, expected 0 (the execution should have Succeeded)`);
  const d3 = await json(['execution', v2]);
  expect(d3.status === 'Succeeded', `execution ${v2} is ${d3.status} after the resume, expected Succeeded`);
  expect(d3.resumedFrom?.stage === 'prod', `resumedFrom is ${JSON.stringify(d3.resumedFrom)}, expected stage prod`);
  const prod3 = stageOf(d3, 'prod');
  expect(prod3.attempts.length === 2, `stage prod has ${prod3.attempts.length} attempts, expected 2 (the failed one and the resumed one)`);
  expect(pairOf(prod3.attempts[0]) === '<Failed, PhaseFailed>' && pairOf(prod3.attempts[1]) === '<Succeeded, Approved>',
    `prod's attempts are ${prod3.attempts.map(pairOf).join(', ')}, expected <Failed, PhaseFailed>, <Succeeded, Approved>`);
  expect(stageOf(d3, 'dev').attempts.length === 1, 'stage dev ran again on resume');
  expect(stageOf(d3, 'approve-prod').attempts.length === 1, 'the approval was asked again on resume');
  const a3 = await answer('prod');
  expect(a3 === 'hello from v2', `after the resume prod answers "${a3}", expected "hello from v2"`);
  note(`prod answers: ${a3}`);

  // the record ---------------------------------------------------------------------------------
  heading('what happened: the executions and their status trees');
  await ferryOk(['executions'], { show: true });
  await ferryOk(['execution', v1], { show: true });
  note('--history lists the steps of every attempt: the failed and rolled-back attempt 1 of prod, then attempt 2');
  await ferryOk(['execution', v2, '--history'], { show: true });
  note('the failed health check of v2 in prod (attempt 1 of the prod stage):');
  await ferryOk(['logs', v2, '--stage', 'prod', '--step', 'health', '--attempt', '1'], { show: true });
  note('and the rollback step of that attempt:');
  await ferryOk(['logs', v2, '--stage', 'prod', '--step', 'restore', '--attempt', '1'], { show: true });
}

let exitCode = 0;
const deadline = setTimeout(() => {
  process.stderr.write(`\ndemo failed: it did not finish within ${TIMEOUT_MS / 1000} s\n`);
  interrupted('timeout');
}, TIMEOUT_MS);
deadline.unref();
try {
  await demo();
} catch (err) {
  exitCode = 1;
  process.stderr.write(`\ndemo failed: ${err instanceof DemoError ? err.message : err.stack ?? err}\n`);
}
clearTimeout(deadline);
heading('stopping');
const { services: stopped, problems } = await cleanup();
note(`stopped ${stopped} service process(es), the delegate and the server`);
for (const p of problems) {
  exitCode = 1;
  process.stderr.write(`demo failed: ${p}\n`);
}
if (exitCode !== 0) {
  const tail = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n') : '';
  if (tail.trim()) process.stderr.write(`\nlast lines of the server and delegate (${logFile}):\n${tail}\n`);
}
if (KEEP || exitCode !== 0) note(`kept ${work}`);
else fs.rmSync(work, { recursive: true, force: true });
if (exitCode === 0) out(`\n${style(1, `demo finished in ${((Date.now() - started) / 1000).toFixed(0)} s: v1 deployed; v2 failed its health check in prod and was rolled back to v1; resumed after the fix, v2 deployed`)}`);
process.exit(exitCode);
