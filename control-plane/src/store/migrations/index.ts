import type { Kysely, Migration } from 'kysely';
import type { Dialect } from './util.js';
import * as core from './0001-core.js';
import * as engine from './0002-engine.js';
import * as rings from './0003-rings.js';
import * as engineSlots from './0004-engine-slots.js';
import * as queueOrder from './0005-queue-order.js';
import * as releaseBundles from './0006-release-bundles.js';

type Up = (db: Kysely<any>, dialect: Dialect) => Promise<void>;

/** Migrations in code, in order. Add a file, add it here; never edit a released one. */
const ALL: Array<[string, Up]> = [
  ['0001-core', core.up],
  ['0002-engine', engine.up],
  ['0003-rings', rings.up],
  ['0004-engine-slots', engineSlots.up],
  ['0005-queue-order', queueOrder.up],
  ['0006-release-bundles', releaseBundles.up],
];

export function migrationsFor(dialect: Dialect): Record<string, Migration> {
  return Object.fromEntries(ALL.map(([name, up]) => [name, { up: (db: Kysely<any>) => up(db, dialect) }]));
}
