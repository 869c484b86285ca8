/**
 * The gateway reaches peer gateways only through the connector its
 * composition root injects (GatewayOptions.peerGateways): configured peers
 * without one are a clear error at construction, and the connector given is
 * the one used.
 */
import test from 'ava';
import { loadConfig, mergeConfig } from '../../server/config.js';
import { Gateway } from '../../server/gateway.js';
import type { PeerGatewayConnector } from '../../server/peers.js';
import { TEST_OVERRIDES } from '../helpers/harness.js';

const PEERS = { peers: [{ match: { host: '*.peer.test' }, via: '127.0.0.1:1', transports: ['tcp'] }] };

test('peers configured without a connector: InvalidArgumentError naming peerGateways', (t) => {
  const config = loadConfig({ overrides: mergeConfig(TEST_OVERRIDES, PEERS) });
  const err = t.throws(() => new Gateway(config), { message: /peerGateways/ });
  t.is((err as Error & { code?: string }).code, 'ERR_SOCKGATE_INVALID_ARGUMENT');
});

test('no peers: no connector needed', async (t) => {
  const config = loadConfig({ overrides: TEST_OVERRIDES });
  const gw = new Gateway(config);
  t.truthy(gw);
  await gw.destroy();
});

test('a connect through a peer route calls the injected connector with the route', async (t) => {
  const calls: { via: string; token: string | undefined }[] = [];
  const failing: PeerGatewayConnector = async (via, credentials) => {
    calls.push({ via, token: credentials.token });
    throw new Error('connector reached');
  };
  const config = loadConfig({ overrides: mergeConfig(TEST_OVERRIDES, { peers: [{ ...PEERS.peers[0], token: 'peer-token' }], rules: [{ name: 'all', action: 'allow', destinations: ['*.peer.test'] }] }) });
  const gw = new Gateway(config, { peerGateways: failing, lookup: async () => ({ address: '192.0.2.10', family: 4 }) });
  const addrs = await gw.start();
  t.teardown(() => gw.destroy());
  const { Gateway: SdkGateway } = await import('../../clients/sdk/index.js');
  const sdk = await SdkGateway.connect(addrs.control);
  t.teardown(() => sdk.close());
  await t.throwsAsync(sdk.connect('tcp://db.peer.test:5432', { transports: ['tcp'], timeoutMs: 2_000 }), { code: 'ERR_SOCKGATE_HOST_UNREACHABLE' });
  t.deepEqual(calls, [{ via: '127.0.0.1:1', token: 'peer-token' }]);
});
