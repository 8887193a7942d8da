/** Process groups: a shell step runs in its own group so a cancel reaches every child. */
import { readdirSync, readFileSync } from 'node:fs';

/** Sends a signal to the whole group; false if no process of it was there. */
export function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Fields of /proc/PID/stat after the command name (which may hold spaces). */
function statFields(pid: number): string[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Start time of a process (Linux), to tell a recycled pid from the one we started. */
export function processStartTime(pid: number): string | undefined {
  return statFields(pid)?.[19];
}

const hasProc = ((): boolean => {
  try {
    readdirSync('/proc/self');
    return true;
  } catch {
    return false;
  }
})();

/**
 * Whether any live (non-zombie) process is left in the group. Zombies count as gone:
 * an orphan is reparented and reaped by init, which in some containers takes seconds.
 */
export function groupAlive(pgid: number): boolean {
  if (!signalGroup(pgid, 0)) return false;
  if (!hasProc) return true;
  let names: string[];
  try {
    names = readdirSync('/proc');
  } catch {
    return true;
  }
  for (const n of names) {
    if (n.charCodeAt(0) < 48 || n.charCodeAt(0) > 57) continue;
    const f = statFields(Number(n));
    // fields after the name: [0] state, [1] ppid, [2] pgrp
    if (f && f[2] === String(pgid) && f[0] !== 'Z' && f[0] !== 'X') return true;
  }
  return false;
}

/**
 * SIGTERM to the group, SIGKILL after the grace if anything is left. Resolves once the
 * group is gone (or shortly after SIGKILL).
 */
export async function terminateGroup(pgid: number, graceMs: number, mainExited: Promise<unknown>): Promise<void> {
  signalGroup(pgid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  await Promise.race([mainExited, new Promise((r) => setTimeout(r, graceMs))]);
  while (Date.now() < deadline && groupAlive(pgid)) await new Promise((r) => setTimeout(r, 50));
  if (groupAlive(pgid)) {
    signalGroup(pgid, 'SIGKILL');
    const until = Date.now() + 2000;
    while (Date.now() < until && groupAlive(pgid)) await new Promise((r) => setTimeout(r, 25));
  }
}

/** Kills what is left of a task's group after a worker crash, if it is still ours. */
export function killOrphanGroup(info: { pid: number; startTime?: string }): boolean {
  if (!Number.isInteger(info.pid) || info.pid <= 1) return false;
  const now = processStartTime(info.pid);
  if (now === undefined || (info.startTime !== undefined && now !== info.startTime)) return false;
  return signalGroup(info.pid, 'SIGKILL');
}
