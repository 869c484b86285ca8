/**
 * Port forwards on real sockets: the real `nc` (netcat-openbsd) pushing random
 * bytes through `-L` with a half-close (SHA-256 checked by the far end), the
 * real curl through `-L` to an HTTP server, a refused destination resetting
 * the local connection, and a reverse forward `-R` (the gateway listens on the
 * host; a host client's bytes reach the guest-side target, SHA-256 both ways).
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, createServer } from 'node:net';
import { echoServer, hashUntilEnd, sendRandom, startGateway, tcpServer, within } from '../../helpers/harness.js';
import { httpServer, randomBody, requireTool, run, sha256, startProxy } from './helpers.js';

test('nc through -L: random bytes, half-close, the destination answers with their SHA-256', async (t) => {
  requireTool('nc');
  const gw = await startGateway();
  // The destination hashes what it reads until EOF (the client's half-close), then answers and closes.
  const dest = await tcpServer((c) => {
    const h = createHash('sha256');
    let n = 0;
    c.on('data', (d: Buffer) => {
      h.update(d);
      n += d.length;
    });
    c.on('end', () => c.end(`${n} ${h.digest('hex')}\n`));
  });
  const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=${dest.uri}`] });
  t.teardown(async () => {
    await proxy.destroy();
    await dest.close();
    await gw.stop();
  });
  const [host, port] = proxy.addresses.local[0]!.listen.split(':') as [string, string];
  const { body, sha256: want } = randomBody(16 << 20);
  // -N: shutdown(SHUT_WR) after stdin's EOF, then keep reading the answer.
  const r = await run('nc', ['-N', host, port], { input: body, timeoutMs: 60_000 });
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.toString(), `${body.length} ${want}\n`);
  t.is(proxy.localForwards[0]!.stats.opened, 1);
});

test('curl through -L to an HTTP server (SHA-256 of the body)', async (t) => {
  requireTool('curl');
  const gw = await startGateway();
  const { body, sha256: want } = randomBody(8 << 20);
  const http = await httpServer(body);
  const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=tcp://localhost:${http.port}`] });
  t.teardown(async () => {
    await proxy.destroy();
    await http.close();
    await gw.stop();
  });
  const r = await run('curl', ['-sS', '--fail', '--max-time', '30', `http://${proxy.addresses.local[0]!.listen}/`]);
  t.is(r.code, 0, r.stderr);
  t.is(sha256(r.stdout), want);
});

test('-L to a refused destination resets the local connection', async (t) => {
  const gw = await startGateway();
  const probe = createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const closedPort = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const proxy = await startProxy(gw.target, { local: [`127.0.0.1:0=tcp://127.0.0.1:${closedPort}`] });
  t.teardown(async () => {
    await proxy.destroy();
    await gw.stop();
  });
  const [host, port] = proxy.addresses.local[0]!.listen.split(':') as [string, string];
  const c = netConnect({ host, port: Number(port) });
  const err = await within(
    new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      c.once('error', (e) => resolve(e));
      c.once('close', () => resolve(undefined));
    }),
    10_000,
    'local connection closed',
  );
  t.is(err?.code, 'ECONNRESET');
  t.is(proxy.localForwards[0]!.stats.failed, 1);
});

test('-R: the gateway listens on the host, a host client reaches the guest-side target (SHA-256 both ways)', async (t) => {
  const gw = await startGateway();
  const target = await echoServer();
  const proxy = await startProxy(gw.target, { remote: [`tcp://127.0.0.1:0=127.0.0.1:${target.port}`] });
  t.teardown(async () => {
    await proxy.destroy();
    await target.close();
    await gw.stop();
  });
  const listen = proxy.addresses.remote[0]!.listen;
  t.regex(listen, /^tcp:\/\/127\.0\.0\.1:[1-9][0-9]*$/);
  const port = Number(listen.split(':').pop());
  const clients = await Promise.all(
    [0, 1].map(async () => {
      const c = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
      await once(c, 'connect');
      return c;
    }),
  );
  const results = await Promise.all(
    clients.map(async (c) => {
      const received = hashUntilEnd(c);
      const sent = await sendRandom(c, 16 << 20);
      return { sent, got: await within(received, 60_000, 'reverse forward echo') };
    }),
  );
  for (const { sent, got } of results) {
    t.is(got.bytes, 16 << 20);
    t.is(got.sha256, sent);
  }
  t.is(proxy.remoteForwards[0]!.stats.opened, 2);
});

test('-R listens again on the same address after the gateway restarts', async (t) => {
  const gw1 = await startGateway();
  const controlPort = Number(gw1.target.split(':').pop());
  const target = await echoServer();
  const proxy = await startProxy(gw1.target, { remote: [`tcp://127.0.0.1:0=127.0.0.1:${target.port}`] });
  let gw2: Awaited<ReturnType<typeof startGateway>> | undefined;
  t.teardown(async () => {
    await proxy.destroy();
    await target.close();
    await gw1.stop();
    await gw2?.stop();
  });
  const port = Number(proxy.addresses.remote[0]!.listen.split(':').pop());
  /** One echo round trip through the gateway's listener; false if the port does not answer yet. */
  const roundTrip = async (msg: string): Promise<boolean> => {
    const c = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    try {
      await within(once(c, 'connect'), 2_000, 'connect');
      c.end(msg);
      await within(once(c, 'end'), 5_000, 'echo');
      return Buffer.concat(chunks).toString() === msg;
    } catch {
      return false;
    } finally {
      c.destroy();
    }
  };
  t.true(await roundTrip('first gateway'));
  await gw1.stop();
  // A new gateway on the same control address, as after a restart.
  gw2 = await startGateway({ listen: { control: `127.0.0.1:${controlPort}` } });
  let ok = false;
  for (let i = 0; i < 60 && !ok; i++) {
    ok = await roundTrip('second gateway');
    if (!ok) await new Promise((r) => setTimeout(r, 250));
  }
  t.true(ok, 'the reverse forward answers again on the same host port');
  t.is(proxy.remoteForwards[0]!.stats.relistens, 1);
  t.is(proxy.addresses.remote[0]!.listen, `tcp://127.0.0.1:${port}`);
});
