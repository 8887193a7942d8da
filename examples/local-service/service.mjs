#!/usr/bin/env node
// A tiny HTTP service for the demo: `node service.mjs VERSION PORT STATE_DIR`.
// GET /health answers 200 with the version — except that a version listed in
// STATE_DIR/needs-config is unhealthy (503) until STATE_DIR/config-VERSION exists:
// that is the "bug" the demo fixes before it resumes.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const [version = 'v1', port = '0', stateDir = '.'] = process.argv.slice(2);
const needsConfig = () => {
  try { return fs.readFileSync(path.join(stateDir, 'needs-config'), 'utf8').split(/\s+/).includes(version); } catch { return false; }
};
const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    const ok = !needsConfig() || fs.existsSync(path.join(stateDir, `config-${version}`));
    res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ version, healthy: ok, ...(ok ? {} : { reason: `config-${version} is missing` }) }));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(`hello from ${version}\n`);
});
server.listen(Number(port), '127.0.0.1', () => {
  fs.writeFileSync(path.join(stateDir, 'port'), String(server.address().port));
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
