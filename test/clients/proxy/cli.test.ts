/**
 * `sockgate proxy` as a real child process (a program that builds a commander
 * Command and calls registerProxyCommand): the ready line, curl through its
 * SOCKS5 server with --proxy-user and through -L, a graceful SIGTERM that lets
 * an open connection finish, --config, and clear errors with exit status.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { echoServer, startGateway, within } from '../../helpers/harness.js';
import { httpServer, randomBody, requireTool, run, sha256 } from './helpers.js';

const MAIN = fileURLToPath(new URL('./fixtures/proxy-main.js', import.meta.url));

interface Ready {
  event: 'ready';
  local: { listen: string; connect: string }[];
  remote: { listen: string; target: string }[];
  socks?: string;
}

interface Child {
  child: ChildProcess;
  ready: Promise<Ready>;
  exit: Promise<{ code: number | null; stderr: string }>;
}

/** Spawn the proxy command; `ready` resolves with its ready line, `exit` with its status and stderr. */
function spawnProxy(args: string[]): Child {
  const child = spawn(process.execPath, [MAIN, 'proxy', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TOKEN: '', SOCKGATE_VSOCK: 'off' } });
  let stdout = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exit = new Promise<{ code: number | null; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code, stderr })));
  const ready = new Promise<Ready>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (c: string) => {
      stdout += c;
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line) as Ready);
    });
    void exit.then(({ code }) => reject(new Error(`proxy exited ${code} before it was ready: ${stderr}`)));
  });
  ready.catch(() => {});
  return { child, ready, exit };
}

test('sockgate proxy: ready line, curl through --socks with --proxy-user and through -L, SIGTERM drains an open connection', async (t) => {
  requireTool('curl');
  const gw = await startGateway();
  const { body, sha256: want } = randomBody(4 << 20);
  const http = await httpServer(body);
  const echo = await echoServer();
  const p = spawnProxy([
    '--gateway', gw.target,
    '--socks', '127.0.0.1:0', '--socks-user', 'app', '--socks-pass', 'pw-123',
    '-L', `127.0.0.1:0=tcp://127.0.0.1:${http.port}`,
    '-L', `127.0.0.1:0=${echo.uri}`,
    '--log-level', 'silent',
  ]);
  t.teardown(async () => {
    p.child.kill('SIGKILL');
    await http.close();
    await echo.close();
    await gw.stop();
  });
  const ready = await within(p.ready, 20_000, 'proxy ready');
  t.is(ready.local.length, 2);
  t.regex(ready.socks!, /^127\.0\.0\.1:[1-9][0-9]*$/);
  const viaSocks = await run('curl', ['-sS', '--fail', '--max-time', '30', '--socks5-hostname', ready.socks!, '--proxy-user', 'app:pw-123', `http://localhost:${http.port}/`]);
  t.is(viaSocks.code, 0, viaSocks.stderr);
  t.is(sha256(viaSocks.stdout), want);
  const viaL = await run('curl', ['-sS', '--fail', '--max-time', '30', `http://${ready.local[0]!.listen}/`]);
  t.is(viaL.code, 0, viaL.stderr);
  t.is(sha256(viaL.stdout), want);

  // An open connection through -L, then SIGTERM: the listener closes, the connection still finishes.
  const [host, port] = ready.local[1]!.listen.split(':') as [string, string];
  const c = netConnect({ host, port: Number(port), allowHalfOpen: true });
  const cError = new Promise<Error>((resolve) => c.once('error', resolve));
  await once(c, 'connect');
  // Connections still opening when SIGTERM comes are waited for too; this one is open for sure once its echo returns.
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  c.write('before ');
  while (Buffer.concat(chunks).length < 'before '.length) await within(once(c, 'data'), 10_000, 'first echo');
  p.child.kill('SIGTERM');
  // The listener closes once the child has handled the signal.
  let attempt: string | undefined;
  for (let i = 0; i < 50 && attempt !== 'ECONNREFUSED'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    attempt = await new Promise<string | undefined>((resolve) => {
      const probe = netConnect({ host, port: Number(port) });
      probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code));
      probe.once('connect', () => {
        probe.destroy();
        resolve('connected');
      });
    });
  }
  t.is(attempt, 'ECONNREFUSED', 'no new connections after SIGTERM');
  c.end('after SIGTERM');
  await within(Promise.race([once(c, 'end'), cError.then((e) => Promise.reject(e))]), 10_000, 'echo after SIGTERM');
  t.is(Buffer.concat(chunks).toString(), 'before after SIGTERM');
  const { code } = await within(p.exit, 15_000, 'proxy exit');
  t.is(code, 0);
});

