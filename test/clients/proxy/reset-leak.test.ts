/**
 * Finding 10 of issue 12: an orphaned `sockgate proxy` spun a core after its
 * gateway, destination and client died mid-transfer. Cause: aborting a local
 * socket with resetAndDestroy() while its end() (a shutdown) was still in
 * flight: libuv refuses the reset (EINVAL), Node marks the handle closing
 * anyway, 'close' never comes, the handle leaks; the proxy's drain waited for
 * that close forever and, once the loop ran dry, Node's exit cleanup looped on
 * the leaked handle at full CPU. These tests end a socket and abort it in the
 * same turn, as the relay does when one side ends and then fails.
 */
import test from 'ava';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { splice } from '../../../clients/proxy/splice.js';
import { resetLocal } from '../../../clients/proxy/forward.js';
import { within } from '../../helpers/harness.js';

/** A connected loopback pair: [server side, client side]. */
async function pair(): Promise<{ server: Socket; client: Socket; close(): void }> {
  const srv = createServer({ allowHalfOpen: true });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const accepted = once(srv, 'connection');
  const client = connect({ port: (srv.address() as { port: number }).port, host: '127.0.0.1', allowHalfOpen: true });
  client.on('error', () => {});
  const [server] = (await accepted) as [Socket];
  server.on('error', () => {});
  return { server, client, close: () => (client.destroy(), srv.close()) };
}

test('a local socket ended and aborted in the same turn still closes (resetLocal)', async (t) => {
  const p = await pair();
  t.teardown(() => p.close());
  const closed = once(p.server, 'close');
  p.server.end();
  // After end()'s _final queued the shutdown, before libuv ran it: the window the proxy hit.
  process.nextTick(() => resetLocal(p.server));
  await within(closed, 5_000, "the aborted socket's close");
  t.true(p.server.destroyed);
});

test('splice: the other side ends, then fails: the local socket still closes and the session settles', async (t) => {
  const p = await pair();
  t.teardown(() => p.close());
  // Like the SDK's socket: ending its read side does not destroy it, a later failure does.
  const other = new PassThrough({ allowHalfOpen: true, autoDestroy: false });
  other.on('error', () => {});
  const session = splice(p.server, other);
  // The gateway side ends (pipe passes the half-close on: server.end()), then aborts in the same turn.
  const ended = once(other, 'end');
  other.end();
  await within(ended, 5_000, "the gateway side's end");
  t.true(p.server.writableEnded, 'the half-close went on to the local socket');
  // Its shutdown is queued but has not run yet (libuv runs it on the next poll): fail now.
  other.destroy(new Error('gateway gone'));
  await within(session.closed, 5_000, 'the spliced session to close');
  t.true(p.server.destroyed);
});
