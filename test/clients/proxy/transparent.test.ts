/**
 * Transparent mode, TCP, in a network namespace the test builds (netns.ts):
 * unmodified curl in the namespace reaches an HTTP server through nftables
 * `redirect` (IPv4 and IPv6) and `tproxy`, the gateway opening the real
 * connection (the server sees the gateway's side of the veth, not the
 * namespace's address); 16 MiB each way SHA-256-checked; iperf3 completes; a
 * destination the gateway's policy denies resets the application's first read
 * (ECONNRESET, bounded, never a hang); removing the rules restores direct traffic.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { spawn, spawnSync } from 'node:child_process';
import { randomBody, run, sha256 } from './helpers.js';
import { systemTool } from '../../../clients/proxy/rules-cli.js';
import { netnsSkipReason, startLab, type NetnsLab } from './netns.js';

const skip = netnsSkipReason();
if (skip) console.log(`transparent.test: skipped: ${skip}`);
const serial = skip ? test.skip : test.serial;

/** Bound on each client run inside the namespace. */
const CLIENT_TIMEOUT_MS = 60_000;

const BODY = randomBody(16 << 20);
let lab: NetnsLab;
let httpPort = 0;
let deniedPort = 0;
/** Peer address of every request the HTTP server saw, in order. */
const peers: string[] = [];
let deniedAccepts = 0;
const servers: Server[] = [];

async function listen(server: Server, host: string): Promise<number> {
  server.listen({ host, port: 0, ipv6Only: false });
  await once(server, 'listening');
  servers.push(server);
  return (server.address() as { port: number }).port;
}

test.before(async () => {
  if (skip) return;
  const http = createHttpServer((req, res) => {
    peers.push(req.socket.remoteAddress ?? '');
    if (req.method === 'PUT') {
      const h = createHash('sha256');
      let n = 0;
      req.on('data', (d: Buffer) => {
        h.update(d);
        n += d.length;
      });
      req.on('end', () => res.end(`${n} ${h.digest('hex')}`));
      return;
    }
    req.resume();
    res.writeHead(200, { 'content-length': BODY.body.length });
    res.end(BODY.body);
  }) as unknown as Server;
  // '::' with ipv6Only false: the veth's IPv4 and IPv6 addresses both.
  httpPort = await listen(http, '::');
  deniedPort = await listen(
    createServer((c) => {
      deniedAccepts++;
      c.destroy();
    }),
    '::',
  );
  lab = await startLab(1, [
    { name: 'denied', action: 'deny', directions: ['connect'], destinations: ['0.0.0.0/0', '::/0'], ports: [String(deniedPort)] },
    { name: 'lab', action: 'allow', directions: ['connect'], destinations: ['10.213.0.0/16', 'fd53::/16'] },
  ]);
});

test.after.always(async () => {
  await lab?.destroy();
  for (const s of servers) {
    (s as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
    s.close();
  }
});

function install(mode: 'redirect' | 'tproxy'): void {
  lab.rules(['--to', `${lab.host4}/32,${lab.host6}/128`, '--ports', `${httpPort},${deniedPort},5201`, '--mode', mode, '--install']);
}

async function curlGet(host: string): Promise<{ sha: string; peer: string }> {
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${httpPort}/`;
  const argv = lab.exec('curl', ['-sS', '--fail', '--max-time', '30', url]);
  const r = await run(argv[0]!, argv.slice(1), { timeoutMs: CLIENT_TIMEOUT_MS });
  if (r.code !== 0) throw new Error(`curl ${url}: ${r.code} ${r.stderr}\nproxy: ${lab.proxyLogs()}`);
  return { sha: sha256(r.stdout), peer: peers[peers.length - 1]! };
}

const strip = (a: string) => a.replace(/^::ffff:/, '');

serial('redirect: curl over IPv4 and IPv6 reaches the server through the gateway (SHA-256 of 16 MiB)', async (t) => {
  install('redirect');
  const v4 = await curlGet(lab.host4);
  t.is(v4.sha, BODY.sha256);
  // The gateway (this namespace) opened the connection: the server sees the host side of the veth.
  t.is(strip(v4.peer), lab.host4);
  const v6 = await curlGet(lab.host6);
  t.is(v6.sha, BODY.sha256);
  t.is(v6.peer, lab.host6);
});

serial('redirect: 16 MiB uploaded by curl arrives whole (SHA-256 at the server)', async (t) => {
  install('redirect');
  const up = randomBody(16 << 20);
  const argv = lab.exec('curl', ['-sS', '--fail', '--max-time', '30', '-T', '-', `http://${lab.host4}:${httpPort}/up`]);
  const r = await run(argv[0]!, argv.slice(1), { input: up.body, timeoutMs: CLIENT_TIMEOUT_MS });
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.toString(), `${up.body.length} ${up.sha256}`);
  t.is(strip(peers[peers.length - 1]!), lab.host4);
});

