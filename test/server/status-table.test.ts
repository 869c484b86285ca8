/**
 * `sockgate status`'s table (server/cli formatStatusTable) from SocketInfo
 * records: the KERNEL and DATA columns say how the kernel carries the host
 * socket and the tcp-plane data connection, like smcss.
 */
import test from 'ava';
import { formatStatusTable } from '../../server/cli/index.js';
import { SocketKind, SocketState, type SocketInfo } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';

const base = {
  identity: 'anon',
  kind: SocketKind.SOCKET_KIND_STREAM,
  state: SocketState.SOCKET_STATE_OPEN,
  localUri: 'tcp://a:1',
  remoteUri: 'tcp://b:2',
  transport: TransportKind.TRANSPORT_KIND_TCP,
  fallbackReason: 0,
  fallbacks: [],
  fallbacksOmitted: 0,
  bytesIn: 0,
  bytesOut: 0,
  bufferedBytes: 0,
  createdAtMs: 0,
  moves: [],
};
/** The table of `rows`, read by socket id and column name. */
function cells(rows: readonly object[]): (id: string, name: string) => string | undefined {
  const lines = formatStatusTable(rows as unknown as SocketInfo[], 0).trimEnd().split('\n');
  const header = lines[0]!.trim().split(/\s+/);
  return (id, name) => lines.find((l) => l.startsWith(`${id} `))!.trim().split(/\s+/)[header.indexOf(name)];
}
const smc = (smcMode: string, smcFallbackReason = 0) => ({ proto: 'smc', smcMode, smcFallbackReason, smcPeerDiagnosis: 0, detail: '' });

test('DATA shows the data connection as the kernel carries it; - where the gateway does not know it', (t) => {
  const rows = [
    { ...base, socketId: 'viaSmcR', hostSocket: { ...smc(''), proto: 'tcp' }, dataConnection: smc('SMC-R') },
    { ...base, socketId: 'viaFallback', hostSocket: { ...smc(''), proto: 'tcp' }, dataConnection: smc('fallback', 0x03010000) },
    { ...base, socketId: 'noData', hostSocket: smc('SMC-R'), dataConnection: undefined },
  ];
  const col = cells(rows);
  t.is(col('viaSmcR', 'KERNEL'), 'tcp');
  t.is(col('viaSmcR', 'DATA'), 'smc:SMC-R');
  t.is(col('viaFallback', 'DATA'), 'smc:fallback:0x03010000');
  t.is(col('noData', 'KERNEL'), 'smc:SMC-R');
  t.is(col('noData', 'DATA'), '-');
});

test('HOP shows a peer-routed socket\'s hop between the gateways, now<-before after a live failover', (t) => {
  const hop = { via: 'b:7443', socketId: 'p1', fallbacks: [] };
  const rows = [
    { ...base, socketId: 'moved', peer: { ...hop, transport: TransportKind.TRANSPORT_KIND_TCP, moves: [{ from: TransportKind.TRANSPORT_KIND_RDMA, to: TransportKind.TRANSPORT_KIND_TCP, cause: 'ERR_SOCKGATE_RDMA_QP_FATAL', atMs: 1 }] } },
    { ...base, socketId: 'steady', peer: { ...hop, transport: TransportKind.TRANSPORT_KIND_RDMA, moves: [] } },
    { ...base, socketId: 'direct', peer: undefined },
  ];
  const col = cells(rows);
  t.is(col('moved', 'HOP'), 'tcp<-rdma');
  t.is(col('steady', 'HOP'), 'rdma');
  t.is(col('direct', 'HOP'), '-');
  t.is(col('moved', 'TRANSPORT'), 'tcp');
});
