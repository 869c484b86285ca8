/**
 * Where the shm attach socket lives and how it is bound: a default path per
 * deployment, a stale file from a dead gateway replaced, a live one left alone.
 */
import { chmodSync, lstatSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { AttachListener } from '../native/index.js';
import type { PumpHub } from '../native/pump-hub.js';
import { ensureShmDir } from '../native/shm-dir.js';
import { removeStaleSocket } from '../native/unix-socket-file.js';

type NativeModule = typeof import('../native/index.js');

/** Whether a Unix socket at `path` has a live listener (connect succeeds). */
function socketIsLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ path });
    const done = (live: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(live);
    };
    const timer = setTimeout(() => done(true), 1_000);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/**
 * Where the attach socket goes without transports.shm.path: the systemd
 * RuntimeDirectory ($RUNTIME_DIRECTORY, /run/sockgate under
 * deploy/sockgate.service, whose PrivateTmp hides the tmpdir from clients),
 * /run/sockgate for root, else a directory of our own under the tmpdir, which
 * must be private (0700, ours): the tmpdir is shared, and another user may
 * have made it first.
 */
function defaultPath(): { path: string; private: boolean } {
  const runtime = process.env['RUNTIME_DIRECTORY']?.split(':')[0];
  if (runtime?.startsWith('/')) return { path: join(runtime, 'shm.sock'), private: false };
  const uid = process.getuid?.() ?? -1;
  return uid === 0 ? { path: '/run/sockgate/shm.sock', private: false } : { path: join(tmpdir(), `sockgate-${uid}`, 'shm.sock'), private: true };
}

let uniquePaths = 0;

/** A bound attach socket: its listener, path, and the inode of the file we bound (so stop() never removes a successor's). */
export interface AttachSocket {
  listener: AttachListener;
  path: string;
  ino: number;
}

/** Bind the attach socket at `configured` (or the default path when ""). */
export async function listenAttachSocket(configured: string, hub: PumpHub, native: NativeModule): Promise<AttachSocket> {
  const explicit = configured !== '';
  const chosen = explicit ? { path: configured, private: false } : defaultPath();
  let path = chosen.path;
  // Whoever can write the directory can swap the socket and read clients' hellos (attach tokens): verify it first.
  ensureShmDir(dirname(path), { private: chosen.private });
  let listener: AttachListener | undefined;
  for (let attempt = 0; !listener; attempt++) {
    try {
      listener = hub.pump.listen(path);
    } catch (err) {
      if (native.nativeCode(err) !== 'EADDRINUSE' || attempt >= 3) throw err;
      if (!(await socketIsLive(path))) {
        removeStaleSocket(path);
      } else if (explicit) {
        throw new Error(`transports.shm.path ${path} is in use by another gateway`, { cause: err });
      } else {
        path = join(dirname(path), `shm-${process.pid}-${++uniquePaths}.sock`);
        removeStaleSocket(path);
      }
    }
  }
  // Authentication is the attach token and SO_PEERCRED, not file modes: local clients of any uid may connect.
  chmodSync(path, 0o666);
  return { listener, path, ino: lstatSync(path).ino };
}
