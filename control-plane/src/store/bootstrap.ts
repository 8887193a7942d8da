/** First start on an empty database: account `default`, rings ring0..ring3, admin token. */
import fs from 'node:fs';
import path from 'node:path';
import type { Store } from './db.js';
import { createToken, DEFAULT_ACCOUNT, DEFAULT_RINGS } from './accounts.js';
import { newId } from '@ferry/shared';

export interface BootstrapResult {
  /** the admin token, only when it was created by this start */
  adminToken?: string;
}

export async function bootstrap(store: Store, dataDir: string, now: number): Promise<BootstrapResult> {
  return store.db.transaction().execute(async (trx) => {
    for (const [i, name] of DEFAULT_RINGS.entries()) {
      await trx.insertInto('rings').values({ name, ord: i, version: null, previous_version: null, paused: 0, rollout: null, updated_at: now })
        .onConflict((oc) => oc.column('name').doNothing()).execute();
    }
    const existing = await trx.selectFrom('accounts').select('id').where('name', '=', DEFAULT_ACCOUNT).executeTakeFirst();
    if (existing) return {};
    const id = newId();
    await trx.insertInto('accounts').values({ id, name: DEFAULT_ACCOUNT, ring: 'ring0', running_limit: null, created_at: now }).execute();
    const { token } = await createToken(trx, { accountId: id, kind: 'user', name: 'admin', role: 'admin', scopes: {}, now });
    fs.mkdirSync(dataDir, { recursive: true });
    const file = path.join(dataDir, 'admin-token');
    fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
    fs.chmodSync(file, 0o600);
    return { adminToken: token };
  });
}
