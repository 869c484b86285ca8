/**
 * A hostile shm client, as a real process: it opens shm sockets through the
 * gateway with the SDK (one session), streams through them, then scribbles
 * random values into its session's shared header and slot cursors while the
 * data flows (bounded). Prints one JSON line: the socket ids and how each
 * socket ended on this side.
 * argv: gatewayTarget echoUri sockets
 */
// The test build of the addon: this file uses its test hooks (hostile modes, unsafePoke64).
import '../helpers/test-addon.js';
import { once } from 'node:events';
import { Gateway } from '../../clients/sdk/gateway.js';
import type { ShmClient } from '../../clients/sdk/attach-shm.js';

const SCRIBBLES = 4000;
const DEADLINE_MS = 30_000;

async function main(): Promise<void> {
  const [target, uri, countS] = process.argv.slice(2);
  const deadline = Date.now() + DEADLINE_MS;
  const gw = await Gateway.connect(target!, { transports: ['shm'] });
  const socks = await Promise.all(Array.from({ length: Number(countS) }, () => gw.connect(uri!)));
  const ended = socks.map((s) => {
    s.on('data', () => {});
    return new Promise<string>((resolve) => {
      s.once('error', (err: Error & { code?: string }) => resolve(err.code ?? err.message));
      s.once('close', () => resolve('closed'));
    });
  });
  // Keep data flowing on every socket.
  const chunk = Buffer.alloc(16 * 1024, 0xab);
  let writing = true;
  for (const s of socks) {
    void (async () => {
      while (writing && !s.destroyed && Date.now() < deadline) {
        if (!s.write(chunk)) await Promise.race([once(s, 'drain'), once(s, 'close')]).catch(() => {});
      }
    })();
  }
  await new Promise((r) => setTimeout(r, 100));
  const client = (gw as unknown as { shmClient: ShmClient }).shmClient;
  const session = [...client.sessions.values()][0]!;
  const region = session.region;
  const L = region.layout;
  const targets = [0, 8, 16, 24, 32, 40, 48];
  for (const s of session.channels.keys()) {
    const ctl = L.slotTableOffset + s * L.slotSize;
    targets.push(ctl, ctl + 8, ctl + 16, ctl + 64, ctl + 72, ctl + 256, ctl + 264, ctl + 320);
  }
  let x = 0x9e3779b97f4a7c15n;
  const rnd = () => {
    x ^= (x << 13n) & 0xffffffffffffffffn;
    x ^= x >> 7n;
    x ^= (x << 17n) & 0xffffffffffffffffn;
    return x;
  };
  for (let i = 0; i < SCRIBBLES && Date.now() < deadline; i++) {
    const off = targets[Number(rnd() % BigInt(targets.length))]!;
    try {
      region.raw.unsafePoke64!(off, rnd());
    } catch {
      break; // the session is gone (the region was closed under us)
    }
    if (i % 50 === 0) await new Promise((r) => setTimeout(r, 1));
  }
  writing = false;
  const results = await Promise.race([
    Promise.all(ended),
    new Promise<string[]>((r) => setTimeout(() => r(socks.map(() => 'still open')), Math.max(1, deadline - Date.now()))),
  ]);
  process.stdout.write(JSON.stringify({ socketIds: socks.map((s) => s.socketId), ended: results }) + '\n');
  gw.close();
  setTimeout(() => process.exit(0), 200).unref();
}

main().catch((err) => {
  process.stderr.write(`hostile child failed: ${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
