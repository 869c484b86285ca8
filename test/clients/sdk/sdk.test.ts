/**
 * The SDK as libraries use it: Node's own http and https clients through an
 * Agent, a real PostgreSQL server driven by `pg` over a gateway socket, the
 * net.Socket shape, AbortSignal and deadlines, and riding out a gateway restart.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, get as httpGet } from 'node:http';
import { createServer as createHttpsServer, get as httpsGet } from 'node:https';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { Gateway, GatewayHttpAgent, GatewayHttpsAgent, AbortedError, ConnectRefusedError, SDK_TRANSPORTS } from '../../../clients/sdk/index.js';
import { echoServer, readAll, startChildGateway, startGateway, within } from '../../helpers/harness.js';

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

test('node http client through GatewayHttpAgent: large bodies arrive intact, keep-alive reuses the socket', async (t) => {
  const gw = await startGateway();
  const body = randomBytes(8 << 20);
  const server = createHttpServer((req, res) => {
    res.setHeader('x-remote-port', String(req.socket.remotePort));
    res.end(body);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    server.closeAllConnections();
    server.close();
    await gw.stop();
  });
  const port = (server.address() as { port: number }).port;
  const agent = new GatewayHttpAgent(gw.sdk, { keepAlive: true, maxSockets: 1 });
  const fetchOnce = () =>
    new Promise<{ body: Buffer; remotePort: string }>((resolve, reject) => {
      httpGet({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
        readAll(res).then((b) => resolve({ body: b, remotePort: String(res.headers['x-remote-port']) }), reject);
      }).on('error', reject);
    });
  const a = await within(fetchOnce(), 20_000, 'first GET');
  const b = await within(fetchOnce(), 20_000, 'second GET');
  t.is(sha(a.body), sha(body));
  t.is(sha(b.body), sha(body));
  t.is(a.remotePort, b.remotePort, 'keep-alive: the second request reuses the gateway socket');
  agent.destroy();
});

test('node https client through GatewayHttpsAgent: TLS end to end over a gateway socket', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-tls-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  const cert = readFileSync(join(dir, 'cert.pem'));
  const key = readFileSync(join(dir, 'key.pem'));
  const gw = await startGateway();
  const body = randomBytes(2 << 20);
  const server = createHttpsServer({ cert, key }, (_req, res) => res.end(body));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    server.closeAllConnections();
    server.close();
    rmSync(dir, { recursive: true, force: true });
    await gw.stop();
  });
  const port = (server.address() as { port: number }).port;
  const agent = new GatewayHttpsAgent(gw.sdk, { ca: cert });
  const got = await within(
    new Promise<Buffer>((resolve, reject) => {
      httpsGet({ host: 'localhost', port, path: '/', agent, ca: cert }, (res) => readAll(res).then(resolve, reject)).on('error', reject);
    }),
    20_000,
    'https GET',
  );
  t.is(sha(got), sha(body));
  agent.destroy();
});

const PG_BIN = '/usr/lib/postgresql/15/bin';

/** A throwaway PostgreSQL cluster on 127.0.0.1 (run as the postgres user when we are root). */
async function startPostgres(): Promise<{ port: number; stop(): void }> {
  if (!existsSync(join(PG_BIN, 'postgres'))) throw new Error(`PostgreSQL server binaries not found in ${PG_BIN}: apt-get install postgresql-15 (.ci/run does)`);
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-pg-'));
  const asPg = (cmd: string, args: string[]) => (process.getuid?.() === 0 ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]) as [string, string[]];
  if (process.getuid?.() === 0) {
    const pw = execFileSync('id', ['-u', 'postgres']).toString().trim();
    const gid = execFileSync('id', ['-g', 'postgres']).toString().trim();
    chownSync(dir, Number(pw), Number(gid));
  }
  const [initCmd, initArgs] = asPg(join(PG_BIN, 'initdb'), ['-D', join(dir, 'data'), '-A', 'trust', '-U', 'postgres', '--no-sync']);
  execFileSync(initCmd, initArgs, { stdio: 'ignore' });
  const probe = createNetServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as { port: number }).port;
  probe.close();
  const [cmd, args] = asPg(join(PG_BIN, 'postgres'), ['-D', join(dir, 'data'), '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off']);
  const child: ChildProcess = spawn(cmd, args, { stdio: 'ignore' });
  const deadline = Date.now() + 20_000;
  for (;;) {
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    try {
      await c.connect();
      await c.end();
      break;
    } catch (err) {
      await c.end().catch(() => {});
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`postgres did not start: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  return {
    port,
    stop() {
      child.kill('SIGTERM');
      setTimeout(() => rmSync(dir, { recursive: true, force: true }), 2000).unref();
    },
  };
}

test('pg (node-postgres) against a real PostgreSQL server over a gateway socket', async (t) => {
  t.timeout(90_000);
  const server = await startPostgres();
  const gw = await startGateway();
  t.teardown(async () => {
    server.stop();
    await gw.stop();
  });
  const client = new pg.Client({
    host: '127.0.0.1',
    port: server.port,
    user: 'postgres',
    database: 'postgres',
    // pg calls stream.connect(port, host) and waits for 'connect', as with net.Socket.
    stream: () => gw.sdk.socket(),
  } as pg.ClientConfig);
  await within(client.connect(), 20_000, 'pg connect');
  await client.query('create temporary table blobs (id int primary key, data bytea)');
  const blob = randomBytes(1 << 20);
  await client.query('insert into blobs values (1, $1)', [blob]);
  const row = await client.query<{ data: Buffer; digest: string }>("select data, encode(sha256(data), 'hex') as digest from blobs where id = 1");
  t.is(sha(row.rows[0]!.data), sha(blob), 'the blob comes back byte for byte');
  t.is(row.rows[0]!.digest, sha(blob), 'the server saw the same bytes');
  const many = await client.query<{ n: number }>('select generate_series(1, 50000) as n');
  t.is(many.rows.length, 50000);
  t.is(many.rows[49999]!.n, 50000);
  const sockets = await gw.sdk.listSockets();
  t.true(sockets.some((s) => s.remoteUri === `tcp://127.0.0.1:${server.port}`), 'the connection rides the gateway');
  await client.end();
});

