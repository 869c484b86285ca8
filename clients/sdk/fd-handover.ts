/**
 * Taking a descriptor away from a `net.Socket` for a native link, without
 * losing or reading a byte more: libuv stops reading, what JS had already
 * buffered is taken out as a prefix, and the descriptor is dup()ed. Until
 * `give()` the JS socket is intact (`undo()` puts everything back, for a
 * link that did not start); `give()` destroys it, which closes only its own
 * descriptor number (no FIN: the dup keeps the socket open in the link).
 */
import type { Socket } from 'node:net';
import type { NativeModule } from './native-optional.js';

interface UvHandle {
  fd?: number;
  reading?: boolean;
  readStop?: () => number;
}

export interface TakenFd {
  /** A dup of the socket's descriptor: the caller's to hand to a link (or to close). */
  fd: number;
  /** Bytes JS had read from the socket and nobody consumed: they go first. */
  prefix: Buffer[];
  /** The link started: the JS socket lets go (destroyed; its own fd number closed). */
  give(): void;
  /** The link did not start: close the dup, put the prefix back, reading resumes on demand. */
  undo(): void;
}

/** The descriptor of a connected stream socket, or undefined when it has none usable (closed, connecting, writes pending). */
export function socketFd(sock: Socket): number | undefined {
  const h = (sock as unknown as { _handle?: UvHandle })._handle;
  if (!h || typeof h.fd !== 'number' || h.fd < 0 || sock.destroyed || sock.connecting) return undefined;
  return h.fd;
}

/** Take `sock`'s descriptor (see the file comment); undefined when it has none or still has writes queued. */
export function takeFd(n: NativeModule, sock: Socket): TakenFd | undefined {
  const fd = socketFd(sock);
  if (fd === undefined || sock.writableLength > 0) return undefined;
  const h = (sock as unknown as { _handle: UvHandle })._handle;
  // No more reads into JS: libuv stops, and reading what is buffered must not start it again.
  if (h.reading && h.readStop) {
    h.reading = false;
    h.readStop();
  }
  sock.pause();
  const self = sock as unknown as { _read: unknown };
  self._read = () => {};
  const prefix: Buffer[] = [];
  for (let b = sock.read() as Buffer | null; b !== null; b = sock.read() as Buffer | null) prefix.push(b);
  let dup: number;
  try {
    dup = n.dupFd(fd);
  } catch (err) {
    delete self._read;
    if (prefix.length) sock.unshift(Buffer.concat(prefix));
    throw err;
  }
  return {
    fd: dup,
    prefix,
    give: () => {
      sock.removeAllListeners('data');
      sock.on('error', () => {});
      sock.destroy();
    },
    undo: () => {
      n.closeFd(dup);
      delete self._read;
      if (prefix.length) sock.unshift(Buffer.concat(prefix));
    },
  };
}
