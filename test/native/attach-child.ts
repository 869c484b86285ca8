/**
 * Child process for the attach tests: attaches to the gateway's Unix socket,
 * maps the region it receives, and moves data over one slot (SHA-256 of both
 * directions printed as JSON). In `hostile` mode it also scribbles random
 * values into the shared header and cursors while data flows (bounded).
 * argv: socketPath token slot bytes seed mode
 */
// The test build of the addon: this file uses its test hooks (hostile modes, unsafePoke64).
import '../helpers/test-addon.js';
import { attachClient, Pump } from '../../native/index.js';
import { ClientDriver, prng, sha256, sleep } from './helpers.js';

async function main(): Promise<void> {
  const [path, token, slotS, bytesS, seedS, mode] = process.argv.slice(2);
  const slot = Number(slotS);
  const payload = prng(Number(seedS), Number(bytesS));
  const s = await attachClient(path!, Buffer.from(token!), 10_000);
  let driver: ClientDriver | undefined;
  const pump = new Pump((evs) => {
    for (const e of evs) if (e.type === 'hints' && e.slots.includes(slot)) driver?.kick();
  });
  pump.watch(s.region);
  driver = new ClientDriver(s.region, slot, payload);
  driver.kick();
  const deadline = Date.now() + 60_000;
  if (mode === 'hostile') {
    const L = s.region.layout;
    const ctl = L.slotTableOffset + slot * L.slotSize;
    const targets = [0, 8, 16, 24, 32, 40, 48, ctl, ctl + 8, ctl + 16, ctl + 64, ctl + 72, ctl + 256, ctl + 264, ctl + 320];
    let x = 0x9e3779b97f4a7c15n;
    const rnd = () => {
      x ^= (x << 13n) & 0xffffffffffffffffn;
      x ^= x >> 7n;
      x ^= (x << 17n) & 0xffffffffffffffffn;
      return x;
    };
    await sleep(50); // let some data flow first
    for (let i = 0; i < 2000 && Date.now() < deadline; i++) {
      const off = targets[Number(rnd() % BigInt(targets.length))]!;
      s.region.raw.unsafePoke64!(off, rnd());
      s.gatewayDoorbell.signal(); // make the gateway look now
      if (i % 20 === 0) await sleep(1);
    }
    process.stdout.write(JSON.stringify({ hostile: true, sent: driver.sent }) + '\n');
    pump.unwatch(s.region);
    await sleep(20);
    pump.close();
    process.exit(0);
  }
  while (!driver.done && Date.now() < deadline) await sleep(5);
  process.stdout.write(
    JSON.stringify({
      sentSha: sha256(payload),
      recvSha: driver.digest,
      received: driver.received,
      error: driver.error === undefined ? null : String(driver.error),
      peerPid: s.peerPid,
      peerUid: s.peerUid,
    }) + '\n',
  );
  pump.unwatch(s.region);
  await sleep(20);
  pump.close();
  s.close();
}

main().catch((err) => {
  process.stderr.write(`child failed: ${String(err)}\n`);
  process.exit(1);
});
