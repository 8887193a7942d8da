#!/usr/bin/env node
import('../dist/supervisor/main.js').then((m) => m.main(process.argv)).catch((err) => {
  process.stderr.write(`error: INTERNAL: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