test('sockgate proxy --config: gateway, SOCKS users and forwards from YAML', async (t) => {
  requireTool('curl');
  const gw = await startGateway();
  const http = await httpServer(Buffer.from('from the config\n'));
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-proxy-'));
  const file = join(dir, 'proxy.yaml');
  writeFileSync(
    file,
    `gateway: "${gw.target}"
transports: [tcp]
local_forwards: ["127.0.0.1:0=tcp://127.0.0.1:${http.port}"]
socks:
  listen: 127.0.0.1:0
  users: [{ username: cfg, password: "from yaml" }]
log_level: silent
`,
  );
  const p = spawnProxy(['--config', file]);
  t.teardown(async () => {
    p.child.kill('SIGKILL');
    await http.close();
    await gw.stop();
  });
  const ready = await within(p.ready, 20_000, 'proxy ready');
  const r = await run('curl', ['-sS', '--fail', '--max-time', '20', '--socks5', ready.socks!, '--proxy-user', 'cfg:from yaml', `http://127.0.0.1:${http.port}/`]);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.toString(), 'from the config\n');
  const l = await run('curl', ['-sS', '--fail', '--max-time', '20', `http://${ready.local[0]!.listen}/`]);
  t.is(l.stdout.toString(), 'from the config\n');
  p.child.kill('SIGTERM');
  t.is((await within(p.exit, 15_000, 'proxy exit')).code, 0);
});

test('sockgate proxy: clear errors and exit status (vsock target, bad -L, bad config key)', async (t) => {
  // SOCKGATE_VSOCK=off (set for this file's proxies): never dial this machine's real vsock; the VM suite tests real AF_VSOCK.
  const vsock = spawnProxy(['--gateway', 'vsock:2:7070', '--socks', '127.0.0.1:0']);
  const v = await within(vsock.exit, 20_000, 'vsock exit');
  t.is(v.code, 1);
  t.regex(v.stderr, /ERR_SOCKGATE_NATIVE: gateway vsock:2:7070: AF_VSOCK is not available in this process: turned off by SOCKGATE_VSOCK=off/);

  const badL = spawnProxy(['--gateway', '127.0.0.1:1', '-L', '127.0.0.1:5432']);
  const b = await within(badL.exit, 20_000, 'bad -L exit');
  t.is(b.code, 2);
  t.regex(b.stderr, /-L: "127\.0\.0\.1:5432" is not valid: expected listen=uri/);

  const dir = mkdtempSync(join(tmpdir(), 'sockgate-proxy-'));
  const file = join(dir, 'bad.yaml');
  writeFileSync(file, 'gateway: 127.0.0.1:1\nsocks: { listen: 127.0.0.1:0, user: x }\n');
  const badCfg = spawnProxy(['--config', file]);
  const c = await within(badCfg.exit, 20_000, 'bad config exit');
  t.is(c.code, 2);
  t.regex(c.stderr, /socks\.user: unknown key/);

  const nothing = spawnProxy(['--gateway', '127.0.0.1:1']);
  const n = await within(nothing.exit, 20_000, 'nothing-to-do exit');
  t.is(n.code, 2);
  t.regex(n.stderr, /nothing to do/);
});
