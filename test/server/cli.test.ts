/**
 * The `sockgate` command as a user runs it: `node dist/server/cli/index.js ...` as a
 * child process against a real gateway on loopback. connect pipes stdin to a
 * socket and the socket to stdout (SHA-256 checked) and exits with the
 * socket's status; status prints the smcss-like table; serve refuses a bad
 * configuration naming the key.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ADMIN_IDENTITY, ADMIN_TOKEN, CLI_PATH, echoServer, startGateway, within, type TestGateway } from '../helpers/harness.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { closedPort, eventually } from '../helpers/rpc.js';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
}

/** Run the CLI with `args`, feeding `stdin`; bounded by `ms`. */
function cli(args: string[], stdin: Buffer | undefined, ms = 30_000, env: NodeJS.ProcessEnv = {}): Promise<Run> {
  const child = spawn(process.execPath, [CLI_PATH, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TOKEN: '', ...env } });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c: string) => (err += c));
  child.stdin.on('error', () => {});
  if (stdin) {
    // Write in pieces so the CLI sees a stream, not one chunk.
    void (async () => {
      for (let o = 0; o < stdin.length; o += 256 * 1024) {
        if (!child.stdin.write(stdin.subarray(o, o + 256 * 1024))) await new Promise((r) => child.stdin.once('drain', r));
      }
      child.stdin.end();
    })();
  } else {
    child.stdin.end();
  }
  const done = new Promise<Run>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: err })));
  return within(done, ms, `sockgate ${args.join(' ')}`).catch((e: Error) => {
    child.kill('SIGKILL');
    throw new Error(`${e.message}; stderr so far: ${err}`);
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

type Echo = Awaited<ReturnType<typeof echoServer>>;

async function setup(t: ExecutionContext, overrides: unknown = {}): Promise<{ gw: TestGateway; echo: Echo }> {
  const gw = await startGateway(overrides);
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  return { gw, echo };
}

for (const transport of [undefined, 'tcp', 'grpc'] as const) {
  test.serial(`connect${transport ? ` --transport ${transport}` : ''}: 8 MiB on stdin come back on stdout (SHA-256), exit 0`, async (t) => {
    t.timeout(60_000);
    const { gw, echo } = await setup(t);
    const data = randomBytes(8 << 20);
    const args = ['connect', echo.uri, '--target', gw.target, ...(transport ? ['--transport', transport] : [])];
    const r = await cli(args, data, 50_000);
    t.is(r.code, 0, r.stderr);
    t.is(r.stdout.length, data.length);
    t.is(sha(r.stdout), sha(data));
    t.true(await eventually(() => gw.gateway.table.size === 0, 5_000), 'the socket is closed after the CLI exits');
  });
}

test.serial('connect: the destination closing first ends stdout and exits 0', async (t) => {
  const { gw } = await setup(t);
  const { tcpServer } = await import('../helpers/harness.js');
  const banner = randomBytes(100_000);
  const dest = await tcpServer((c) => c.end(banner));
  t.teardown(() => dest.close());
  const r = await cli(['connect', dest.uri, '--target', gw.target], Buffer.alloc(0));
  t.is(r.code, 0, r.stderr);
  t.is(sha(r.stdout), sha(banner));
});

test.serial('connect: a closed port exits 3 naming ERR_SOCKGATE_CONNECT_REFUSED', async (t) => {
  const { gw } = await setup(t);
  const port = await closedPort();
  const r = await cli(['connect', `tcp://127.0.0.1:${port}`, '--target', gw.target], Buffer.from('never sent'));
  t.is(r.code, 3, r.stderr);
  t.regex(r.stderr, /ERR_SOCKGATE_CONNECT_REFUSED/);
  t.regex(r.stderr, new RegExp(String(port)));
  t.is(r.stdout.length, 0);
});

test.serial('connect: a denied destination exits 7 naming the policy error and the rule', async (t) => {
  const { gw } = await setup(t);
  // The embedded default allows loopback only.
  const r = await cli(['connect', 'tcp://10.255.255.1:80', '--target', gw.target], Buffer.alloc(0));
  t.is(r.code, 7, r.stderr);
  t.regex(r.stderr, /ERR_SOCKGATE_POLICY_DENIED/);
  t.regex(r.stderr, /default-deny/);
});

test.serial('connect: bad URIs exit 2, an unknown token exits 8, an unusable transport exits 12', async (t) => {
  const { gw, echo } = await setup(t, {
    anonymous: { enabled: false },
    identities: [{ name: 'cli-user', tokens: ['cli-user-token-0123456789'] }],
    transports: { enabled: ['grpc'] },
  });
  const bad = await cli(['connect', 'tcp://127.0.0.1:0', '--target', gw.target, '--token', 'cli-user-token-0123456789'], Buffer.alloc(0));
  t.is(bad.code, 2, bad.stderr);
  t.regex(bad.stderr, /ERR_SOCKGATE_INVALID_URI/);
  t.regex(bad.stderr, /port 0/);
  const scheme = await cli(['connect', 'http://127.0.0.1:80', '--target', gw.target, '--token', 'cli-user-token-0123456789'], Buffer.alloc(0));
  t.is(scheme.code, 2, scheme.stderr);
  t.regex(scheme.stderr, /unknown scheme/);
  const unknown = await cli(['connect', echo.uri, '--target', gw.target, '--token', 'not-the-token-0123456789'], Buffer.alloc(0));
  t.is(unknown.code, 8, unknown.stderr);
  t.regex(unknown.stderr, /ERR_SOCKGATE_UNAUTHENTICATED/);
  // The token also comes from SOCKGATE_TOKEN.
  const envTok = await cli(['connect', echo.uri, '--target', gw.target, '--transport', 'tcp'], Buffer.alloc(0), 30_000, { SOCKGATE_TOKEN: 'cli-user-token-0123456789' });
  t.is(envTok.code, 12, envTok.stderr);
  t.regex(envTok.stderr, /ERR_SOCKGATE_NO_TRANSPORT/);
});

test.serial('status: prints the table header and a row for an open socket with its transport and byte counters', async (t) => {
  const { gw, echo } = await setup(t);
  const sock = await gw.sdk.connect(echo.uri, { transports: ['grpc'] });
  const payload = randomBytes(100_000);
  let got = 0;
  const echoed = new Promise<void>((resolve) =>
    sock.on('data', (c: Buffer) => {
      got += c.length;
      if (got >= payload.length) resolve();
    }),
  );
  sock.write(payload);
  await within(echoed, 10_000, 'echo before status');
  const r = await cli(['status', '--target', gw.target], undefined);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.toString().trimEnd().split('\n');
  const header = lines[0]!.trim().split(/\s+/);
  t.deepEqual(header, ['ID', 'IDENTITY', 'KIND', 'STATE', 'LOCAL', 'REMOTE', 'TRANSPORT', 'FALLBACK', 'KERNEL', 'DATA', 'HOP', 'IN', 'OUT', 'AGE']);
  const row = lines.find((l) => l.startsWith(`${sock.socketId} `));
  t.truthy(row, `a row for ${sock.socketId} in:\n${r.stdout.toString()}`);
  const cols = row!.trim().split(/\s+/);
  const col = (name: string) => cols[header.indexOf(name)];
  t.is(col('IDENTITY'), 'anonymous');
  t.is(col('KIND'), 'stream');
  t.is(col('STATE'), 'open');
  t.is(col('REMOTE'), echo.uri);
  t.is(col('TRANSPORT'), 'grpc');
  t.is(col('FALLBACK'), '-');
  // The host socket is a plain TCP one (no rule says smc: prefer).
  t.is(col('KERNEL'), 'tcp');
  // A grpc socket has no tcp-plane data connection.
  t.is(col('DATA'), '-');
  // Not routed through a peer gateway.
  t.is(col('HOP'), '-');
  // 100,000 bytes each way, shown in KiB.
  t.is(col('IN'), '98K');
  t.is(col('OUT'), '98K');
  t.regex(col('AGE') ?? '', /^[0-9]+s$/);
  // Columns line up: every row is at least as long as the header up to AGE.
  t.true(lines.every((l) => l.length >= lines[0]!.indexOf('AGE')));

  const json = await cli(['status', '--target', gw.target, '--json'], undefined);
  t.is(json.code, 0, json.stderr);
  const list = JSON.parse(json.stdout.toString()) as { socketId: string; bytesIn: number; bytesOut: number }[];
  const mine = list.find((s) => s.socketId === sock.socketId);
  t.is(mine?.bytesIn, payload.length);
  t.is(mine?.bytesOut, payload.length);
  sock.destroy();
});

test.serial('status: a fallback reason is shown in the FALLBACK column', async (t) => {
  const { gw, echo } = await setup(t, { transports: { enabled: ['grpc'] } });
  const sock = await gw.sdk.connect(echo.uri, { transports: ['tcp', 'grpc'] });
  t.is(sock.transport, 'grpc');
  const r = await cli(['status', '--target', gw.target], undefined);
  t.is(r.code, 0, r.stderr);
  const row = r.stdout
    .toString()
    .split('\n')
    .find((l) => l.startsWith(`${sock.socketId} `));
  t.regex(row ?? '', /\sgrpc\s+UNSUPPORTED\s/);
  sock.destroy();
});

test.serial('status: a non-admin identity sees its own sockets only; another identity\'s are refused with exit 7; an admin sees all', async (t) => {
  // Issue 12: status used to be admin-only (exit 7 for everyone else); every identity now lists its own sockets.
  const tokens = { alice: 'status-alice-token-0123456789', bob: 'status-bob-token-0123456789' };
  const { gw, echo } = await setup(t, {
    identities: [{ name: 'alice', tokens: [tokens.alice] }, { name: 'bob', tokens: [tokens.bob] }, ADMIN_IDENTITY],
  });
  const alice = await SdkGateway.connect(gw.target, { token: tokens.alice });
  const bob = await SdkGateway.connect(gw.target, { token: tokens.bob });
  t.teardown(() => {
    alice.close();
    bob.close();
  });
  const a = await alice.connect(echo.uri, { transports: ['grpc'] });
  const b = await bob.connect(echo.uri, { transports: ['grpc'] });
  const mine = await cli(['status', '--target', gw.target, '--json'], undefined, 30_000, { SOCKGATE_TOKEN: tokens.alice });
  t.is(mine.code, 0, mine.stderr);
  t.deepEqual((JSON.parse(mine.stdout.toString()) as { socketId: string }[]).map((s) => s.socketId), [a.socketId]);
  const other = await cli(['status', '--target', gw.target, '--identity', 'bob'], undefined, 30_000, { SOCKGATE_TOKEN: tokens.alice });
  t.is(other.code, 7, other.stderr);
  t.regex(other.stderr, /ERR_SOCKGATE_POLICY_DENIED/);
  const all = await cli(['status', '--target', gw.target, '--json'], undefined, 30_000, { SOCKGATE_TOKEN: ADMIN_TOKEN });
  t.is(all.code, 0, all.stderr);
  t.deepEqual((JSON.parse(all.stdout.toString()) as { socketId: string }[]).map((s) => s.socketId).sort(), [a.socketId, b.socketId].sort());
  a.destroy();
  b.destroy();
});

function writeConfig(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-cli-'));
  const file = join(dir, 'bad.yaml');
  writeFileSync(file, text);
  return file;
}

test.serial('serve --config with a bad key exits non-zero naming the key', async (t) => {
  const cases: [string, string, RegExp][] = [
    ['an unknown top-level key', 'frobnicate: 1\n', /frobnicate: unknown key/],
    ['an unknown nested key', 'listen:\n  control: 127.0.0.1:0\n  data: 127.0.0.1:0\n  metrics: ""\n  bogus: 1\n', /listen\.bogus: unknown key/],
    ['a bad value', 'limits:\n  max_sockets: -5\n  max_sockets_per_identity: 10\n', /limits\.max_sockets/],
    ['a bad listen address', 'listen:\n  control: "nonsense"\n  data: 127.0.0.1:0\n  metrics: ""\n', /listen\.control/],
    ['a bad rule entry', 'rules:\n  - name: r\n    action: maybe\n    destinations: [127.0.0.1]\n', /rules\.0\.action/],
    ['YAML that does not parse', 'listen: [\n', /cannot parse/],
  ];
  for (const [what, yaml, why] of cases) {
    const r = await cli(['serve', '--config', writeConfig(yaml)], undefined, 30_000);
    t.not(r.code, 0, `${what}: exit status`);
    t.not(r.code, null, `${what}: exited by itself`);
    t.regex(r.stderr, why, what);
  }
  const missing = await cli(['serve', '--config', '/nonexistent/sockgate.yaml'], undefined, 15_000);
  t.not(missing.code, 0);
  t.regex(missing.stderr, /nonexistent\/sockgate\.yaml/);
  const flag = await cli(['serve', '--set', 'limits.max_sockets=lots'], undefined, 15_000);
  t.not(flag.code, 0);
  t.regex(flag.stderr, /limits\.max_sockets/);
  const env = await cli(['serve'], undefined, 15_000, { SOCKGATE_SOCKET__HIGH_WATERMARK_BYTES: '12' });
  t.not(env.code, 0);
  t.regex(env.stderr, /socket\.high_watermark_bytes/);
});
