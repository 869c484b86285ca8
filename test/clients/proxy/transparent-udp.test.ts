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
import { run } from './helpers.js';
import { netnsSkipReason, startLab, type NetnsLab } from './netns.js';

const skip = netnsSkipReason();
if (skip) console.log(`transparent-udp.test: skipped: ${skip}`);
const serial = skip ? test.skip : test.serial;

/** Datagrams per exchange (stop-and-wait, so order is kept) and bound on the client's run. */
const DATAGRAMS = 64;
const CLIENT_TIMEOUT_MS = 30_000;

let lab: NetnsLab;
const echo: Record<'4' | '6', { sock: UdpSocket; port: number; peers: Set<string> }> = {} as never;
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
    const s = await bindUdp(fam === '4' ? 'udp4' : 'udp6', fam === '4' ? lab.host4 : lab.host6, (sock, m, r) => {
      peers.add(r.address);
      sock.send(m, r.port, r.address);
    });
    echo[fam] = { ...s, peers };
  }
  const d = await bindUdp('udp4', lab.host4, () => denied.got++);
  denied = { ...d, got: 0 };
  await lab.destroy();
  // Now the lab with a policy naming the echo ports (the denied port is in no allow rule).
  lab = await startLab(2, [{ name: 'echo', action: 'allow', protocols: ['udp'], directions: ['connect'], destinations: ['10.213.0.0/16', 'fd53::/16'], ports: [String(echo['4'].port), String(echo['6'].port)] }]);
  lab.rules(['--to', `${lab.host4}/32,${lab.host6}/128`, '--udp-ports', `${echo['4'].port},${echo['6'].port},${denied.port}`, '--install']);
});

test.after.always(async () => {
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
