/**
 * CI-sized capacity: 2,000 sockets over shm held open through one gateway
 * process, from a client process (two SDK connections: two shm sessions) to
 * a destination process that accepts and holds; each proven by a 16-byte
 * echo. All held, then all closed: the gateway's descriptor count returns to
 * its baseline exactly. (`npm run bench -- --only capacity` holds 10,000.)
 */
import test from 'ava';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import { CAPACITY_FD_LIMIT, CAPACITY_GATEWAY_YAML, runCapacity } from '../bench/capacity-run.js';
import { startChildGateway } from '../bench/lib.js';

const SOCKETS = 2_000;

test('2,000 shm sockets held through one gateway, all closed: gateway fds back to the baseline exactly', async (t) => {
  t.timeout(180_000);
  if (!shmSupport.available) {
    t.log(`shm unavailable (${shmSupport.reason}): running the same check over tcp`);
  }
  const transport = shmSupport.available ? 'shm' : 'tcp';
  const g = await startChildGateway({ label: 'capacity', extraYaml: CAPACITY_GATEWAY_YAML, fdLimit: CAPACITY_FD_LIMIT });
  t.teardown(() => g.stop());
  const r = await runCapacity({ target: g.target, pid: g.pid, transport, count: SOCKETS, log: (s) => t.log(s) });
  t.log(
    `gateway: ${r.gatewayFdsBase} fds idle, ${r.gatewayFdsHeld} holding ${r.held} (${r.fdsPerSocket.toFixed(2)}/socket), ` +
      `RSS +${((r.gatewayRssHeld - r.gatewayRssBase) / 2 ** 20).toFixed(1)} MiB (${(r.rssPerSocketBytes / 1024).toFixed(1)} KiB/socket)`,
  );
  t.deepEqual(r.errors, {}, 'no socket failed to open');
  t.is(r.held, SOCKETS, 'every socket open and proven by its echo');
  t.is(r.destConnections, SOCKETS, 'the destination holds every connection');
  t.true(r.gatewayFdsHeld - r.gatewayFdsBase >= SOCKETS, 'the gateway holds a host socket per socket');
  t.is(r.gatewayFdsAfter, r.gatewayFdsBase, "all closed: the gateway's descriptors are back to the baseline");
});
