/**
 * Kernel SMC on the host side (no SMC in this host's kernel, so only what does
 * not need it): the `smc:` config section and a rule's `smc: prefer` (schema,
 * defaults, refusals), policy reporting the flag, the addon's availability
 * report with its reason, HostSmc refusing UEID/PNET config it cannot apply,
 * and a `smc: prefer` connect on a kernel without SMC opening plain TCP (bytes
 * hash-checked) whose kernel view says tcp. The SMC paths themselves run in
 * the VM lab (test/rdma/smc.test.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import test from 'ava';
import pino from 'pino';
import { loadConfig } from '../../server/config.js';
import { InvalidArgumentError } from '../../proto/errors.js';
import { Policy } from '../../server/policy.js';
import { HostBackend } from '../../server/host-backend.js';
import { HostSmc } from '../../server/host-smc.js';
import { smcSupport } from '../../native/smc.js';

const RULE = '{name: smc-db, action: allow, directions: [connect], destinations: [127.0.0.0/8], smc: prefer}';
const silent = pino({ level: 'silent' });

test('defaults: smc off everywhere, one diag dump per second at most', (t) => {
  const c = loadConfig();
  t.deepEqual(c.smc, { data_port: false, peer_dial: 'off', ueids: [], pnets: [], diag_cache_ms: 1000 });
  t.true(c.rules.every((r) => r.smc === 'off'));
});

test('smc section: UEIDs, PNET ids and a rule that prefers smc load', (t) => {
  const c = loadConfig({
    sets: ['smc.data_port=true', 'smc.peer_dial=prefer', 'smc.ueids=[SOCKGATE-LAB, A.B-1]', 'smc.pnets=[{id: SGNET, eth: eth0, ib: rxe0}]', `rules=[${RULE}]`],
  });
  t.true(c.smc.data_port);
  t.is(c.smc.peer_dial, 'prefer');
  t.deepEqual(c.smc.ueids, ['SOCKGATE-LAB', 'A.B-1']);
  t.deepEqual(c.smc.pnets, [{ id: 'SGNET', eth: 'eth0', ib: 'rxe0', ib_port: 1 }]);
  t.is(c.rules[0]!.smc, 'prefer');
});

test('bad smc config is refused with the key named', (t) => {
  const bad = (sets: string[], re: RegExp) => {
    const err = t.throws(() => loadConfig({ sets }), { instanceOf: InvalidArgumentError });
    t.regex(err?.message ?? '', re);
  };
  bad(['smc.ueids=[lower-case]'], /smc\.ueids.*UEID/s);
  bad(['smc.ueids=[ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456]'], /smc\.ueids/); // 33 characters
  bad(['smc.ueids=[A, B, C, D, E]'], /smc\.ueids/); // the kernel keeps 4
  bad(['smc.pnets=[{id: "not valid"}]'], /smc\.pnets.*PNET id/s);
  bad(['smc.pnets=[{id: NET, eth: "a/b"}]'], /smc\.pnets.*interface name/s);
  bad(['smc.pnets=[{id: NET, ib_port: 0}]'], /smc\.pnets/);
  bad([`rules=[{name: r, action: allow, destinations: [10.0.0.0/8], smc: always}]`], /rules.*smc/s);
  bad(['smc.diag_cache_ms=-1'], /smc\.diag_cache_ms/);
  bad(['smc.peer_dial=always'], /smc\.peer_dial/);
  bad(['smc.peer_dial=true'], /smc\.peer_dial/);
});

test('policy says which rule prefers smc', (t) => {
  const policy = new Policy(
    loadConfig({ sets: [`rules=[${RULE}, {name: plain, action: allow, directions: [connect], destinations: [10.0.0.0/8]}]`] }),
  );
  const anon = policy.identify({});
  t.deepEqual(policy.check(anon, { direction: 'connect', protocol: 'tcp', host: '127.0.0.1', address: '127.0.0.1', port: 5432 }), { rule: 'smc-db', smc: true });
  t.deepEqual(policy.check(anon, { direction: 'connect', protocol: 'tcp', host: '10.1.2.3', address: '10.1.2.3', port: 5432 }), { rule: 'plain' });
});

test('the addon reports SMC availability with a reason', (t) => {
  if (smcSupport.available) {
    t.is(smcSupport.reason, '');
    t.pass('this kernel has SMC');
  } else {
    t.regex(smcSupport.reason, /no SMC \(AF_SMC\): load the smc module|socket\(AF_SMC\)/);
  }
});

test('UEID/PNET config on a host without SMC fails at start, naming why', async (t) => {
  if (smcSupport.available) return t.pass('this kernel has SMC: covered in the VM lab');
  const smc = new HostSmc(loadConfig({ sets: ['smc.ueids=[SOCKGATE-LAB]'] }).smc, silent);
  const err = await t.throwsAsync(() => smc.start());
  t.regex(err?.message ?? '', /smc\.ueids\/smc\.pnets: kernel SMC is unavailable: .*smc module/);
  t.false(smc.available);
  t.throws(() => smc.listenFd('127.0.0.1', 0, 16), { message: /kernel SMC is unavailable/ });
});

test('smc: prefer without kernel SMC opens plain TCP: bytes arrive, the kernel view is tcp', async (t) => {
  if (smcSupport.available) return t.pass('this kernel has SMC: covered in the VM lab');
  const config = loadConfig({ sets: [`rules=[${RULE}]`] });
  const smc = new HostSmc(config.smc, silent);
  await smc.start();
  const backend = new HostBackend(new Policy(config), 1 << 16, undefined, undefined, smc);
  const got = createHash('sha256');
  const server = createServer((s) => {
    s.on('data', (d) => got.update(d));
    s.on('end', () => s.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const target = await backend.resolve(new Policy(config).identify({}), `tcp://127.0.0.1:${port}`, 'connect');
  t.true(target.smc);
  const sock = await backend.connectTcp(target, 5000);
  t.deepEqual(backend.describeHostSocket(sock), { proto: 'tcp', smcMode: '', smcFallbackReason: 0, smcPeerDiagnosis: 0, detail: '' });
  const payload = randomBytes(256 << 10);
  sock.resume();
  await new Promise<void>((resolve) => sock.end(payload, () => sock.on('close', () => resolve())));
  t.is(got.digest('hex'), createHash('sha256').update(payload).digest('hex'));
});
