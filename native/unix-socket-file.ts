/**
 * Unix socket files a listener leaves behind: removed before listening again
 * (listen() would fail with EADDRINUSE), and only if they are sockets (and,
 * when an inode is given, that very socket), so nothing else is ever deleted.
 */
import { lstatSync, unlinkSync } from 'node:fs';

/** Remove the socket file at `path` (only the one with inode `ino`, if given); absent or another kind of file: left alone. */
export function removeStaleSocket(path: string, ino?: number): void {
  try {
    const st = lstatSync(path);
    if (st.isSocket() && (ino === undefined || st.ino === ino)) unlinkSync(path);
  } catch {
    // Absent (the usual case) or not ours to remove: listen() reports what matters.
  }
}
