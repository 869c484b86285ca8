/**
 * The SDK and the guest proxy reaching a gateway over real AF_VSOCK: meant to
 * run INSIDE the sockgate test VM (`npm run test:rdma`, SOCKGATE_IN_VM=1),
 * where Debian's vsock_loopback provides AF_VSOCK to CID 1 (local). On the
 * host it skips with a message; inside the VM nothing skips.
 *
 * Topology (one VM, no VMM in between, so the test plays the VMM's part):
 *
 *   SDK / proxy --AF_VSOCK 1:P--> forwardVsock(P) --unix--> <uds>_P  gateway (vsock_uds)
 *
 * The gateway runs unchanged in its production VM-host configuration,
 * `vsock_uds` (the Firecracker / Cloud Hypervisor form: a guest connection to
 * host port P arrives on the Unix socket `<uds_path>_P`, and TcpAttach
 * advertises the data port). forwardVsock() stands in for the VMM's vsock
 * device: a real AF_VSOCK listener whose connections are spliced to
 * `<uds_path>_P`, which is what the VMM does. The client side is exactly the
 * production guest code: `Gateway.connect('vsock:1:P')` and
 * `sockgate proxy --gateway vsock:1:P`, over the kernel's AF_VSOCK.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, mergeConfig } from '../../server/config.js';
import { Gateway as ServerGateway } from '../../server/gateway.js';
import { ConnectRefusedError, GatewayUnavailableError } from '../../proto/errors.js';
import { Gateway } from '../../clients/sdk/gateway.js';
import { dialVsock, forwardVsock, vsockSupport, type VsockForwarder } from '../../clients/sdk/vsock.js';

const IN_VM = process.env['SOCKGATE_IN_VM'] === '1';
/** vsock ports of the gateway's control and data planes (host ports in a real VM; CID 1 here). */
const CONTROL_PORT = 17070;
const DATA_PORT = 17071;
/** A vsock port nothing listens on. */
const CLOSED_PORT = 17099;
/** The SDK payload: 16 MiB each way, SHA-256 checked. */
const SDK_BYTES = 16 << 20;
/** The proxy payload (its own child process under TCG: kept smaller). */
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

