/**
 * The directory of the shm attach socket, checked the same way by the gateway
 * (before it listens there) and by the SDK (before it sends a hello, which
 * carries an attach token, to the socket). Whoever can write the directory can
 * swap the socket and receive those hellos: another user who created
 * `<tmpdir>/sockgate-<uid>/` first, a group- or world-writable directory, or a
 * symlink to one. Shared by server/ and clients/, so it lives beside the addon
 * loader and imports neither.
 */
import { lstatSync, mkdirSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';

/** Mode bits of a directory only its owner may use (the non-root default under the shared tmpdir). */
const PRIVATE_DIR_MODE = 0o700;
/** Mode of a directory other users' clients must reach (/run/sockgate, explicit paths): others may search, never write. */
const SHARED_DIR_MODE = 0o755;
/** Group and other write: whoever has them can replace the socket. */
const WRITE_BY_OTHERS = 0o022;
/** Any group or other bit: a private directory has none. */
const ANY_BY_OTHERS = 0o077;

export interface ShmDirOptions {
  /**
   * Owner-only (the gateway's non-root default under the tmpdir): mode must have
   * no group or other bits, and the owner must be `uid` exactly.
   */
  private?: boolean;
  /** The uid that should own it: the gateway's own, or the SDK's own; default process.getuid(). */
  uid?: number;
}

function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8)}`;
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Why `dir` must not hold (or be trusted to hold) the shm attach socket, or
 * undefined if it may. A directory not owned by `uid` or root is still
 * accepted (unless private) when its parent is root's and writable by no one
 * else, so only root can have created it and given it away (systemd's
 * RuntimeDirectory for a service user, a hostPath made by the kubelet).
 */
export function shmDirProblem(dir: string, options: ShmDirOptions = {}): string | undefined {
  const uid = options.uid ?? process.getuid?.() ?? -1;
  let st: Stats | undefined;
  try {
    st = lstatOrUndefined(dir);
  } catch (err) {
    return `cannot inspect ${dir}: ${(err as Error).message}`;
  }
  if (!st) return `${dir} does not exist`;
  if (st.isSymbolicLink()) return `${dir} is a symbolic link, which whoever owns its target controls`;
  if (!st.isDirectory()) return `${dir} is not a directory`;
  if (options.private) {
    if (st.uid !== uid) return `${dir} is owned by uid ${st.uid}, not by this process (uid ${uid}): that user could replace the socket`;
    if (st.mode & ANY_BY_OTHERS) return `${dir} has mode ${octal(st.mode)}: it must be ${octal(PRIVATE_DIR_MODE)} (no group or other access)`;
    return undefined;
  }
  if (st.mode & WRITE_BY_OTHERS) return `${dir} has mode ${octal(st.mode)}, writable by group or others, who could replace the socket`;
  if (st.uid === uid || st.uid === 0) return undefined;
  const parent = dirname(dir);
  const pst = parent === dir ? undefined : lstatOrUndefined(parent);
  if (pst && pst.isDirectory() && pst.uid === 0 && !(pst.mode & WRITE_BY_OTHERS)) return undefined;
  return `${dir} is owned by uid ${st.uid}, neither this process (uid ${uid}) nor root, in ${parent}, where users other than root can create directories: that user could replace the socket`;
}

/**
 * Create `dir` if missing (0700 when private, else 0755, both under the
 * umask), then verify it; throws an Error naming the problem.
 */
export function ensureShmDir(dir: string, options: ShmDirOptions = {}): void {
  try {
    mkdirSync(dir, { recursive: true, mode: options.private ? PRIVATE_DIR_MODE : SHARED_DIR_MODE });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create the shm socket directory ${dir}: ${(err as Error).message}`, { cause: err });
  }
  const problem = shmDirProblem(dir, options);
  if (problem) throw new Error(`refusing the shm socket directory: ${problem}`);
}
