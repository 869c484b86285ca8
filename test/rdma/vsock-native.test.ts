/**
 * The gateway's own AF_VSOCK listeners (`vsock:`, issue 17) with the VM as the
 * identity: meant to run INSIDE the sockgate test VM (`npm run test:rdma`,
 * SOCKGATE_IN_VM=1), where vsock_loopback gives AF_VSOCK to CID 1. On the host
 * it skips with a message; inside the VM nothing skips.
 *
 *   SDK / proxy --AF_VSOCK 1:P--> gateway VsockListener (control: grpc-js; data: tcp plane, spliced)
 *
 * No VMM in between: the guest code is the production one
 * (`Gateway.connect('vsock:1:P')`, `sockgate proxy --gateway vsock:1:P`).
 * vsock_loopback has one CID (1) for both ends, so this shows CID 1 mapped to
 * an identity, and refused under a config that maps another CID; distinct
 * guests (CIDs 3, 4, ...) need a vhost-vsock host (README "VM guests").
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../../server/config.js';
import { Gateway as ServerGateway } from '../../server/gateway.js';
import { UnauthenticatedError } from '../../proto/errors.js';
import { Gateway } from '../../clients/sdk/gateway.js';
import { vsockSupport } from '../../clients/sdk/vsock.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
/** vsock ports of the mapped gateway, and of the one that maps another CID. */
const PORTS = { control: 18070, data: 18071 };
const OTHER_PORTS = { control: 18170, data: 18171 };
/** SDK payload (each way, SHA-256); the proxy's, smaller (a child process under TCG). */
const SDK_BYTES = 8 << 20;
const PROXY_BYTES = 4 << 20;
/** Bound on every step; TCG is slow but nothing here needs minutes. */
const STEP_MS = 90_000;
const CLI = fileURLToPath(new URL('../../server/cli/index.js', import.meta.url));

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
    }),
  ]);
}

async function sendRandom(sock: Duplex, total: number): Promise<string> {
  const hash = createHash('sha256');
  const chunk = 256 << 10;
  for (let sent = 0; sent < total; sent += chunk) {
    const piece = randomBytes(Math.min(chunk, total - sent));
    hash.update(piece);
    if (!sock.write(piece)) await once(sock, 'drain');
  }
  sock.end();
  return hash.digest('hex');
}

function hashUntilEnd(sock: Duplex): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    sock.on('data', (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    sock.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    sock.once('error', reject);
  });
}

function gatewayConfig(ports: { control: number; data: number }, cids: number[]) {
  return loadConfig({
    overrides: {
      listen: { control: '127.0.0.1:0', data: '127.0.0.1:0', metrics: '' },
      telemetry: { log_level: 'silent', traces: 'none' },
      shutdown: { drain_timeout_ms: 2000 },
      identities: [{ name: 'vm-local', vsock_cids: cids }],
      vsock: { cid: 1, control_port: ports.control, data_port: ports.data },
    },
  });
}

let gateway: ServerGateway | undefined;
let echo: Server | undefined;
let echoPort = 0;

