# SPDX-License-Identifier: GPL-2.0
"""The generated kmod files: fresh, and saying what the spec says."""

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(REPO, 'schema', 'kproxy.yaml')
GEN = os.path.join(REPO, 'schema', 'gen.py')
OUTPUTS = ['kmod/uapi/kproxy.h', 'kmod/netlink-gen.h', 'kmod/netlink-gen.c', 'kpctl/family.py']
MARKER = 'generated from schema/kproxy.yaml by schema/gen.py \u2014 do not edit'


def _load(name, path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _load('kproxy_schema_gen', GEN)


@pytest.fixture(scope='module')
def spec():
    with open(SPEC) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope='module')
def files():
    out = {}
    for rel in OUTPUTS:
        with open(os.path.join(REPO, rel)) as f:
            out[rel] = f.read()
    return out


@pytest.fixture(scope='module')
def src(files):
    return files['kmod/netlink-gen.c']


def c_upper(s):
    return s.upper().replace('-', '_')


def attr_enum(set_name, attr_name):
    return c_upper(f'kproxy-a-{set_name}-{attr_name}')


def call_ops(spec):
    return [o for o in spec['operations']['list'] if 'do' in o or 'dump' in o]


def request_attrs(op):
    names = []
    for mode in ('do', 'dump'):
        for n in ((op.get(mode) or {}).get('request') or {}).get('attributes', []):
            if n not in names:
                names.append(n)
    return names


def parse_policies(src):
    """{policy name: (size expression, {attr enum: initializer})}."""
    pols = {}
    for m in re.finditer(r'static const struct nla_policy\s+(\w+)\[([^\]]+)\] = \{\n(.*?)\n\};',
                         src, re.S):
        entries = dict(re.findall(r'^\t\[(\w+)\] = (.*),$', m.group(3), re.M))
        pols[m.group(1)] = (m.group(2), entries)
    return pols


def parse_ops(src):
    """{cmd enum: {member: value}} of the genl_ops table."""
    table = re.search(r'static const struct genl_ops kproxy_nl_ops\[\] = \{\n(.*?)\n\};',
                      src, re.S)
    assert table, 'no genl_ops table'
    ops = {}
    for block in re.findall(r'\t\{\n(.*?)\n\t\},', table.group(1), re.S):
        members = dict(re.findall(r'^\t\t\.(\w+)\s*= (.*),$', block, re.M))
        ops[members['cmd']] = members
    return ops


def parse_enums(text):
    """Values of every enumerator in a C header (no expressions but N and X - 1)."""
    values = {}
    for body in re.findall(r'enum\s*\w*\s*\{(.*?)\};', text, re.S):
        val = -1
        for item in body.split(','):
            item = re.sub(r'/\*.*?\*/', '', item, flags=re.S).strip()
            if not item:
                continue
            if '=' in item:
                name, expr = (x.strip() for x in item.split('=', 1))
                m = re.fullmatch(r'\(?\s*(\w+)\s*-\s*1\s*\)?', expr)
                val = values[m.group(1)] - 1 if m else int(expr, 0)
            else:
                name = item
                val += 1
            values[name] = val
    return values


# -- freshness ---------------------------------------------------------------

def test_fresh_generation_equals_committed(files):
    fresh = gen.generate(SPEC, REPO)
    assert sorted(fresh) == sorted(OUTPUTS)
    for rel in OUTPUTS:
        assert fresh[rel] == files[rel], f'{rel} is stale: run python3 schema/gen.py'


