import { FerryError } from '@ferry/shared';
import type { AppContext } from '../context.js';
import { getAccountByName, type Account } from '../store/accounts.js';
import type { Principal } from './auth.js';

/**
 * The account a request acts in: the token's own, or — for admins of the default
 * account only — the one named by `account`.
 */
export async function actingAccount(ctx: AppContext, p: Principal, name?: string): Promise<Account> {
  if (!name || name === p.account) {
    const acc = await getAccountByName(ctx.store.db, p.account);
    if (!acc) throw new FerryError('NOT_FOUND', `account ${p.account} is gone`);
    return acc;
  }
  if (!p.system) throw new FerryError('FORBIDDEN', `the token belongs to account ${p.account} and cannot act in ${name}`);
  const acc = await getAccountByName(ctx.store.db, name);
  if (!acc) throw new FerryError('NOT_FOUND', `no account ${name}`);
  return acc;
}

/** The acting account's id: the token's own needs no lookup (hot paths such as task submission). */
export async function actingAccountId(ctx: AppContext, p: Principal, name?: string): Promise<string> {
  if (!name || name === p.account) return p.accountId;
  return (await actingAccount(ctx, p, name)).id;
}

export const NameSchema = { type: 'string', pattern: '^[a-z0-9][a-z0-9-_]*$', maxLength: 100 } as const;
export const ErrorSchema = {
  type: 'object',
  properties: { error: { type: 'object', properties: { code: { type: 'string' }, message: { type: 'string' }, details: {} }, required: ['code', 'message'] } },
} as const;
