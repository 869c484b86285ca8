/**
 * Issue 12 policy findings end to end, through real gateways on loopback:
 * the gateway's own ports are not reachable through it (finding 8), the
 * embedded default refuses privileged, wildcard and IPv6-loopback listens,
 * [::a.b.c.d] is judged and dialled as the IPv6 address while [::ffff:a.b.c.d]
 * is judged and dialled as IPv4 (finding 4), and a host name is resolved once,
 * that address judged (always-denied set included) and dialled (finding 9).
 */
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { loadConfig, mergeConfig } from '../../server/config.js';
import { Gateway } from '../../server/gateway.js';
import type { HostLookup } from '../../server/host-backend.js';
import { echoServer, hashUntilEnd, sendRandom, startGateway, TEST_OVERRIDES, within } from '../helpers/harness.js';

interface Coded {
  code?: string;
  rule?: string;
}

/** An in-process gateway with its own resolver. */
async function gatewayWithLookup(overrides: unknown, lookup: HostLookup): Promise<{ gateway: Gateway; sdk: SdkGateway; target: string; stop(): Promise<void> }> {
  const shmPath = join(mkdtempSync(join(tmpdir(), 'sockgate-shm-')), 'shm.sock');
  const config = loadConfig({ overrides: mergeConfig(mergeConfig(TEST_OVERRIDES, { transports: { shm: { path: shmPath } } }), overrides) });
  const gateway = new Gateway(config, { lookup });
  const addrs = await gateway.start();
  const sdk = await SdkGateway.connect(addrs.control);
  return {
    gateway,
    sdk,
    target: addrs.control,
    async stop() {
      sdk.close();
      await gateway.destroy();
    },
  };
}

/** A resolver from a fixed table; counts the lookups of each name. */
function tableLookup(answers: Record<string, string[]>): { lookup: HostLookup; calls: Map<string, number> } {
  const calls = new Map<string, number>();
  const lookup: HostLookup = async (host) => {
    const n = calls.get(host) ?? 0;
    calls.set(host, n + 1);
    const list = answers[host];
    if (!list) throw Object.assign(new Error(`no such host ${host}`), { code: 'ENOTFOUND' });
    const address = list[Math.min(n, list.length - 1)]!;
    return { address, family: address.includes(':') ? 6 : 4 };
  };
  return { lookup, calls };
}

test('finding 8: the gateway\'s own control, data and metrics ports are denied through it, under the default rules', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer();
  t.teardown(async () => {
    await gw.stop();
    await echo.close();
  });
  const ports = {
    control: Number(gw.target.split(':').pop()),
    data: Number(gw.gateway.addresses!.data.split(':').pop()),
    metrics: Number(new URL(gw.gateway.addresses!.metrics!).port),
  };
  for (const [name, port] of Object.entries(ports)) {
    for (const uri of [`tcp://127.0.0.1:${port}`, `tcp://localhost:${port}`, `tcp6://[::ffff:127.0.0.1]:${port}`, `tcp://0.0.0.0:${port}`]) {
      const err = await t.throwsAsync(gw.sdk.connect(uri), undefined, uri);
      t.is((err as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', `${uri}: ${err?.message}`);
      t.is((err as Coded).rule, 'always-denied', err?.message);
      t.true(err!.message.includes(`gateway's own ${name} port`), err?.message);
    }
  }
  t.is(gw.gateway.table.size, 0);
  // Any other loopback port still works, every byte checked.
  const sock = await within(gw.sdk.connect(echo.uri), 10_000, 'connect');
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 1 << 20);
  t.is((await within(got, 20_000, 'echo')).sha256, sent);
});

