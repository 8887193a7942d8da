/** The worker's version: injected by the supervisor or bundle, else the package's own. */
import { readFileSync } from 'node:fs';

let cached: string | undefined;

export function delegateVersion(env: NodeJS.ProcessEnv = process.env): string {
  const injected = env.FERRY_DELEGATE_VERSION?.trim();
  if (injected) return injected.slice(0, 64);
  if (cached === undefined) {
    cached = '0.0.0';
    try {
      const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === '@ferry/delegate' && typeof pkg.version === 'string') cached = pkg.version;
    } catch {
      // bundled worker without a package.json beside it: the bundle injects the version
    }
  }
  return cached;
}