if (!IN_VM) {
  test('vsock-native: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there with vsock_loopback', (t) => {
    t.log('the gateway\'s AF_VSOCK listeners are exercised only in the VM: CID 1 needs vsock_loopback');
    t.pass();
  });
} else {
  test.before(async () => {
    if (!vsockSupport.available) throw new Error(`AF_VSOCK must work in the test VM (vsock_loopback): ${vsockSupport.reason}`);
    gateway = new ServerGateway(gatewayConfig(PORTS, [1]));
    const addrs = await gateway.start();
    if (addrs.vsockPorts?.control !== PORTS.control) throw new Error('the gateway did not listen on its vsock control port');
    echo = createServer({ allowHalfOpen: true }, (c) => {
      c.on('error', () => {});
      c.pipe(c);
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    echoPort = (echo.address() as { port: number }).port;
  });

  test.after.always(async () => {
    echo?.close();
    await gateway?.destroy();
  });

  test.serial('vsock-native: SDK over the gateway\'s AF_VSOCK listener is identity vm-local by CID 1 (no token); 8 MiB each way, SHA-256, data on the vsock data port', async (t) => {
    const gw = await within(Gateway.connect(`vsock:1:${PORTS.control}`), STEP_MS, 'Gateway.connect over vsock');
    t.teardown(() => gw.close());
    const sock = await within(gw.connect(`tcp://127.0.0.1:${echoPort}`, { transports: ['tcp'] }), STEP_MS, 'connect through the gateway');
    t.is(sock.transport, 'tcp');
    const mine = await gw.listSockets();
    t.deepEqual(mine.map((s) => s.identity), ['vm-local'], 'the VM (CID 1) is the identity');
    const received = hashUntilEnd(sock);
    const sent = await within(sendRandom(sock, SDK_BYTES), STEP_MS, 'send');
    const got = await within(received, STEP_MS, 'echo');
    t.is(got.bytes, SDK_BYTES);
    t.is(got.sha256, sent);
    const acc = gateway!.vsockAccepted;
    t.true(acc.control >= 1 && acc.data >= 1, `the control and data connections came over AF_VSOCK (${JSON.stringify(acc)})`);
  });

  test.serial('vsock-native: sockgate proxy --gateway vsock:1:P carries bytes (SHA-256) as vm-local', async (t) => {
    const before = gateway!.vsockAccepted.data;
    const child = spawn(
      process.execPath,
      [CLI, 'proxy', '--gateway', `vsock:1:${PORTS.control}`, '--transport', 'tcp', '-L', `127.0.0.1:0=tcp://127.0.0.1:${echoPort}`, '--log-level', 'warn'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TOKEN: '' } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const ready = await within(
      new Promise<{ local: { listen: string }[] }>((resolve, reject) => {
        const poll = setInterval(() => {
          const line = stdout.split('\n').find((l) => l.startsWith('{'));
          if (line) {
            clearInterval(poll);
            resolve(JSON.parse(line) as { local: { listen: string }[] });
          } else if (child.exitCode !== null) {
            clearInterval(poll);
            reject(new Error(`proxy exited ${child.exitCode}: ${stderr}`));
          }
        }, 50);
      }),
      STEP_MS,
      'proxy ready line',
    );
    const [host, port] = ready.local[0]!.listen.split(':') as [string, string];
    const c: Socket = netConnect({ host, port: Number(port), allowHalfOpen: true });
    await once(c, 'connect');
    const received = hashUntilEnd(c);
    const sent = await within(sendRandom(c, PROXY_BYTES), STEP_MS, 'send through the proxy');
    const got = await within(received, STEP_MS, 'echo through the proxy');
    t.is(got.bytes, PROXY_BYTES);
    t.is(got.sha256, sent);
    t.true(gateway!.vsockAccepted.data > before, 'the proxy attached over the AF_VSOCK data port');
    child.kill('SIGTERM');
    t.is(await within(exited, STEP_MS, 'proxy exit'), 0, stderr);
  });

  test.serial('vsock-native: a gateway that maps another CID (3) refuses CID 1', async (t) => {
    const other = new ServerGateway(gatewayConfig(OTHER_PORTS, [3]));
    await other.start();
    t.teardown(() => other.destroy());
    const gw = await within(Gateway.connect(`vsock:1:${OTHER_PORTS.control}`), STEP_MS, 'Gateway.connect over vsock');
    t.teardown(() => gw.close());
    const err = await t.throwsAsync(gw.listSockets());
    t.true(err instanceof UnauthenticatedError, String(err));
    t.regex(err!.message, /vsock CID 1 maps to no identity/);
    await t.throwsAsync(gw.connect(`tcp://127.0.0.1:${echoPort}`, { transports: ['tcp'] }), { instanceOf: UnauthenticatedError });
  });
}
