/**
 * Secrets, encrypted at rest with AES-256-GCM under a key kept in the data dir
 * (`secret.key`, mode 0600). Values leave the server only inside the task.assign of a
 * task that names them.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Executor } from './db.js';

export class SecretBox {
  private constructor(private readonly key: Buffer) {}

  static open(dataDir: string): SecretBox {
    const file = path.join(dataDir, 'secret.key');
    let key: Buffer;
    try {
      key = Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'base64');
    } catch {
      key = crypto.randomBytes(32);
      fs.mkdirSync(dataDir, { recursive: true });
      try {
        fs.writeFileSync(file, key.toString('base64'), { mode: 0o600, flag: 'wx' });
      } catch {
        key = Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'base64');
      }
    }
    if (key.length !== 32) throw new Error(`${file}: not a 256-bit key`);
    return new SecretBox(key);
  }

  seal(plain: string, aad: string): string {
    const iv = crypto.randomBytes(12);
    const c = crypto.createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(aad));
    const ct = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
    return Buffer.concat([iv, c.getAuthTag(), ct]).toString('base64');
  }

  open(sealed: string, aad: string): string {
    const buf = Buffer.from(sealed, 'base64');
    const d = crypto.createDecipheriv('aes-256-gcm', this.key, buf.subarray(0, 12));
    d.setAAD(Buffer.from(aad));
    d.setAuthTag(buf.subarray(12, 28));
    return Buffer.concat([d.update(buf.subarray(28)), d.final()]).toString('utf8');
  }
}

export async function setSecret(db: Executor, box: SecretBox, accountId: string, name: string, value: string, now: number): Promise<void> {
  const ciphertext = box.seal(value, `${accountId}/${name}`);
  await db.insertInto('secrets').values({ account_id: accountId, name, ciphertext, updated_at: now })
    .onConflict((oc) => oc.columns(['account_id', 'name']).doUpdateSet({ ciphertext, updated_at: now }))
    .execute();
}

export async function listSecretNames(db: Executor, accountId: string): Promise<Array<{ name: string; updatedAt: number }>> {
  const rows = await db.selectFrom('secrets').select(['name', 'updated_at']).where('account_id', '=', accountId).orderBy('name').execute();
  return rows.map((r) => ({ name: r.name, updatedAt: Number(r.updated_at) }));
}

/** Values of the named secrets of one account; unknown names are left out. */
export async function readSecrets(db: Executor, box: SecretBox, accountId: string, names: string[]): Promise<Record<string, string>> {
  if (names.length === 0) return {};
  const rows = await db.selectFrom('secrets').select(['name', 'ciphertext']).where('account_id', '=', accountId).where('name', 'in', names).execute();
  const out: Record<string, string> = {};
  for (const r of rows) out[r.name] = box.open(r.ciphertext, `${accountId}/${r.name}`);
  return out;
}
