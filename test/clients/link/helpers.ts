/**
 * Helpers for the native link tests: a loopback "application" pair (the app
 * end the test drives, the accepted end handed to a link), a target server
 * that records its connections, and a hook that counts payload bytes reaching
 * JS streams other than the test's own endpoints.
 */
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { Readable } from 'node:stream';

/** An app socket and the accepted end of its connection (paused, half-open allowed). */
export async function appPair(): Promise<{ app: Socket; accepted: Socket; close(): void }> {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const app = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const [accepted] = (await once(server, 'connection')) as [Socket];
  await once(app, 'connect').catch(() => {});
  server.close();
  return { app, accepted, close: () => (app.destroy(), accepted.destroy()) };
}

/**
 * Count the bytes pushed into every Readable in this process except `allowed`
 * ones (the test's own app and target sockets). Payload on a native path
 * never reaches a JS stream; control-plane messages (gRPC) are small.
 */
export function payloadHook(): { allow(s: Readable): void; bytes(): number; remove(): void } {
  const allowed = new WeakSet<Readable>();
  const orig = Readable.prototype.push;
  let bytes = 0;
  Readable.prototype.push = function (this: Readable, chunk: unknown, enc?: BufferEncoding): boolean {
    if (chunk && !allowed.has(this) && (Buffer.isBuffer(chunk) || typeof chunk === 'string')) bytes += (chunk as Buffer | string).length;
    return orig.call(this, chunk, enc);
  };
  return {
    allow: (s) => void allowed.add(s),
    bytes: () => bytes,
    remove: () => void (Readable.prototype.push = orig),
  };
}
