#!/usr/bin/env node
// `pnpm start`: the control plane on embedded SQLite under ./.ferry plus one local
// delegate. Prints the URL and the admin token; Ctrl-C stops both cleanly.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dataDir = path.resolve(process.env.FERRY_DATA_DIR ?? './.ferry');
const listen = process.env.FERRY_LISTEN ?? '127.0.0.1:8080';
fs.mkdirSync(dataDir, { recursive: true });

const server = spawn(process.execPath, [path.join(root, 'control-plane/bin/ferry.js'), 'server'], {
  env: { ...process.env, FERRY_DATA_DIR: dataDir, FERRY_LISTEN: listen, FERRY_LOG_LEVEL: process.env.FERRY_LOG_LEVEL ?? 'warn' },
  stdio: ['ignore', 'pipe', 'inherit'],
});
let url = null;
let delegate = null;
let stopping = false;

const ready = new Promise((resolve, reject) => {
  let buf = '';
  server.stdout.on('data', (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const m = /^listening on (\S+)/.exec(line);
      if (m) { url = m[1]; resolve(url); }
      if (!line.startsWith('{') && !line.startsWith('admin token')) process.stdout.write(`${line}\n`);
    }
  });
  server.on('exit', (code) => { if (!url) reject(new Error(`server exited with ${code}`)); });
});

async function delegateToken(adminToken) {
  const file = path.join(dataDir, 'local-delegate-token');
  try { return fs.readFileSync(file, 'utf8').trim(); } catch { /* create one */ }
  const res = await fetch(`${url}/api/v1/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ kind: 'delegate', name: 'local-delegate' }),
  });
  if (!res.ok) throw new Error(`could not create the local delegate token: ${res.status} ${await res.text()}`);
  const { token } = await res.json();
  fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return token;
}

function stop(sig) {
  if (stopping) return;
  stopping = true;
  process.stdout.write('\nstopping…\n');
  const waitDelegate = delegate && delegate.exitCode === null
    ? new Promise((r) => { delegate.on('exit', r); delegate.kill('SIGTERM'); })
    : Promise.resolve();
  waitDelegate.then(() => {
    if (server.exitCode !== null) process.exit(0);
    server.on('exit', () => process.exit(0));
    server.kill('SIGTERM');
  });
  void sig;
}
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));

try {
  await ready;
  const adminToken = fs.readFileSync(path.join(dataDir, 'admin-token'), 'utf8').trim();
  const token = await delegateToken(adminToken);
  delegate = spawn(process.execPath, [path.join(root, 'delegate/bin/ferry-delegate.js')], {
    env: {
      ...process.env,
      FERRY_URL: url,
      FERRY_DELEGATE_TOKEN: token,
      FERRY_DELEGATE_NAME: process.env.FERRY_DELEGATE_NAME ?? 'local',
      FERRY_DELEGATE_TAGS: process.env.FERRY_DELEGATE_TAGS ?? 'local,linux',
      FERRY_STATE_DIR: path.join(dataDir, 'delegate'),
      FERRY_LOG_LEVEL: process.env.FERRY_LOG_LEVEL ?? 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  delegate.on('exit', (code) => { if (!stopping) process.stderr.write(`delegate exited with ${code}\n`); });
  process.stdout.write(`\nFerry is running at ${url}\nadmin token: ${adminToken}\n  export FERRY_URL=${url} FERRY_TOKEN=${adminToken}\n  pnpm ferry delegates\nCtrl-C stops the server and the local delegate.\n`);
} catch (err) {
  process.stderr.write(`error: ${err.message}\n`);
  server.kill('SIGTERM');
  process.exit(1);
}
