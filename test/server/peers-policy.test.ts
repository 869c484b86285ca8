/**
 * Finding 9 through a peer gateway: the peer resolves the name in its own
 * network (here: its own resolver, which disagrees with A's), reports the
 * address it dialled, and A judges that address with its own rules, aborting
 * the socket (PERMISSION_DENIED to the guest, the peer's socket closed) when
 * they deny it. Two in-process gateways, real sockets, bytes hash-checked.
 */
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { loadConfig, mergeConfig } from '../../server/config.js';
import { Gateway } from '../../server/gateway.js';
import type { HostLookup } from '../../server/host-backend.js';
import { connectPeerGateway, echoServer, hashUntilEnd, sendRandom, TEST_OVERRIDES, within } from '../helpers/harness.js';

interface Coded {
  code?: string;
  rule?: string;
}

async function gatewayWithLookup(overrides: unknown, answers: Record<string, string>): Promise<{ gateway: Gateway; sdk: SdkGateway; target: string; stop(): Promise<void> }> {
  const lookup: HostLookup = async (host) => {
    const address = answers[host];
    if (!address) throw Object.assign(new Error(`no such host ${host}`), { code: 'ENOTFOUND' });
    return { address, family: address.includes(':') ? 6 : 4 };
  };
  const shmPath = join(mkdtempSync(join(tmpdir(), 'sockgate-shm-')), 'shm.sock');
  const config = loadConfig({ overrides: mergeConfig(mergeConfig(TEST_OVERRIDES, { transports: { shm: { path: shmPath } } }), overrides) });
  const gateway = new Gateway(config, { lookup, peerGateways: connectPeerGateway });
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

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('A judges the address the peer dialled with its own rules and aborts the socket when they deny it', async (t) => {
  const echo = await echoServer();
  const echo2 = await echoServer();
  const echo3 = await echoServer();
  // B resolves both names to its loopback, where the echo servers are.
  const b = await gatewayWithLookup(
    { rules: [{ name: 'b-all', action: 'allow', destinations: ['db.test', 'only.test', '127.0.0.0/8'] }] },
    { 'db.test': '127.0.0.1', 'only.test': '127.0.0.1' },
  );
  // A resolves them to a remote address its rules allow by name.
  const a = await gatewayWithLookup(
    {
      rules: [
        { name: 'a-no-echo2', action: 'deny', destinations: ['127.0.0.1'], ports: [echo2.port] },
        { name: 'a-names', action: 'allow', destinations: ['db.test', 'only.test'] },
        { name: 'a-loopback-echo', action: 'allow', destinations: ['127.0.0.0/8'], ports: [echo.port, echo2.port] },
      ],
      peers: [{ match: { host: '*.test' }, via: b.target, transports: ['tcp'] }],
    },
    { 'db.test': '192.0.2.10', 'only.test': '192.0.2.11' },
  );
  t.teardown(async () => {
    await a.stop();
    await b.stop();
    await Promise.all([echo.close(), echo2.close(), echo3.close()]);
  });

  // Allowed here for the address B dialled (127.0.0.1:echo by a-loopback-echo): bytes intact.
  const sock = await within(a.sdk.connect(`tcp://db.test:${echo.port}`), 15_000, 'connect through the peer');
  t.is(sock.remoteUri, echo.uri, 'the address the peer dialled');
  const got = hashUntilEnd(sock);
  const sent = await sendRandom(sock, 1 << 20);
  t.is((await within(got, 30_000, 'echo through both gateways')).sha256, sent);
  await until(() => a.gateway.table.size === 0 && b.gateway.table.size === 0, 10_000, 'both release the socket');

  // B dialled 127.0.0.1:echo2, which A's CIDR deny covers: aborted, naming A's rule.
  const denied = await t.throwsAsync(a.sdk.connect(`tcp://db.test:${echo2.port}`));
  t.is((denied as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', denied?.message);
  t.is((denied as Coded).rule, 'a-no-echo2', denied?.message);
  t.regex(denied!.message, /via peer gateway .* which dialled tcp:\/\/127\.0\.0\.1:/);

  // B dialled a loopback address for a name A allows only by name: the always-denied set applies here too.
  const reserved = await t.throwsAsync(a.sdk.connect(`tcp://only.test:${echo3.port}`));
  t.is((reserved as Coded).code, 'ERR_SOCKGATE_POLICY_DENIED', reserved?.message);
  t.is((reserved as Coded).rule, 'always-denied', reserved?.message);

  // Nothing is left open on either gateway.
  await until(() => a.gateway.table.size === 0 && b.gateway.table.size === 0, 10_000, 'the aborted sockets are released on both gateways');
  t.pass();
});
