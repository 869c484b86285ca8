/**
 * Gateway A of the two-VM failover tests with the peer gateway as the far end
 * (failover.test.ts, run inside failover-child.ts): a gateway on VM b's
 * loopback whose `peers` rule sends the lab's subnet through the failover
 * gateway in VM a (`via`) over rdma only. Its peer connector is the SDK's
 * public Gateway.connect, as the CLI injects it (server/cli/index.ts), plus the
 * test-only `rdma.hostile` mode that injects the QP fatal on the A <-> B
 * connection (the test build of the addon: SOCKGATE_NATIVE_BUILD=test).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway as SdkGateway } from '../../../clients/sdk/index.js';
import { loadConfig, mergeConfig } from '../../../server/config.js';
import { Gateway } from '../../../server/gateway.js';
import type { PeerGatewayConnector } from '../../../server/peers.js';
import { A_ADDR, LAB_RULES } from './lab.js';

export interface MiddleGateway {
  /** A's control address (127.0.0.1:port). */
  readonly control: string;
  stop(): Promise<void>;
}

/** Starts gateway A routing `A_ADDR/32` through `via` over rdma; `hostile` (4|5) faults that rdma connection. */
export async function startMiddleGateway(via: string, hostile?: 4 | 5): Promise<MiddleGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-mid-'));
  const config = loadConfig({
    overrides: mergeConfig(
      {
        listen: { control: '127.0.0.1:0', data: '127.0.0.1:0', metrics: '127.0.0.1:0' },
        telemetry: { log_level: 'warn' },
        transports: { shm: { path: join(dir, 'shm.sock') }, rdma: { address: '' } },
      },
      { rules: LAB_RULES, peers: [{ match: { cidr: `${A_ADDR}/32` }, via, transports: ['rdma'] }] },
    ),
  });
  const connect: PeerGatewayConnector = (to, credentials, o) =>
    SdkGateway.connect(to, { ...credentials, ...(hostile ? { rdma: { hostile } } : {}) }, { deadlineMs: o.deadlineMs });
  const gateway = new Gateway(config, { peerGateways: connect });
  const addrs = await gateway.start();
  return { control: addrs.control, stop: () => gateway.destroy() };
}
