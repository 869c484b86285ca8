/**
 * Transparent mode, UDP (nftables tproxy), in a network namespace the test
 * builds (netns.ts): an unmodified UDP client in the namespace exchanges
 * datagrams with an echo server here, over IPv4 and IPv6; every byte comes
 * back (SHA-256 both ways), the server is reached by the gateway (not by the
 * namespace), and the replies come from the address the client sent to. A
 * port the gateway's policy denies gets nothing through.
 */
import test from 'ava';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { once } from 'node:events';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from './helpers.js';
import { netnsSkipReason, startLab, type NetnsLab } from './netns.js';

const skip = netnsSkipReason();
if (skip) console.log(`transparent-udp.test: skipped: ${skip}`);
const serial = skip ? test.skip : test.serial;

/** Datagrams per exchange (stop-and-wait, so order is kept) and bound on the client's run. */
const DATAGRAMS = 64;
const CLIENT_TIMEOUT_MS = 30_000;

let lab: NetnsLab;
const echo: Record<'4' | '6', { sock: UdpSocket; port: number; peers: Set<string>; ports: Set<number> }> = {} as never;
let denied: { sock: UdpSocket; port: number; got: number };

async function bindUdp(type: 'udp4' | 'udp6', host: string, onMessage: (s: UdpSocket, m: Buffer, r: { address: string; port: number }) => void): Promise<{ sock: UdpSocket; port: number }> {
  const sock = createSocket(type);
  sock.on('message', (m, r) => onMessage(sock, m, r));
  sock.bind(0, host);
  await once(sock, 'listening');
  return { sock, port: sock.address().port };
}

test.before(async () => {
  if (skip) return;
  // Start the lab first: the echo servers bind to its veth addresses.
  lab = await startLab(2, []);
  for (const fam of ['4', '6'] as const) {
    const peers = new Set<string>();
    const ports = new Set<number>();
    const s = await bindUdp(fam === '4' ? 'udp4' : 'udp6', fam === '4' ? lab.host4 : lab.host6, (sock, m, r) => {
      peers.add(r.address);
      ports.add(r.port);
      sock.send(m, r.port, r.address);
    });
    echo[fam] = { ...s, peers, ports };
  }
  const d = await bindUdp('udp4', lab.host4, () => denied.got++);
  denied = { ...d, got: 0 };
  await lab.destroy();
  // Now the lab with a policy naming the echo ports (the denied port is in no allow rule).
  lab = await startLab(2, [{ name: 'echo', action: 'allow', protocols: ['udp'], directions: ['connect'], destinations: ['10.213.0.0/16', 'fd53::/16'], ports: [String(echo['4'].port), String(echo['6'].port)] }]);
  lab.rules(['--to', `${lab.host4}/32,${lab.host6}/128`, '--udp-ports', `${echo['4'].port},${echo['6'].port},${denied.port}`, '--install']);
});

let limited: NetnsLab | undefined;

test.after.always(async () => {
  await limited?.destroy();
  await lab?.destroy();
  for (const e of Object.values(echo)) e.sock.close();
  denied?.sock.close();
});

/** An unmodified node UDP client in the namespace: stop-and-wait, prints what it sent and got. */
async function exchange(host: string, port: number, count: number): Promise<{ sent: string; got: string; from: string[]; lost: number }> {
  const script = `
    const dgram = require('dgram'), crypto = require('crypto');
    const s = dgram.createSocket('${host.includes(':') ? 'udp6' : 'udp4'}');
    const hs = crypto.createHash('sha256'), hr = crypto.createHash('sha256');
    const from = new Set(); let i = 0, lost = 0, timer;
    const next = () => {
      if (i++ === ${count}) { console.log(JSON.stringify({ sent: hs.digest('hex'), got: hr.digest('hex'), from: [...from], lost })); process.exit(0); }
      const d = crypto.randomBytes(1 + crypto.randomInt(1400)); hs.update(d);
      s.send(d, ${port}, '${host}');
      timer = setTimeout(() => { lost++; next(); }, 1000);
    };
    s.on('message', (m, r) => { clearTimeout(timer); hr.update(m); from.add(r.address + ':' + r.port); next(); });
    next();`;
  const argv = lab.exec(process.execPath, ['-e', script]);
  const r = await run(argv[0]!, argv.slice(1), { timeoutMs: CLIENT_TIMEOUT_MS });
  if (r.code !== 0) throw new Error(`udp client: ${r.code} ${r.stderr}\nproxy: ${lab.proxyLogs()}`);
  return JSON.parse(r.stdout.toString()) as { sent: string; got: string; from: string[]; lost: number };
}

