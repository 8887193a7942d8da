import type { Command } from 'commander';

/** Placeholder: the commands of this group are registered here by its module's owner. */
export function registerRingCommands(_program: Command): void {}