test('GatewaySocket looks like net.Socket: connecting, connect event, addresses, destroy releases the gateway socket', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  const sock = gw.sdk.createConnection({ host: '127.0.0.1', port: echo.port });
  t.true(sock.connecting);
  t.true(sock.pending);
  sock.write('written while connecting ');
  await within(once(sock, 'connect'), 10_000, 'connect');
  t.false(sock.connecting);
  t.is(sock.remoteAddress, '127.0.0.1');
  t.is(sock.remotePort, echo.port);
  t.is(sock.remoteFamily, 'IPv4');
  // The default offers: shm first for a gateway on this host (when the addon loaded), else tcp.
  t.is(sock.transport, SDK_TRANSPORTS[0], JSON.stringify(sock.fallbacks));
  sock.setNoDelay(true).setKeepAlive(true, 1000);
  const got = readAll(sock);
  sock.end('and after');
  t.is((await within(got, 10_000, 'echo')).toString(), 'written while connecting and after');
  const s2 = await gw.sdk.connect(echo.uri);
  t.is(gw.gateway.table.size, 1);
  s2.destroy(new Error('caller aborts'));
  s2.on('error', () => {});
  await within(
    (async () => {
      while (gw.gateway.table.size > 0) await new Promise((r) => setTimeout(r, 20));
    })(),
    5_000,
    'gateway releases the destroyed socket',
  );
  t.pass();
});

test('AbortSignal and typed errors on connect', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  const ac = new AbortController();
  ac.abort();
  await t.throwsAsync(gw.sdk.connect(echo.uri, { signal: ac.signal }), { instanceOf: AbortedError });
  // Aborted while in flight: the promise rejects and no socket is left on the gateway.
  const ac2 = new AbortController();
  const p = gw.sdk.connect(echo.uri, { signal: ac2.signal });
  ac2.abort();
  await t.throwsAsync(p);
  await within(
    (async () => {
      while (gw.gateway.table.size > 0) await new Promise((r) => setTimeout(r, 20));
    })(),
    5_000,
    'no leaked socket after abort',
  );
  // A refused destination is a typed, coded error.
  await echo.close();
  const err = await t.throwsAsync(gw.sdk.connect(echo.uri), { instanceOf: ConnectRefusedError });
  t.is(err!.code, 'ERR_SOCKGATE_CONNECT_REFUSED');
});

test('the control channel reconnects: a gateway restarted on the same port serves the same SDK object', async (t) => {
  t.timeout(60_000);
  const probe = createNetServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as { port: number }).port;
  probe.close();
  const echo = await echoServer();
  const first = await startChildGateway('', ['--set', `listen.control=127.0.0.1:${port}`]);
  const sdk = await Gateway.connect(first.target, {}, { deadlineMs: 10_000 });
  t.teardown(async () => {
    sdk.close();
    await echo.close();
  });
  const roundTrip = async () => {
    const s = await sdk.connect(echo.uri, { deadlineMs: 20_000 });
    const got = readAll(s);
    s.end('ping');
    return (await within(got, 10_000, 'echo')).toString();
  };
  t.is(await roundTrip(), 'ping');
  first.child.kill('SIGKILL');
  await once(first.child, 'exit');
  // Start the replacement a little later; the SDK's call waits for it (wait-for-ready with backoff).
  const pending = roundTrip();
  await new Promise((r) => setTimeout(r, 500));
  const second = await startChildGateway('', ['--set', `listen.control=127.0.0.1:${port}`]);
  t.teardown(() => {
    second.child.kill('SIGKILL');
  });
  t.is(await within(pending, 30_000, 'call across the restart'), 'ping');
});