/** Write `total` random bytes (then end); resolves with their SHA-256. */
async function sendRandom(sock: Socket | import('node:stream').Duplex, total: number): Promise<string> {
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

function hashUntilEnd(sock: Socket | import('node:stream').Duplex): Promise<{ bytes: number; sha256: string }> {
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

interface Env {
  dir: string;
  gateway: ServerGateway;
  control: VsockForwarder;
  data: VsockForwarder;
  echo: Server;
  echoPort: number;
}

let env: Env | undefined;

if (!IN_VM) {
  test('vsock: skipped, not inside the sockgate test VM (SOCKGATE_IN_VM unset); `npm run test:rdma` runs it there with vsock_loopback', (t) => {
    t.log('real AF_VSOCK is exercised only in the VM: on a host that is itself a VM, CID 1 and 2 lead to whatever runs it');
    t.pass();
  });
} else {
  test.before(async () => {
    if (!vsockSupport.available) throw new Error(`AF_VSOCK must work in the test VM (vsock_loopback): ${vsockSupport.reason}`);
    const dir = mkdtempSync(join(tmpdir(), 'sockgate-vsock-vm-'));
    const udsPath = join(dir, 'v.sock');
    const config = loadConfig({
      overrides: mergeConfig(
        {
          listen: { control: '127.0.0.1:0', data: '127.0.0.1:0', metrics: '127.0.0.1:0' },
          telemetry: { log_level: 'silent', traces: 'none' },
          shutdown: { drain_timeout_ms: 2000 },
        },
        // The guest is the identity its VM (the VMM socket) maps to; an unmapped VM is refused (issue 17).
        { vsock_uds: { path: udsPath, control_port: CONTROL_PORT, data_port: DATA_PORT }, identities: [{ name: 'vm-uds', vmm_paths: [udsPath] }] },
      ),
    });
    const gateway = new ServerGateway(config);
    const addrs = await gateway.start();
    if (!addrs.vsock || !existsSync(addrs.vsock.control) || !existsSync(addrs.vsock.data)) throw new Error('the gateway did not serve its vsock_uds sockets');
    // The VMM's part: guest connections to vsock port P go to <uds_path>_P.
    const control = forwardVsock(CONTROL_PORT, addrs.vsock.control);
    const data = forwardVsock(DATA_PORT, addrs.vsock.data);
    const echo = createServer({ allowHalfOpen: true }, (c) => {
      c.on('error', () => {});
      c.pipe(c);
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    env = { dir, gateway, control, data, echo, echoPort: (echo.address() as { port: number }).port };
  });

  test.after.always(async () => {
    if (!env) return;
    env.control.close();
    env.data.close();
    env.echo.close();
    await env.gateway.destroy();
    rmSync(env.dir, { recursive: true, force: true });
  });

  test.serial('vsock: SDK: Gateway.connect("vsock:1:17070") -> gateway -> TCP echo, 16 MiB each way, SHA-256; data plane on the advertised vsock port', async (t) => {
    const e = env!;
    const gw = await within(Gateway.connect(`vsock:1:${CONTROL_PORT}`), STEP_MS, 'Gateway.connect over vsock');
    t.teardown(() => gw.close());
    t.true(e.control.accepted >= 1, 'the control channel came over AF_VSOCK');
    const sock = await within(gw.connect(`tcp://127.0.0.1:${e.echoPort}`, { transports: ['tcp'] }), STEP_MS, 'connect through the gateway');
    t.is(sock.transport, 'tcp');
    t.true(e.data.accepted >= 1, 'the tcp data plane dialed TcpAttach.vsock_port over AF_VSOCK, not host:port');
    const started = Date.now();
    const received = hashUntilEnd(sock);
    const sent = await within(sendRandom(sock, SDK_BYTES), STEP_MS, 'send 16 MiB');
    const got = await within(received, STEP_MS, 'echo of 16 MiB');
    t.is(got.bytes, SDK_BYTES);
    t.is(got.sha256, sent);
    t.log(`16 MiB echoed over vsock in ${Date.now() - started} ms (control connections ${e.control.accepted}, data connections ${e.data.accepted})`);
  });

  test.serial('vsock: proxy: sockgate proxy --gateway vsock:1:17070 -L 127.0.0.1:0=tcp://<echo> carries bytes (SHA-256)', async (t) => {
    const e = env!;
    const before = e.data.accepted;
    const child = spawn(
      process.execPath,
      [CLI, 'proxy', '--gateway', `vsock:1:${CONTROL_PORT}`, '--transport', 'tcp', '-L', `127.0.0.1:0=tcp://127.0.0.1:${e.echoPort}`, '--log-level', 'warn'],
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
    const c = netConnect({ host, port: Number(port), allowHalfOpen: true });
    await once(c, 'connect');
    const received = hashUntilEnd(c);
    const sent = await within(sendRandom(c, PROXY_BYTES), STEP_MS, 'send through the proxy');
    const got = await within(received, STEP_MS, 'echo through the proxy');
    t.is(got.bytes, PROXY_BYTES);
    t.is(got.sha256, sent);
    t.true(e.data.accepted > before, 'the proxy attached its data connection over AF_VSOCK');
    child.kill('SIGTERM');
    const code = await within(exited, STEP_MS, 'proxy exit');
    t.is(code, 0, stderr);
  });

  test.serial('vsock: errors: a closed vsock port is ConnectRefusedError, and Gateway.connect names it', async (t) => {
    const sock = dialVsock({ cid: 1, port: CLOSED_PORT }, { timeoutMs: 10_000 });
    const [err] = (await within(once(sock, 'error'), STEP_MS, 'refused dial')) as [Error];
    t.true(err instanceof ConnectRefusedError, String(err));
    t.regex(err.message, /vsock:1:17099: connection refused/);
    const gerr = await t.throwsAsync(Gateway.connect(`vsock:1:${CLOSED_PORT}`, {}, { deadlineMs: 5_000 }));
    t.true(gerr instanceof GatewayUnavailableError, String(gerr));
    t.regex(gerr!.message, /connection refused \(nothing listens on vsock port 17099 of CID 1\)/);
  });
}
