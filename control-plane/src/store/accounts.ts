/** Accounts and tokens. Tokens are random 256-bit secrets stored only as sha256 hashes. */
import crypto from 'node:crypto';
import { FerryError, isName, newId } from '@ferry/shared';
import type { Executor } from './db.js';
import { fromJson, toJson } from './db.js';
import type { TokensTable } from './schema.js';

export type Role = 'admin' | 'deployer' | 'viewer';
export type TokenKind = 'delegate' | 'user';
export interface Scopes {
  service?: string;
  environmentType?: 'production' | 'preproduction';
}

export interface Account {
  id: string;
  name: string;
  ring: string;
}

export interface TokenInfo {
  id: string;
  kind: TokenKind;
  name: string;
  account: string;
  accountId: string;
  role: Role | null;
  scopes: Scopes;
  revoked: boolean;
  createdAt: number;
  lastUsedAt: number | null;
}

export const DEFAULT_ACCOUNT = 'default';
export const DEFAULT_RINGS = ['ring0', 'ring1', 'ring2', 'ring3'] as const;

export const hashToken = (token: string): string => crypto.createHash('sha256').update(token).digest('hex');

export function generateToken(kind: TokenKind): string {
  return `fry${kind === 'delegate' ? 'd' : 'u'}_${crypto.randomBytes(32).toString('base64url')}`;
}

export async function createAccount(db: Executor, name: string, ring: string, now: number): Promise<Account> {
  if (!isName(name)) throw new FerryError('VALIDATION_FAILED', `account name ${JSON.stringify(name)} must match [a-z0-9][a-z0-9-_]*`, { field: 'name' });
  const exists = await db.selectFrom('accounts').select('id').where('name', '=', name).executeTakeFirst();
  if (exists) throw new FerryError('ALREADY_EXISTS', `account ${name} exists`);
  const ringRow = await db.selectFrom('rings').select('name').where('name', '=', ring).executeTakeFirst();
  if (!ringRow) throw new FerryError('NOT_FOUND', `no ring ${ring}`, { field: 'ring' });
  const acc = { id: newId(), name, ring, running_limit: null, created_at: now };
  await db.insertInto('accounts').values(acc).execute();
  return { id: acc.id, name, ring };
}

export async function listAccounts(db: Executor): Promise<Account[]> {
  const rows = await db.selectFrom('accounts').select(['id', 'name', 'ring']).orderBy('name').execute();
  return rows;
}

export async function getAccountByName(db: Executor, name: string): Promise<Account | undefined> {
  return db.selectFrom('accounts').select(['id', 'name', 'ring']).where('name', '=', name).executeTakeFirst();
}

export async function createToken(
  db: Executor,
  opts: { accountId: string; kind: TokenKind; name: string; role: Role | null; scopes: Scopes; now: number },
): Promise<{ id: string; token: string }> {
  const token = generateToken(opts.kind);
  const id = newId();
  await db.insertInto('tokens').values({
    id,
    account_id: opts.accountId,
    kind: opts.kind,
    name: opts.name,
    role: opts.kind === 'user' ? opts.role ?? 'viewer' : null,
    scopes: toJson(opts.scopes),
    hash: hashToken(token),
    created_at: opts.now,
    revoked_at: null,
    last_used_at: null,
  }).execute();
  return { id, token };
}

type TokenRow = TokensTable & { account_name: string };

export function tokenInfo(row: TokenRow): TokenInfo {
  return {
    id: row.id,
    kind: row.kind,
    name: row.name,
    account: row.account_name,
    accountId: row.account_id,
    role: row.role,
    scopes: fromJson<Scopes>(row.scopes, {}),
    revoked: row.revoked_at != null,
    createdAt: Number(row.created_at),
    lastUsedAt: row.last_used_at == null ? null : Number(row.last_used_at),
  };
}

function tokenQuery(db: Executor) {
  return db.selectFrom('tokens').innerJoin('accounts', 'accounts.id', 'tokens.account_id').selectAll('tokens').select('accounts.name as account_name');
}

/**
 * Finds a token by its secret. The lookup is by hash (an index), and the stored hash is
 * then compared in constant time, so neither step leaks the secret through timing.
 */
export async function findToken(db: Executor, secret: string): Promise<TokenInfo | undefined> {
  if (secret.length < 10 || secret.length > 200) return undefined;
  const h = hashToken(secret);
  const row = await tokenQuery(db).where('tokens.hash', '=', h).executeTakeFirst();
  if (!row) return undefined;
  const a = Buffer.from(row.hash, 'hex');
  const b = Buffer.from(h, 'hex');
  if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) return undefined;
  return tokenInfo(row as TokenRow);
}

export async function listTokens(db: Executor, accountId?: string): Promise<TokenInfo[]> {
  let q = tokenQuery(db).orderBy('tokens.created_at');
  if (accountId) q = q.where('tokens.account_id', '=', accountId);
  return (await q.execute()).map((r) => tokenInfo(r as TokenRow));
}

export async function getToken(db: Executor, id: string): Promise<TokenInfo | undefined> {
  const row = await tokenQuery(db).where('tokens.id', '=', id).executeTakeFirst();
  return row ? tokenInfo(row as TokenRow) : undefined;
}

export async function revokeToken(db: Executor, id: string, now: number): Promise<void> {
  await db.updateTable('tokens').set({ revoked_at: now }).where('id', '=', id).where('revoked_at', 'is', null).execute();
}
