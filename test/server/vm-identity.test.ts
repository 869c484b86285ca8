/**
 * The VM as the identity, at the policy (issue 17): a vsock CID or a VMM
 * socket path maps to an identity without a token; a token, if sent, must
 * agree; an unmapped VM is refused unless anonymous is explicitly enabled;
 * mappings the policy cannot make sense of are refused naming the key.
 */
import test from 'ava';
import { loadConfig } from '../../server/config.js';
import { Policy } from '../../server/policy.js';
import { InvalidArgumentError, UnauthenticatedError } from '../../proto/errors.js';

const TOKEN_A = 'token-of-vm-a-0123456789';
const TOKEN_H = 'token-of-host-0123456789';

function policy(extra: Record<string, unknown> = {}): Policy {
  return new Policy(
    loadConfig({
      overrides: {
        identities: [
          { name: 'vm-a', vsock_cids: [3], tokens: [TOKEN_A], max_sockets: 7 },
          { name: 'vm-b', vmm_paths: ['/run/fc/b.sock'] },
          { name: 'host-user', tokens: [TOKEN_H] },
        ],
        vsock_uds: { vms: [{ path: '/run/fc/c.sock', identity: 'vm-a' }], control_port: 7070, data_port: 7071 },
        ...extra,
      },
    }),
  );
}

test('a CID or a VMM socket path is an identity without a token', (t) => {
  const p = policy();
  const a = p.identify({ vm: { cid: 3 } });
  t.is(a.name, 'vm-a');
  t.is(a.source, 'vm');
  t.is(a.maxSockets, 7, 'the identity\'s own quota');
  t.false(a.admin);
  t.is(p.identify({ vm: { vmmPath: '/run/fc/b.sock' } }).name, 'vm-b');
  t.is(p.identify({ vm: { vmmPath: '/run/fc/x/../b.sock' } }).name, 'vm-b', 'paths are compared normalized');
  t.is(p.identify({ vm: { vmmPath: '/run/fc/c.sock' } }).name, 'vm-a', 'vsock_uds.vms[].identity maps too');
  t.is(p.vmIdentityName({ cid: 4 }), undefined);
});

test('a token sent by a VM must name the VM\'s identity; an unmapped VM is refused even with a valid token', (t) => {
  const p = policy();
  t.is(p.identify({ vm: { cid: 3 }, authorization: `Bearer ${TOKEN_A}` }).name, 'vm-a');
  t.throws(() => p.identify({ vm: { cid: 3 }, authorization: `Bearer ${TOKEN_H}` }), { instanceOf: UnauthenticatedError, message: /name identity "host-user", but the vsock CID 3 is identity "vm-a"/ });
  t.throws(() => p.identify({ vm: { vmmPath: '/run/fc/b.sock' }, authorization: `Bearer ${TOKEN_A}` }), { instanceOf: UnauthenticatedError });
  t.throws(() => p.identify({ vm: { cid: 9 }, authorization: `Bearer ${TOKEN_H}` }), { instanceOf: UnauthenticatedError, message: /vsock CID 9 maps to no identity/ });
  // Anonymous written out: an unmapped VM may then name itself with a token.
  t.is(policy({ anonymous: { enabled: true } }).identify({ vm: { cid: 9 }, authorization: `Bearer ${TOKEN_H}` }).name, 'host-user');
});

test('an unmapped VM is refused unless anonymous.enabled is written out as true; the embedded default never lets it in', (t) => {
  t.throws(() => policy().identify({ vm: { cid: 9 } }), { instanceOf: UnauthenticatedError, message: /vsock CID 9 maps to no identity/ });
  const open = policy({ anonymous: { enabled: true } }).identify({ vm: { cid: 9 } });
  t.is(open.name, 'anonymous');
  t.false(open.admin);
  // The embedded default: anonymous on for host callers (implicitly), not for VMs.
  const def = new Policy(loadConfig({ overrides: { vsock_uds: { path: '/run/fc/v.sock', control_port: 7070, data_port: 7071 } } }));
  t.is(def.identify({}).name, 'anonymous');
  t.throws(() => def.identify({ vm: { vmmPath: '/run/fc/v.sock' } }), { instanceOf: UnauthenticatedError });
});

test('VM mappings the policy cannot use are refused naming the key', (t) => {
  t.throws(() => policy({ vsock_uds: { vms: [{ path: '/run/fc/b.sock', identity: 'vm-a' }], control_port: 7070, data_port: 7071 } }), {
    instanceOf: InvalidArgumentError,
    message: /vsock_uds\.vms\[0\]\.identity: \/run\/fc\/b\.sock already maps to identity "vm-b"/,
  });
  t.throws(() => policy({ vsock_uds: { vms: [{ path: '/run/fc/z.sock', identity: 'nobody' }], control_port: 7070, data_port: 7071 } }), {
    message: /vsock_uds\.vms\[0\]\.identity: no identity is named "nobody"/,
  });
  t.throws(() => new Policy(loadConfig({ overrides: { identities: [{ name: 'x', vsock_cids: [3] }, { name: 'y', vsock_cids: [3] }] } })), {
    message: /identities\[1\]\.vsock_cids\[0\]: CID 3 already maps to identity "x"/,
  });
  t.throws(() => loadConfig({ overrides: { identities: [{ name: 'x', vmm_paths: ['rel.sock'] }] } }), { message: /identities\.0\.vmm_paths\.0: expected an absolute path/ });
  t.throws(() => loadConfig({ overrides: { vsock_uds: { control_port: 7070, data_port: 7071 } } }), { message: /vsock_uds: give path, vms or watch/ });
  t.throws(() => loadConfig({ overrides: { vsock: { control_port: 7070, data_port: 7072 }, vsock_uds: { path: '/v', control_port: 7070, data_port: 7071 } } }), {
    message: /vsock\.data_port: must equal vsock_uds\.data_port/,
  });
});
