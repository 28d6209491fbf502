# SPDX-License-Identifier: GPL-2.0
"""schema/kproxy.yaml against the kernel's own YNL schema and Python library.

Both come, at test time, from Debian's linux-source-6.12 tarball (installed by
`make deps`); nothing of the kernel tree is copied into ours.  Extracting the
two members takes ~15 s, so it is done once per session (see linux_ynl()).
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(REPO, 'schema', 'kproxy.yaml')

TARBALL = os.environ.get('KPROXY_LINUX_SOURCE', '/usr/src/linux-source-6.12.tar.xz')
TOP = 'linux-source-6.12'
SCHEMA_MEMBER = f'{TOP}/Documentation/netlink/genetlink-legacy.yaml'
NLSPEC_MEMBER = f'{TOP}/tools/net/ynl/lib/nlspec.py'


def linux_ynl(tmp_path_factory):
    """Directory holding the two kernel files, extracted once per session.

    Shared by every test module of the session through the session's base
    temporary directory (so it works whatever pytest's import mode).
    """
    return extract(tmp_path_factory.getbasetemp() / 'linux-ynl', TARBALL)


def extract(base, tarball):
    done = base / '.done'
    if done.exists():
        return base
    if not os.path.exists(tarball):
        pytest.fail(f'{tarball} is missing: run `make deps` '
                    "(it installs Debian's linux-source-6.12)", pytrace=False)
    if shutil.which('tar') is None or shutil.which('xz') is None:
        pytest.fail('tar and xz are needed to read the kernel sources: run `make deps`',
                    pytrace=False)
    base.mkdir(parents=True, exist_ok=True)
    # --occurrence: stop reading the archive once both members are out
    res = subprocess.run(['tar', '-xJf', tarball, '-C', str(base), '--occurrence=1',
                          SCHEMA_MEMBER, NLSPEC_MEMBER],
                         capture_output=True, text=True)
    for m in (SCHEMA_MEMBER, NLSPEC_MEMBER):
        if not (base / m).exists():
            pytest.fail(f'could not extract {m} from {tarball}: {res.stderr.strip()}',
                        pytrace=False)
    done.touch()
    return base


def load_nlspec(base):
    """Import the kernel's tools/net/ynl/lib/nlspec.py from the extracted tree."""
    name = 'kernel_ynl_nlspec'
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, base / NLSPEC_MEMBER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='session')
def kernel_ynl(tmp_path_factory):
    return linux_ynl(tmp_path_factory)


@pytest.fixture(scope='session')
def legacy_schema(kernel_ynl):
    with open(kernel_ynl / SCHEMA_MEMBER) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope='session')
def spec_yaml():
    with open(SPEC) as f:
        return yaml.safe_load(f)


def test_spec_declares_genetlink_legacy_per_op(spec_yaml):
    assert spec_yaml['protocol'] == 'genetlink-legacy'
    assert spec_yaml['kernel-policy'] == 'per-op'
    assert spec_yaml['name'] == 'kproxy'


def test_spec_starts_with_spdx():
    with open(SPEC) as f:
        first = f.readline()
    assert first.startswith('# SPDX-License-Identifier: '), first


def test_spec_validates_against_kernel_schema(spec_yaml, legacy_schema):
    import jsonschema
    # the kernel's schemas say draft-07 (with a $schema URI jsonschema does
    # not recognise verbatim): use that draft explicitly
    assert 'draft-07' in legacy_schema.get('$schema', '')
    cls = jsonschema.Draft7Validator
    cls.check_schema(legacy_schema)
    errors = sorted(cls(legacy_schema).iter_errors(spec_yaml), key=lambda e: list(e.path))
    msgs = [f"{'/'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors]
    assert not msgs, 'spec does not match genetlink-legacy.yaml:\n' + '\n'.join(msgs)


def test_kernel_schema_rejects_a_broken_spec(spec_yaml, legacy_schema):
    """The validation above is real: an unknown attribute type is refused."""
    import copy
    import jsonschema
    bad = copy.deepcopy(spec_yaml)
    bad['attribute-sets'][0]['attributes'][0]['type'] = 'u33'
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(legacy_schema).validate(bad)


def test_missing_tarball_fails_and_says_make_deps(tmp_path):
    with pytest.raises(pytest.fail.Exception, match='make deps'):
        extract(tmp_path / 'x', str(tmp_path / 'no-linux-source.tar.xz'))


# nlspec validates with jsonschema.validate(), which warns about the $schema URI
@pytest.mark.filterwarnings('ignore:The metaschema specified by:DeprecationWarning')
def test_kernel_nlspec_loads_spec(kernel_ynl, spec_yaml):
    nlspec = load_nlspec(kernel_ynl)
    fam = nlspec.SpecFamily(SPEC, str(kernel_ynl / SCHEMA_MEMBER))
    assert fam.name == 'kproxy'
    assert fam.proto == 'genetlink-legacy'
    assert set(fam.attr_sets) == {s['name'] for s in spec_yaml['attribute-sets']}
    calls = [o['name'] for o in spec_yaml['operations']['list'] if 'do' in o or 'dump' in o]
    ntfs = [o['name'] for o in spec_yaml['operations']['list'] if 'notify' in o or 'event' in o]
    assert list(fam.ops) == calls
    assert list(fam.ntfs) == ntfs
    assert set(fam.mcast_groups) == {'monitor'}
    # notifications resolve to the attribute set of the op they mirror
    for name in ntfs:
        assert fam.ntfs[name].attr_set is not None


def test_ops_reference_known_attributes(kernel_ynl):
    """Every request/reply attribute named by an op exists in its set."""
    nlspec = load_nlspec(kernel_ynl)
    fam = nlspec.SpecFamily(SPEC, '')
    for op in fam.ops.values():
        for mode in ('do', 'dump'):
            for direction in ('request', 'reply'):
                msg = (op.yaml.get(mode) or {}).get(direction) or {}
                for attr in msg.get('attributes', []):
                    assert attr in op.attr_set, f'{op.name} {mode} {direction}: {attr}'


def test_nested_attributes_name_known_sets(kernel_ynl):
    nlspec = load_nlspec(kernel_ynl)
    fam = nlspec.SpecFamily(SPEC, '')
    for aset in fam.attr_sets.values():
        for attr in aset.attrs.values():
            if attr.type == 'nest':
                assert attr.yaml['nested-attributes'] in fam.attr_sets, attr.name
            if 'enum' in attr.yaml:
                assert attr.yaml['enum'] in fam.consts, attr.name


def test_no_types_missing_from_linux_6_1(spec_yaml):
    """uint/sint need NLA_UINT/NLA_SINT, which Linux 6.1 does not have."""
    for aset in spec_yaml['attribute-sets']:
        for attr in aset['attributes']:
            assert attr['type'] not in ('uint', 'sint'), f"{aset['name']}.{attr['name']}"


def test_every_nest_set_has_a_pad_for_u64(spec_yaml):
    """A set with u64 attributes needs a pad attribute (nla_put_u64_64bit)."""
    for aset in spec_yaml['attribute-sets']:
        types = [a['type'] for a in aset['attributes']]
        if 'u64' in types or 's64' in types:
            assert 'pad' in types, aset['name']
