import { describe, expect, it } from 'vitest';
import { hostname, homedir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig, redactedConfig } from './config.js';

const argv = (...flags: string[]) => ['node', 'ferry-delegate', ...flags];

describe('loadConfig', () => {
  it('has the documented defaults and is frozen', () => {
    const c = loadConfig(argv(), { FERRY_DELEGATE_TOKEN: 'tok' });
    expect(c).toMatchObject({
      url: 'http://127.0.0.1:8080', token: 'tok', name: hostname(), tags: [], capacity: 4,
      stateDir: join(homedir(), '.ferry-delegate'), drainTimeoutMs: 600_000, spoolMaxBytes: 64 << 20,
      killGraceMs: 10_000, chunkFlushMs: 50, logLevel: 'info', reconnectBaseMs: 500, reconnectMaxMs: 30_000,
    });
    expect(Object.isFrozen(c)).toBe(true);
    expect(JSON.stringify(redactedConfig(c))).not.toContain('tok"');
  });

  it('takes flags over environment variables', () => {
    const c = loadConfig(argv('--url', 'https://cp.example:9443/', '--token', 'flagtok', '--tags', 'linux, gpu', '--capacity', '8', '--drain-timeout', '30s', '--state-dir', '/tmp/x'), {
      FERRY_URL: 'http://ignored', FERRY_DELEGATE_TOKEN: 'envtok', FERRY_DELEGATE_NAME: 'd1', FERRY_DELEGATE_CAPACITY: '2', FERRY_SPOOL_MAX_BYTES: '1MiB',
    });
    expect(c).toMatchObject({ url: 'https://cp.example:9443', token: 'flagtok', name: 'd1', tags: ['linux', 'gpu'], capacity: 8, drainTimeoutMs: 30_000, stateDir: '/tmp/x', spoolMaxBytes: 1 << 20 });
  });

  it('names the flag or variable of a bad value', () => {
    const bad = (flags: string[], env: Record<string, string>, re: RegExp) => {
      try {
        loadConfig(argv(...flags), { FERRY_DELEGATE_TOKEN: 't', ...env });
        throw new Error('expected a ConfigError');
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as Error).message).toMatch(re);
      }
    };
    bad([], { FERRY_DELEGATE_TOKEN: '' }, /FERRY_DELEGATE_TOKEN is required/);
    bad([], { FERRY_DELEGATE_CAPACITY: 'many' }, /^FERRY_DELEGATE_CAPACITY: /);
    bad(['--capacity', '-1'], {}, /--capacity/);
    bad([], { FERRY_DRAIN_TIMEOUT: '10 minutes' }, /^FERRY_DRAIN_TIMEOUT: not a duration/);
    bad([], { FERRY_URL: 'ftp://x' }, /^FERRY_URL: /);
    bad([], { FERRY_KILL_GRACE: 'soon' }, /^FERRY_KILL_GRACE: /);
    bad([], { FERRY_SPOOL_MAX_BYTES: 'lots' }, /^FERRY_SPOOL_MAX_BYTES: /);
    bad([], { FERRY_LOG_LEVEL: 'loud' }, /^FERRY_LOG_LEVEL: /);
    bad(['--bogus'], {}, /bogus/);
  });
});
