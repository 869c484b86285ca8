/**
 * Abort a net.Socket with a TCP reset where that is safe, else destroy it.
 *
 * Why not resetAndDestroy() alone: while a shutdown (our end()) is still in
 * flight, libuv refuses the reset (uv_tcp_close_reset: EINVAL) and Node 20
 * marks the handle closing anyway: 'close' never comes and the handle leaks,
 * so whatever waits for the close hangs, and at exit Node's handle cleanup
 * loops on it forever at full CPU (issue 12, finding 10: an orphaned
 * `sockgate proxy` spinning with its listener closed). A socket whose end()
 * has not finished gets a plain destroy (the peer sees FIN or nothing, not RST).
 */
import type { Socket } from 'node:net';

export function resetSocket(sock: Socket): void {
  if (sock.destroyed) return;
  if (sock.writableEnded && !sock.writableFinished) {
    sock.destroy();
    return;
  }
  try {
    sock.resetAndDestroy();
  } catch {
    // Not a TCP handle (a Unix socket) or not connected: a plain destroy.
    sock.destroy();
  }
}