serial('redirect: a destination the gateway denies resets the first read (ECONNRESET, no hang)', async (t) => {
  install('redirect');
  // An unmodified node client: connect (the kernel completes it with the proxy), write, read.
  const script = `
    const s = require('net').connect(${deniedPort}, '${lab.host4}');
    const done = (what) => { console.log(what); process.exit(0); };
    s.on('connect', () => s.write('hello'));
    s.on('data', () => done('DATA'));
    s.on('end', () => done('EOF'));
    s.on('error', (e) => done(e.code));
    setTimeout(() => done('HANG'), 10000);`;
  const argv = lab.exec(process.execPath, ['-e', script]);
  const started = Date.now();
  const r = await run(argv[0]!, argv.slice(1), { timeoutMs: CLIENT_TIMEOUT_MS });
  t.is(r.stdout.toString().trim(), 'ECONNRESET', r.stderr);
  t.true(Date.now() - started < CLIENT_TIMEOUT_MS);
  t.is(deniedAccepts, 0, 'the denied server must never see a connection');
});

serial('iperf3 through redirect completes and reports its bytes', async (t) => {
  if (spawnSync('sh', ['-c', 'command -v iperf3']).status !== 0) return t.fail('iperf3 is not installed (apt-get install -y iperf3)');
  install('redirect');
  const server = spawn('iperf3', ['-s', '-1', '-J', '-B', lab.host4, '-p', '5201'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let serverOut = '';
  server.stdout.setEncoding('utf8').on('data', (c: string) => (serverOut += c));
  const serverExit = once(server, 'exit');
  t.teardown(() => void server.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 300));
  const argv = lab.exec('iperf3', ['-c', lab.host4, '-p', '5201', '-t', '2', '-J']);
  const r = await run(argv[0]!, argv.slice(1), { timeoutMs: CLIENT_TIMEOUT_MS });
  t.is(r.code, 0, r.stderr + r.stdout.toString().slice(0, 2000));
  const report = JSON.parse(r.stdout.toString()) as { end: { sum_received: { bytes: number }; sum_sent: { bytes: number } } };
  t.true(report.end.sum_received.bytes > 0);
  t.true(report.end.sum_sent.bytes >= report.end.sum_received.bytes);
  await serverExit;
  // The iperf3 server was reached by the gateway (this side of the veth), not by the namespace directly.
  const accepted = (JSON.parse(serverOut) as { start: { accepted_connection: { host: string } } }).start.accepted_connection.host;
  t.is(strip(accepted), lab.host4);
});

serial('tproxy: curl reaches the server through the gateway (IPv4 and IPv6)', async (t) => {
  install('tproxy');
  const v4 = await curlGet(lab.host4);
  t.is(v4.sha, BODY.sha256);
  t.is(strip(v4.peer), lab.host4);
  const v6 = await curlGet(lab.host6);
  t.is(v6.sha, BODY.sha256);
  t.is(v6.peer, lab.host6);
});

serial('removing the rules restores direct traffic', async (t) => {
  install('redirect');
  t.is(strip((await curlGet(lab.host4)).peer), lab.host4);
  t.regex(lab.rules(['--remove']), /removed table inet sockgate/);
  const direct = await curlGet(lab.host4);
  t.is(direct.sha, BODY.sha256);
  // Straight from the namespace now: the server sees the namespace's own address.
  t.is(strip(direct.peer), lab.client4);
  t.is(spawnSync('ip', ['netns', 'exec', lab.ns, systemTool('nft')!, 'list', 'table', 'inet', 'sockgate']).status, 1);
});
