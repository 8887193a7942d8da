/** The delegate id: created once in the state dir, so a restarted delegate is the same delegate. */
import { mkdir, readFile, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export async function loadDelegateId(stateDir: string): Promise<string> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, 'delegate-id');
  try {
    const existing = (await readFile(file, 'utf8')).trim();
    if (ID_RE.test(existing)) return existing;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const id = randomUUID();
  // Write beside and rename: a crash never leaves a half-written id behind.
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${id}\n`, { mode: 0o600 });
  await rename(tmp, file);
  return id;
}
