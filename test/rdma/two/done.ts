/**
 * VM b's last step in the two-VM lab (suite.ts runs it after ava, whatever
 * ava's outcome): tell VM a "done", so node-a.ts stops its gateways and exits.
 */
import { connect } from 'node:net';
import { A_ADDR, PORTS } from './lab.js';

await new Promise<void>((resolve) => {
  const c = connect(PORTS.control, A_ADDR, () => c.end('done\n'));
  c.setTimeout(10_000, () => c.destroy());
  c.on('error', (err) => {
    process.stderr.write(`done: could not reach ${A_ADDR}:${PORTS.control}: ${err.message}\n`);
    resolve();
  });
  c.on('close', () => resolve());
  c.resume();
});