for (const fam of ['4', '6'] as const) {
  serial(`tproxy UDP over IPv${fam}: every datagram echoed through the gateway, replies from the original destination`, async (t) => {
    const host = fam === '4' ? lab.host4 : lab.host6;
    const r = await exchange(host, echo[fam].port, DATAGRAMS);
    t.is(r.lost, 0, lab.proxyLogs());
    t.is(r.got, r.sent);
    t.deepEqual(r.from, [`${host}:${echo[fam].port}`]);
    // The gateway opened the flow from this side: the server never saw the namespace's address.
    t.deepEqual([...echo[fam].peers], [host]);
  });
}

serial('tproxy UDP to a port the gateway denies: nothing reaches the server, nothing comes back', async (t) => {
  const r = await exchange(lab.host4, denied.port, 3);
  t.is(r.lost, 3);
  t.deepEqual(r.from, []);
  t.is(denied.got, 0);
});

/**
 * Clients in `ns` (each its own socket) send stop-and-wait rounds to the echo
 * server, pausing `pauseMs` between rounds; prints how many echoes were right.
 */
async function rounds(l: NetnsLab, clients: number, count: number, pauseMs: number): Promise<{ ok: number; lost: number }> {
  const script = `
    const dgram = require('dgram'), crypto = require('crypto');
    const socks = Array.from({ length: ${clients} }, () => dgram.createSocket('udp4'));
    let ok = 0, lost = 0;
    const one = (s) => new Promise((res) => {
      const d = crypto.randomBytes(200);
      const t = setTimeout(() => { lost++; s.removeAllListeners('message'); res(); }, 1000);
      s.once('message', (m) => { clearTimeout(t); if (m.equals(d)) ok++; res(); });
      s.send(d, ${echo['4'].port}, '${l.host4}');
    });
    (async () => {
      for (let i = 0; i < ${count}; i++) for (const s of socks) { await one(s); await new Promise((r) => setTimeout(r, ${pauseMs})); }
      console.log(JSON.stringify({ ok, lost })); process.exit(0);
    })();`;
  const argv = l.exec(process.execPath, ['-e', script]);
  const r = await run(argv[0]!, argv.slice(1), { timeoutMs: CLIENT_TIMEOUT_MS });
  if (r.code !== 0) throw new Error(`udp client: ${r.code} ${r.stderr}`);
  return JSON.parse(r.stdout.toString()) as { ok: number; lost: number };
}

serial('UDP flows are bounded: one flow per client while under the limits; evicted past udp_max_flows; closed after udp_idle_timeout_ms', async (t) => {
  // Default limits (the first lab): two clients, four rounds each, are two flows: two gateway ports.
  echo['4'].ports.clear();
  t.deepEqual(await rounds(lab, 2, 4, 0), { ok: 8, lost: 0 });
  t.is(echo['4'].ports.size, 2);
  // A proxy allowing one flow, idle for at most 300 ms: each alternation evicts the other client's flow.
  await lab.destroy();
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-tpudp-'));
  const cfg = join(dir, 'proxy.yaml');
  writeFileSync(cfg, 'transparent:\n  listen: "[::]:1"\n  udp_max_flows: 1\n  udp_idle_timeout_ms: 300\n');
  limited = await startLab(2, [{ name: 'echo', action: 'allow', protocols: ['udp'], directions: ['connect'], destinations: ['10.213.0.0/16'] }], ['--config', cfg]);
  limited.rules(['--to', `${limited.host4}/32`, '--udp-ports', String(echo['4'].port), '--install']);
  echo['4'].ports.clear();
  t.deepEqual(await rounds(limited, 2, 3, 0), { ok: 6, lost: 0 });
  t.is(echo['4'].ports.size, 6, 'every datagram opened a new flow: the other client\'s was evicted');
  // One client, pausing past the idle limit: every round is a new flow.
  echo['4'].ports.clear();
  t.deepEqual(await rounds(limited, 1, 3, 800), { ok: 3, lost: 0 });
  t.is(echo['4'].ports.size, 3, 'each flow was closed while idle');
});