def test_check_mode_flags_a_stale_file(tmp_path):
    run = [sys.executable, GEN, '--spec', SPEC, '--root', str(tmp_path)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    ok = subprocess.run(run + ['--check'], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    path = tmp_path / 'kmod' / 'netlink-gen.c'
    path.write_text(path.read_text().replace('GENL_UNS_ADMIN_PERM', 'GENL_ADMIN_PERM'))
    stale = subprocess.run(run + ['--check'], capture_output=True, text=True)
    assert stale.returncode == 1
    assert 'kmod/netlink-gen.c' in stale.stdout
    assert 'GENL_UNS_ADMIN_PERM' in stale.stdout        # the diff summary
    (tmp_path / 'kmod' / 'netlink-gen.h').unlink()
    missing = subprocess.run(run + ['--check'], capture_output=True, text=True)
    assert missing.returncode == 1 and 'kmod/netlink-gen.h: missing' in missing.stdout


def test_check_mode_on_the_repository():
    res = subprocess.run([sys.executable, GEN, '--check'], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize('rel', OUTPUTS)
def test_outputs_start_with_spdx_and_marker(files, rel):
    first, second = files[rel].splitlines()[:2]
    assert 'SPDX-License-Identifier: ' in first
    assert first.startswith({'.c': '// ', '.h': '/* ', '.py': '# '}[os.path.splitext(rel)[1]])
    assert MARKER in second


def test_python_table_is_the_parsed_spec(spec):
    """kpctl/family.py holds exactly what the YAML says: kpctl reads the
    same data at run time as the C tables were made from."""
    ns = {}
    with open(os.path.join(REPO, 'kpctl', 'family.py')) as f:
        exec(compile(f.read(), 'family.py', 'exec'), ns)
    assert ns['FAMILY'] == spec


# -- uapi --------------------------------------------------------------------

def test_uapi_is_plain_userspace_c(files):
    uapi = files['kmod/uapi/kproxy.h']
    assert '#ifndef _UAPI_LINUX_KPROXY_H' in uapi
    includes = re.findall(r'#include\s+(\S+)', uapi)
    assert set(includes) <= {'<linux/types.h>'}, includes
    assert '#define KPROXY_FAMILY_NAME\t"kproxy"' in uapi
    assert '#define KPROXY_MCGRP_MONITOR\t"monitor"' in uapi


def test_uapi_compiles_in_userspace(tmp_path):
    cc = shutil.which('cc') or shutil.which('gcc')
    if cc is None:
        pytest.skip('no C compiler')
    c = tmp_path / 't.c'
    c.write_text('#include "kproxy.h"\n#include "kproxy.h"\n'
                 'int main(void) { return KPROXY_CMD_MAX + KPROXY_A_PROXY_MAX; }\n')
    shutil.copy(os.path.join(REPO, 'kmod', 'uapi', 'kproxy.h'), tmp_path)
    res = subprocess.run([cc, '-std=c99', '-Wall', '-Wextra', '-Werror', '-pedantic',
                          '-fsyntax-only', str(c)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_contract_names(files):
    uapi = parse_enums(files['kmod/uapi/kproxy.h'])
    assert uapi['KPROXY_A_PROXY_ID'] == 1
    assert uapi['KPROXY_CMD_PROXY_NEW'] == 1
    assert [uapi[f'KPROXY_STATE_{s}'] for s in ('ACTIVE', 'HALF_CLOSED', 'CLOSING')] == [0, 1, 2]
    reasons = ['USER', 'CLOSED', 'RESET', 'ERROR', 'NETNS_EXIT', 'UNLOAD']
    assert [uapi[f'KPROXY_REASON_{r}'] for r in reasons] == list(range(6))
    for name in ('KPROXY_CMD_PROXY_DEL', 'KPROXY_CMD_PROXY_GET', 'KPROXY_CMD_PROXY_NEW_NTF',
                 'KPROXY_CMD_PROXY_DEL_NTF', 'KPROXY_CMD_MAX', 'KPROXY_A_PROXY_PAD',
                 'KPROXY_A_PROXY_MAX', 'KPROXY_A_SOCK_MAX', 'KPROXY_A_DIR_MAX'):
        assert name in uapi, name
    hdr = files['kmod/netlink-gen.h']
    assert re.search(r'enum \{\n\tKPROXY_NLGRP_MONITOR,\n\};', hdr)
    assert 'extern struct genl_family kproxy_nl_family;' in hdr
    for proto in ('int kproxy_nl_proxy_new_doit(struct sk_buff *skb, struct genl_info *info);',
                  'int kproxy_nl_proxy_del_doit(struct sk_buff *skb, struct genl_info *info);',
                  'int kproxy_nl_proxy_get_doit(struct sk_buff *skb, struct genl_info *info);',
                  'int kproxy_nl_proxy_get_dumpit(struct sk_buff *skb, '
                  'struct netlink_callback *cb);'):
        assert proto in hdr, proto


def test_numbers_match_kernel_nlspec(tmp_path_factory, files):
    """Attribute, command and enum numbers are the ones the kernel's YNL lib computes."""
    ts = _load('kproxy_test_schema', os.path.join(HERE, 'test_schema.py'))
    base = ts.linux_ynl(tmp_path_factory)
    fam = ts.load_nlspec(base).SpecFamily(SPEC, '')
    uapi = parse_enums(files['kmod/uapi/kproxy.h'])
    for aset in fam.attr_sets.values():
        for attr in aset.attrs.values():
            assert uapi[attr_enum(aset.name, attr.name)] == attr.value, (aset.name, attr.name)
        assert uapi[c_upper(f'kproxy-a-{aset.name}-max')] == max(aset.attrs_by_val)
    for msg in fam.msgs.values():
        assert uapi[c_upper(f'kproxy-cmd-{msg.name}')] == msg.value, msg.name
    assert uapi['KPROXY_CMD_MAX'] == max(m.value for m in fam.msgs.values())
    for name, enum in fam.consts.items():
        if getattr(enum, 'entries', None) is None:
            continue
        for entry in enum.entries.values():
            assert uapi[c_upper(f'kproxy-{name}-{entry.name}')] == entry.user_value(), entry.name


# -- kernel tables -----------------------------------------------------------

def test_no_api_missing_from_linux_6_1(files):
    for rel, text in files.items():
        for word in ('genl_split_ops', 'NLA_UINT', 'NLA_SINT', 'split_ops', 'GENL_CMD_CAP'):
            assert word not in text, f'{word} in {rel}'


def test_every_request_attribute_has_a_policy_entry(spec, src):
    pols = parse_policies(src)
    ops = parse_ops(src)
    sets = {s['name']: s for s in spec['attribute-sets']}
    for op in call_ops(spec):
        cmd = c_upper(f"kproxy-cmd-{op['name']}")
        names = request_attrs(op)
        if not names:
            assert 'policy' not in ops[cmd]
            continue
        pname = c_upper(f"kproxy-{op['name']}-nl-policy").lower()
        assert ops[cmd]['policy'] == pname
        size, entries = pols[pname]
        values = {a['name']: i for i, a in enumerate(sets[op['attribute-set']]['attributes'], 1)}
        largest = max(names, key=lambda n: values[n])
        assert size == attr_enum(op['attribute-set'], largest) + ' + 1', op['name']
        assert ops[cmd]['maxattr'] == attr_enum(op['attribute-set'], largest)
        wanted = {attr_enum(op['attribute-set'], n) for n in names
                  if next(a for a in sets[op['attribute-set']]['attributes']
                          if a['name'] == n)['type'] != 'pad'}
        # only request attributes are accepted
        assert set(entries) == wanted, op['name']


def test_nested_policies_cover_their_set(spec, src):
    pols = parse_policies(src)
    sets = {s['name']: s for s in spec['attribute-sets']}
    for name, (size, entries) in pols.items():
        m = re.fullmatch(r'kproxy_(\w+)_nl_policy', name)
        for init in entries.values():
            nm = re.fullmatch(r'NLA_POLICY_NESTED\((\w+)\)', init)
            if nm:
                assert nm.group(1) in pols, f'{name} refers to missing {nm.group(1)}'
        set_name = m.group(1).replace('_', '-')
        if set_name in sets:        # a nested set's own policy: every non-pad attribute
            aset = sets[set_name]
            assert size == c_upper(f'kproxy-a-{set_name}-max') + ' + 1'
            assert set(entries) == {attr_enum(set_name, a['name']) for a in aset['attributes']
                                    if a['type'] != 'pad'}


def test_checks_are_mapped(spec, src):
    pols = parse_policies(src)
    for pname, (_, entries) in pols.items():
        if 'KPROXY_A_PROXY_ID' in entries:
            assert entries['KPROXY_A_PROXY_ID'] == 'NLA_POLICY_MIN(NLA_U32, 1)'
    defs = {d['name']: d for d in spec.get('definitions', [])}
    sets = {s['name']: s for s in spec['attribute-sets']}
    for op in call_ops(spec):
        for n in request_attrs(op):
            attr = next(a for a in sets[op['attribute-set']]['attributes'] if a['name'] == n)
            if 'enum' not in attr or defs[attr['enum']]['type'] != 'enum':
                continue
            count = len(defs[attr['enum']]['entries'])
            pname = f"kproxy_{op['name'].replace('-', '_')}_nl_policy"
            want = f"NLA_POLICY_MAX(NLA_{attr['type'].upper()}, {count - 1})"
            assert pols[pname][1][attr_enum(op['attribute-set'], n)] == want, (op['name'], n)


def test_permissions(spec, src):
    ops = parse_ops(src)
    for op in call_ops(spec):
        cmd = c_upper(f"kproxy-cmd-{op['name']}")
        flags = ops[cmd].get('flags', '')
        if 'uns-admin-perm' in op.get('flags', []):
            assert 'GENL_UNS_ADMIN_PERM' in flags, op['name']
        else:
            assert 'PERM' not in flags, op['name']
    # the contract: mutations need CAP_NET_ADMIN over the netns, reads do not
    assert ops['KPROXY_CMD_PROXY_NEW']['flags'] == 'GENL_UNS_ADMIN_PERM'
    assert ops['KPROXY_CMD_PROXY_DEL']['flags'] == 'GENL_UNS_ADMIN_PERM'
    assert 'flags' not in ops['KPROXY_CMD_PROXY_GET']


def test_handlers_and_strict_validation(spec, src):
    ops = parse_ops(src)
    get = ops['KPROXY_CMD_PROXY_GET']
    assert get['doit'] == 'kproxy_nl_proxy_get_doit'
    assert get['dumpit'] == 'kproxy_nl_proxy_get_dumpit'
    for cmd, members in ops.items():
        assert members['validate'] == '0', cmd       # strict: no GENL_DONT_VALIDATE_*
    # one entry per do/dump op, none for notifications
    assert set(ops) == {c_upper(f"kproxy-cmd-{o['name']}") for o in call_ops(spec)}
    for o in spec['operations']['list']:
        if 'notify' in o or 'event' in o:
            assert c_upper(f"kproxy-cmd-{o['name']}") not in ops


def test_family_struct(src):
    fam = re.search(r'struct genl_family kproxy_nl_family __ro_after_init = \{\n(.*?)\n\};',
                    src, re.S)
    assert fam
    members = dict(re.findall(r'^\t\.(\w+)\s*= (.*),$', fam.group(1), re.M))
    assert members == {
        'name': 'KPROXY_FAMILY_NAME',
        'version': 'KPROXY_FAMILY_VERSION',
        'netnsok': 'true',
        'parallel_ops': 'true',
        'module': 'THIS_MODULE',
        'ops': 'kproxy_nl_ops',
        'n_ops': 'ARRAY_SIZE(kproxy_nl_ops)',
        'resv_start_op': 'KPROXY_CMD_PROXY_NEW',
        'mcgrps': 'kproxy_nl_mcgrps',
        'n_mcgrps': 'ARRAY_SIZE(kproxy_nl_mcgrps)',
    }
    assert '[KPROXY_NLGRP_MONITOR] = { .name = KPROXY_MCGRP_MONITOR, },' in src


# -- the generator on other specs ----------------------------------------------

def _variant(tmp_path, spec, edit):
    y = copy.deepcopy(spec)
    edit(y)
    path = tmp_path / 'kproxy.yaml'
    with open(SPEC) as f:
        first = f.readline()
    path.write_text(first + yaml.safe_dump(y, sort_keys=False))
    return path


def test_generator_refuses_types_missing_from_6_1(tmp_path, spec):
    def edit(y):
        y['attribute-sets'][0]['attributes'][0]['type'] = 'uint'
    with pytest.raises(gen.GenError, match='6.1'):
        gen.generate(str(_variant(tmp_path, spec, edit)), str(tmp_path))


def test_generator_refuses_split_policy(tmp_path, spec):
    def edit(y):
        y['kernel-policy'] = 'split'
    with pytest.raises(gen.GenError, match='per-op'):
        gen.generate(str(_variant(tmp_path, spec, edit)), str(tmp_path))


def test_generator_nested_request_and_checks(tmp_path, spec):
    def edit(y):
        sets = {s['name']: s for s in y['attribute-sets']}
        sets['sock']['attributes'][1]['checks'] = {'min-len': 4, 'max-len': 16}
        sets['proxy']['attributes'].append(
            {'name': 'big', 'type': 'u64', 'checks': {'min': 1, 'max': 'u32-max'}})
        new = next(o for o in y['operations']['list'] if o['name'] == 'proxy-new')
        new['do']['request']['attributes'] += ['sock-a', 'big']
    out = gen.generate(str(_variant(tmp_path, spec, edit)), str(tmp_path))['kmod/netlink-gen.c']
    pols = parse_policies(out)
    assert pols['kproxy_proxy_new_nl_policy'][0] == 'KPROXY_A_PROXY_BIG + 1'
    entries = pols['kproxy_proxy_new_nl_policy'][1]
    assert entries['KPROXY_A_PROXY_SOCK_A'] == 'NLA_POLICY_NESTED(kproxy_sock_nl_policy)'
    assert entries['KPROXY_A_PROXY_BIG'] == \
        'NLA_POLICY_FULL_RANGE(NLA_U64, &kproxy_a_proxy_big_range)'
    assert pols['kproxy_sock_nl_policy'][1]['KPROXY_A_SOCK_LOCAL_ADDR'] == \
        'NLA_POLICY_RANGE(NLA_BINARY, 4, 16)'
    # the nested policy is defined before it is used
    assert out.index('kproxy_sock_nl_policy[') < out.index('kproxy_proxy_new_nl_policy[')
    assert 'static struct netlink_range_validation kproxy_a_proxy_big_range' in out