test('finding 8: the default refuses privileged, wildcard and [::1] listens and binds; 127.0.0.1 above 1023 works', async (t) => {
  const gw = await startGateway();
  t.teardown(() => gw.stop());
  for (const uri of ['tcp://127.0.0.1:80', 'tcp://127.0.0.1:1023', 'tcp://0.0.0.0:0', 'tcp6://[::]:0', 'tcp6://[::1]:0', 'tcp6://[::1]:40123']) {
    const err = await t.throwsAsync(gw.sdk.listen(uri), undefined, uri);
    t.is((err as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', `${uri}: ${err?.message}`);
    t.is((err as Coded).rule, 'default-deny', err?.message);
  }
  for (const uri of ['udp://127.0.0.1:53', 'udp://0.0.0.0:0', 'udp6://[::1]:0']) {
    const err = await t.throwsAsync(gw.sdk.udp(uri), undefined, uri);
    t.is((err as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', `${uri}: ${err?.message}`);
  }
  const server = await gw.sdk.listen('tcp://127.0.0.1:0');
  t.teardown(() => server.close());
  const udp = await gw.sdk.udp('udp://127.0.0.1:0');
  t.teardown(() => udp.close());
  t.pass();
});

test('finding 4: [::127.0.0.1] is the IPv6 address it dials, denied by the loopback rules; [::ffff:127.0.0.1] reaches IPv4 127.0.0.1', async (t) => {
  const gw = await startGateway();
  const echo = await echoServer(); // on 127.0.0.1 only
  t.teardown(async () => {
    await gw.stop();
    await echo.close();
  });
  for (const host of ['::127.0.0.1', '::7f00:1', '0:0:0:0:0:0:7f00:1']) {
    const err = await t.throwsAsync(gw.sdk.connect(`tcp6://[${host}]:${echo.port}`));
    t.is((err as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', `${host}: ${err?.message}`);
    t.is((err as Coded).rule, 'default-deny');
  }
  for (const host of ['::ffff:127.0.0.1', '0:0:0:0:0:ffff:7f00:1']) {
    const sock = await within(gw.sdk.connect(`tcp6://[${host}]:${echo.port}`), 10_000, host);
    t.is(sock.remoteUri, echo.uri, 'dialled as the IPv4 address it was judged as');
    const got = hashUntilEnd(sock);
    const sent = await sendRandom(sock, 256 << 10);
    t.is((await within(got, 10_000, 'echo')).sha256, sent);
  }
});

test('finding 9: a name is resolved once; the address judged (always-denied set included) is the one dialled', async (t) => {
  const echo = await echoServer();
  // A name whose answers change between lookups (rebinding): only the first may ever be used.
  const { lookup, calls } = tableLookup({
    'rebind.test': ['127.0.0.1', '169.254.169.254'],
    'meta.test': ['169.254.169.254'],
    'db.test': ['127.0.0.1'],
  });
  const gw = await gatewayWithLookup(
    {
      rules: [
        { name: 'named', action: 'allow', destinations: ['rebind.test', 'meta.test', 'db.test'] },
        { name: 'db-with-loopback', action: 'allow', destinations: ['db.test', '127.0.0.0/8'], ports: [echo.port] },
      ],
    },
    lookup,
  );
  t.teardown(async () => {
    await gw.stop();
    await echo.close();
  });
  // A host-name rule does not reach link-local or loopback answers.
  for (const name of ['meta.test', 'rebind.test']) {
    const err = await t.throwsAsync(gw.sdk.connect(`tcp://${name}:9`));
    t.is((err as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', err?.message);
    t.is((err as Coded).rule, 'always-denied', err?.message);
    t.regex(err!.message, /rule "named" does not list itself/);
  }
  t.is(calls.get('rebind.test'), 1, 'one lookup per connect');
  // A rule listing loopback itself reaches it; one lookup, and the socket dialled the judged address.
  const sock = await within(gw.sdk.connect(`tcp://db.test:${echo.port}`), 10_000, 'connect db.test');
  t.is(calls.get('db.test'), 1);
  t.is(sock.remoteUri, echo.uri);
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 256 << 10);
  t.is((await within(got, 10_000, 'echo')).sha256, sent);
  // The real resolver: "localhost" alone does not reach loopback, next to 127.0.0.0/8 it does (the default).
  const plain = await startGateway({ rules: [{ name: 'by-name', action: 'allow', destinations: ['localhost'] }] });
  t.teardown(() => plain.stop());
  const err = await t.throwsAsync(plain.sdk.connect(`tcp://localhost:${echo.port}`));
  t.is((err as Coded).rule, 'always-denied', err?.message);
});
