/**
 * The guest side, ready to install (issue 17): the systemd unit runs
 * `sockgate proxy --gateway vsock:2:<port>` with the example config, and both
 * parse with the proxy's real flag and config handling.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadProxyConfig, resolveProxySettings } from '../../clients/proxy/config.js';
import { loadConfig } from '../../server/config.js';

function deployPath(rel: string): string {
  return fileURLToPath(new URL(`../../../deploy/${rel}`, import.meta.url));
}

test('the guest proxy unit reaches the host (CID 2) on the gateway\'s vsock control port, with a config the proxy accepts', (t) => {
  const unit = readFileSync(deployPath('sockgate-guest-proxy.service'), 'utf8');
  const exec = /^ExecStart=(\S+) proxy --gateway (vsock:2:([0-9]+)) --config (\S+)$/m.exec(unit);
  t.truthy(exec, 'ExecStart runs sockgate proxy --gateway vsock:2:PORT --config FILE');
  t.regex(unit, /^RestrictAddressFamilies=.*AF_VSOCK/m);
  t.regex(unit, /^DeviceAllow=\/dev\/vsock rw$/m);
  const settings = resolveProxySettings({ gateway: exec![2]! }, loadProxyConfig(deployPath('guest-proxy.example.yaml')));
  t.deepEqual(settings.gateway, { kind: 'vsock', cid: 2, port: Number(exec![3]) });
  t.is(settings.token, undefined, 'no token in the guest: the VM is the identity');
  // The port is the one the host's example config documents for vsock / vsock_uds.
  t.regex(readFileSync(deployPath('config.example.yaml'), 'utf8'), new RegExp(`^#\\s+control_port: ${exec![3]}$`, 'm'));
  t.notThrows(() => loadConfig({ file: deployPath('config.example.yaml') }));
});
