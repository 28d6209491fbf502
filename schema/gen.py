#!/usr/bin/env python3
# SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause)
"""Generate kproxy's uapi header and generic-netlink tables from the YNL spec.

    python3 schema/gen.py            write the generated files
    python3 schema/gen.py --check    exit 1 (with a diff summary) if any
                                     committed file differs from a fresh
                                     generation

Inputs: schema/kproxy.yaml (a genetlink-legacy YNL spec, kernel-policy
per-op).  Outputs, relative to the repository root:

    kmod/uapi/<uapi-header>   enums and defines, valid for userspace
    kmod/netlink-gen.h        handler prototypes, mcast group ids, family
    kmod/netlink-gen.c        per-op policies, ops table, mcast groups, family
    kpctl/family.py           the parsed spec as a Python literal: what kpctl
                              reads at run time (an installed kpctl has no
                              YAML file and needs no YAML parser)

The names follow the conventions of the kernel's tools/net/ynl/ynl-gen-c.py
(so that the C looks like any other YNL-generated family), but the C is
restricted to what both Linux 6.1 and 6.12 provide: `struct genl_ops` with
per-op `.policy`/`.maxattr` (6.1 has no `genl_split_ops`) and no
NLA_UINT/NLA_SINT (absent from 6.1).  Anything in a spec this generator does
not know how to express for both kernels is an error, never silently dropped.

Only PyYAML is needed.
"""

import argparse
import difflib
import os
import pprint
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPEC = os.path.join('schema', 'kproxy.yaml')

MARKER = 'generated from {spec} by schema/gen.py \u2014 do not edit'

SCALARS = {'u8', 'u16', 'u32', 'u64', 's8', 's16', 's32', 's64'}
KNOWN_CHECKS = {'min', 'max', 'min-len', 'max-len', 'exact-len', 'flags-mask',
                'unterminated-ok'}


class GenError(Exception):
    """The spec uses something this generator cannot express."""


def c_upper(name):
    return name.upper().replace('-', '_')


def c_lower(name):
    return name.lower().replace('-', '_')


def limit_to_number(name):
    """'u32-max', 's16-min', ... to its value (as ynl-gen-c does)."""
    if name[0] not in 'us' or not (name.endswith('-min') or name.endswith('-max')):
        raise GenError(f'unknown limit {name!r}')
    if name[0] == 'u' and name.endswith('-min'):
        return 0
    width = int(name[1:-4])
    if name[0] == 's':
        width -= 1
    value = (1 << width) - 1
    if name[0] == 's' and name.endswith('-min'):
        value = -value - 1
    return value


# --------------------------------------------------------------------------
# The model


class EnumDef:
    def __init__(self, family, y):
        self.family = family
        self.yaml = y
        self.name = y['name']
        self.type = y['type']              # enum or flags
        self.doc = y.get('doc', '')
        if 'enum-name' in y:
            self.c_type = f"enum {c_lower(y['enum-name'])}" if y['enum-name'] else None
        else:
            self.c_type = f"enum {c_lower(family.ident + '-' + self.name)}"
        self.prefix = y.get('name-prefix', f"{family.ident}-{self.name}-")
        self.render_max = y.get('render-max', False)
        self.entries = []                  # (c_name, value, doc, yaml)
        value = y.get('value-start', 0)
        for e in y['entries']:
            if isinstance(e, str):
                e = {'name': e}
            if 'value' in e:
                value = e['value']
            self.entries.append((c_upper(self.prefix + e['name']), value,
                                 e.get('doc', ''), e))
            value += 1

    def user_value(self, value):
        return 1 << value if self.type == 'flags' else value

    def mask(self):
        m = 0
        for _, v, _, _ in self.entries:
            m |= 1 << v
        return m

    def value_range(self):
        vals = [v for _, v, _, _ in self.entries]
        low, high = min(vals), max(vals)
        if high - low + 1 != len(vals):
            raise GenError(f"enum {self.name}: not contiguous, cannot derive a range check")
        return low, high


class Attr:
    def __init__(self, family, aset, y, value):
        self.family = family
        self.set = aset
        self.yaml = y
        self.name = y['name']
        self.type = y['type']
        self.value = value
        self.checks = dict(y.get('checks', {}))
        unknown = set(self.checks) - KNOWN_CHECKS
        if unknown:
            raise GenError(f'{aset.name}.{self.name}: unknown checks {sorted(unknown)}')
        prefix = y.get('name-prefix', aset.prefix)
        self.enum_name = c_upper(prefix + self.name)
        self.nested = y.get('nested-attributes')

    def __repr__(self):
        return f'<Attr {self.set.name}.{self.name}={self.value}>'


class AttrSet:
    def __init__(self, family, y):
        self.family = family
        self.yaml = y
        self.name = y['name']
        if 'subset-of' in y:
            raise GenError(f'attribute set {self.name}: subset-of is not supported')
        if 'name-prefix' in y:
            pfx = y['name-prefix']
        elif self.name == family.name:
            pfx = family.ident + '-a-'
        else:
            pfx = f'{family.ident}-a-{self.name}-'
        self.prefix = pfx
        self.max_name = c_upper(y.get('attr-max-name', pfx + 'max'))
        self.cnt_name = c_upper(y.get('attr-cnt-name', '__' + pfx + 'max'))
        if self.name == family.name:
            self.render_name = c_lower(family.ident)
        else:
            self.render_name = c_lower(f'{family.ident}-{self.name}')
        self.policy_name = self.render_name + '_nl_policy'
        self.attrs = {}
        value = 1
        for a in y['attributes']:
            if 'value' in a:
                value = a['value']
            attr = Attr(family, self, a, value)
            if attr.name in self.attrs:
                raise GenError(f'attribute set {self.name}: duplicate {attr.name}')
            self.attrs[attr.name] = attr
            value += 1

    def by_value(self):
        return sorted(self.attrs.values(), key=lambda a: a.value)


class Op:
    def __init__(self, family, y, value):
        self.family = family
        self.yaml = y
        self.name = y['name']
        self.value = value
        self.enum_name = c_upper(family.op_prefix + self.name)
        self.is_async = 'notify' in y or 'event' in y
        self.is_call = 'do' in y or 'dump' in y
        self.flags = y.get('flags', [])
        self.attr_set = y.get('attribute-set')
        self.render_name = c_lower(f'{family.ident}-{self.name}')
        self.policy_name = self.render_name + '_nl_policy'

    def request_attrs(self):
        """Request attributes of do and dump: one genl_ops, one policy."""
        names = []
        for mode in ('do', 'dump'):
            req = (self.yaml.get(mode) or {}).get('request') or {}
            for n in req.get('attributes', []):
                if n not in names:
                    names.append(n)
        aset = self.family.attr_sets[self.attr_set]
        for n in names:
            if n not in aset.attrs:
                raise GenError(f'op {self.name}: request attribute {n} not in set {aset.name}')
        return sorted((aset.attrs[n] for n in names), key=lambda a: a.value)

    def request_modes(self):
        return [m for m in ('do', 'dump')
                if m in self.yaml and (self.yaml[m] or {}).get('request', {}).get('attributes')]

    def handler(self, mode):
        return c_lower(f'{self.family.ident}-nl-{self.name}-{mode}it')


class Family:
    def __init__(self, spec_path):
        with open(spec_path) as f:
            first = f.readline().strip()
            prefix = '# SPDX-License-Identifier: '
            if not first.startswith(prefix):
                raise GenError('the spec must start with an SPDX line')
            self.license = first[len(prefix):]
            f.seek(0)
            y = yaml.safe_load(f)
        self.yaml = y
        self.name = y['name']
        self.ident = self.name.replace('-', '_')
        self.c_name = c_lower(self.ident)
        self.proto = y.get('protocol', 'genetlink')
        if self.proto not in ('genetlink', 'genetlink-c', 'genetlink-legacy'):
            raise GenError(f'protocol {self.proto} is not supported')
        self.kernel_policy = y.get('kernel-policy', 'split')
        if self.kernel_policy != 'per-op':
            raise GenError('only kernel-policy: per-op is supported '
                           '(6.1 has no genl_split_ops)')
        if 'kernel-family' in y:
            raise GenError('kernel-family is not supported')
        self.version = y.get('version', 1)
        self.fam_key = c_upper(y.get('c-family-name', self.name + '_FAMILY_NAME'))
        self.ver_key = c_upper(y.get('c-version-name', self.name + '_FAMILY_VERSION'))
        hdr = y.get('uapi-header', f'linux/{self.ident}.h')
        if hdr.startswith('linux/') and hdr.endswith('.h'):
            self.uapi_name = hdr[6:-2]
        else:
            self.uapi_name = self.ident
        self.uapi_file = os.path.basename(hdr)

        self.defs = []                    # in spec order: EnumDef or const dict
        self.enums = {}
        self.consts = {}
        for d in y.get('definitions', []):
            if d.get('header'):
                raise GenError(f"definition {d['name']}: header: is not supported")
            if d['type'] in ('enum', 'flags'):
                e = EnumDef(self, d)
                self.enums[e.name] = e
                self.defs.append(e)
            elif d['type'] == 'const':
                self.consts[d['name']] = d
                self.defs.append(d)
            else:
                raise GenError(f"definition {d['name']}: type {d['type']} is not supported")

        self.attr_sets = {}
        for s in y['attribute-sets']:
            aset = AttrSet(self, s)
            self.attr_sets[aset.name] = aset

        ops = y['operations']
        if ops.get('enum-model', 'unified') != 'unified':
            raise GenError('only enum-model: unified is supported')
        for k in ('async-prefix', 'fixed-header'):
            if k in ops:
                raise GenError(f'operations: {k} is not supported')
        self.op_prefix = ops.get('name-prefix', self.name + '-cmd-')
        self.ops_enum_name = ops.get('enum-name')
        self.cmd_max = c_upper(ops.get('cmd-max-name', self.op_prefix + 'max'))
        self.cmd_cnt = c_upper(ops.get('cmd-cnt-name', '__' + self.op_prefix + 'max'))
        self.ops = {}
        value = 1
        for o in ops['list']:
            if 'value' in o:
                value = o['value']
            op = Op(self, o, value)
            self.ops[op.name] = op
            value += 1
        self.mcgrps = (y.get('mcast-groups') or {}).get('list', [])
        self.max_by_define = y.get('max-by-define', False)
        self._validate()

    # -- checks the spec for what this generator and both kernels support
    def _validate(self):
        for aset in self.attr_sets.values():
            for a in aset.attrs.values():
                if a.type in ('uint', 'sint'):
                    raise GenError(f'{aset.name}.{a.name}: type {a.type} needs NLA_UINT/'
                                   'NLA_SINT, which Linux 6.1 lacks; use u32/u64')
                if a.type in ('indexed-array', 'sub-message', 'nest-type-value'):
                    raise GenError(f'{aset.name}.{a.name}: type {a.type} is not supported')
                if a.nested and a.nested not in self.attr_sets:
                    raise GenError(f'{aset.name}.{a.name}: unknown set {a.nested}')
                if 'enum' in a.yaml and a.yaml['enum'] not in self.enums:
                    raise GenError(f"{aset.name}.{a.name}: unknown enum {a.yaml['enum']}")
        for op in self.ops.values():
            if op.is_async:
                target = op.yaml.get('notify')
                if target is not None and target not in self.ops:
                    raise GenError(f'op {op.name}: notify of unknown op {target}')
                continue
            if not op.is_call:
                continue
            if op.attr_set not in self.attr_sets:
                raise GenError(f'op {op.name}: unknown attribute-set {op.attr_set}')
            if 'do' in op.yaml:
                for k in ('pre', 'post'):
                    if k in (op.yaml['do'] or {}):
                        raise GenError(f'op {op.name}: do {k}: needs genl_split_ops '
                                       '(absent from 6.1); not supported')
            for f in op.flags:
                if f not in ('admin-perm', 'uns-admin-perm'):
                    raise GenError(f'op {op.name}: unknown flag {f}')
            op.request_attrs()
        names = [g['name'] for g in self.mcgrps]
        for op in self.ops.values():
            if 'mcgrp' in op.yaml and op.yaml['mcgrp'] not in names:
                raise GenError(f"op {op.name}: unknown mcgrp {op.yaml['mcgrp']}")

    # -- derived
    def call_ops(self):
        return [op for op in self.ops.values() if op.is_call and not op.is_async]

    def policy_sets(self):
        """Attribute sets whose policy is needed, innermost first."""
        order, seen = [], set()
        cyclic = set()

        def visit(aset, stack):
            if aset.name in stack:
                cyclic.add(aset.name)
                return
            if aset.name in seen:
                return
            stack.append(aset.name)
            for a in aset.by_value():
                if a.type == 'nest':
                    visit(self.attr_sets[a.nested], stack)
            stack.pop()
            seen.add(aset.name)
            order.append(aset)

        for op in self.call_ops():
            for a in op.request_attrs():
                if a.type == 'nest':
                    visit(self.attr_sets[a.nested], [])
        return order, cyclic

    def limit_str(self, attr, value, suffix=''):
        if isinstance(value, int):
            return str(value) + suffix
        if value in self.consts:
            return c_upper(f'{self.ident}-{value}')
        return c_upper(value)

    def limit_num(self, value):
        if isinstance(value, int):
            return value
        if value in self.consts:
            return self.consts[value]['value']
        return limit_to_number(value)


# --------------------------------------------------------------------------
# Rendering helpers


def tabs_to(text, col):
    """Pad text with tabs up to column col (a multiple of 8)."""
    return text + '\t' * max(1, (col - len(text) + 7) // 8)


def defines(pairs):
    longest = max(len(n) for n, _ in pairs)
    col = ((longest + 8) // 8) * 8
    out = []
    for n, v in pairs:
        v = f'"{v}"' if isinstance(v, str) else str(v)
        out.append(tabs_to('#define ' + n, col + 8) + v)
    return out


def struct_init(members, indent='\t'):
    longest = max(len(k) for k, _ in members) + 1
    col = ((longest + 8) // 8) * 8
    return [indent + tabs_to('.' + k, col) + f'= {v},' for k, v in members]


def doc_lines(text, first_prefix=' * ', indent=True):
    words = text.split()
    out, line = [], ' *'
    for w in words:
        if len(line) + len(w) >= 79:
            out.append(line)
            line = ' *' + ('  ' if indent else '')
        line += ' ' + w
    out.append(line)
    return out


def banner(family, spec_rel, comment):
    marker = MARKER.format(spec=spec_rel)
    if comment == '//':
        return [f'// SPDX-License-Identifier: {family.license}', f'/* {marker} */']
    return [f'/* SPDX-License-Identifier: {family.license} */', f'/* {marker} */']


# --------------------------------------------------------------------------
# uapi header


def render_uapi(family, spec_rel):
    guard = f'_UAPI_LINUX_{c_upper(family.uapi_name)}_H'
    out = banner(family, spec_rel, '/*')
    out += ['', f'#ifndef {guard}', f'#define {guard}', '']
    out += defines([(family.fam_key, family.name), (family.ver_key, family.version)])
    out.append('')

    pending = []
    for d in family.defs:
        if isinstance(d, dict):            # const
            if d.get('scope', 'uapi') == 'uapi':
                pending.append((c_upper(d.get('c-define-name', f"{family.ident}-{d['name']}")),
                                d['value']))
            continue
        if pending:
            out += defines(pending) + ['']
            pending = []
        if d.yaml.get('scope', 'uapi') != 'uapi':
            continue
        if d.doc or any(doc for _, _, doc, _ in d.entries):
            out.append('/**')
            head = (d.c_type or 'enum') + (' - ' + d.doc if d.doc else '')
            out += doc_lines(head)
            for c_name, _, doc, _ in d.entries:
                if doc:
                    out += doc_lines(f'@{c_name}: {doc}')
            out.append(' */')
        out.append(f'{d.c_type or "enum"} {{')
        prev = None
        for c_name, value, _, _ in d.entries:
            change = (value != prev + 1) if prev is not None else (value != 0)
            if change or d.type == 'flags':
                out.append(f'\t{c_name} = {d.user_value(value)},')
            else:
                out.append(f'\t{c_name},')
            prev = value
        if d.render_max:
            out += ['', '\t/* private: */']
            if d.type == 'flags':
                out.append(f"\t{c_upper(d.prefix + 'mask')} = {d.mask()},")
            else:
                mx = c_upper(d.prefix + 'max')
                out += [f'\t__{mx},', f'\t{mx} = (__{mx} - 1)']
        out += ['};', '']
    if pending:
        out += defines(pending) + ['']

    for aset in family.attr_sets.values():
        name = aset.yaml.get('enum-name')
        out.append(f'enum {c_lower(name)} {{' if name else 'enum {')
        val = 0
        for a in aset.attrs.values():
            if a.value != val:
                out.append(f'\t{a.enum_name} = {a.value},')
            else:
                out.append(f'\t{a.enum_name},')
            val = a.value + 1
        out.append('')
        out += _max_lines(family, aset.cnt_name, aset.max_name)

    out.append(f'enum {c_lower(family.ops_enum_name)} {{' if family.ops_enum_name else 'enum {')
    val = 0
    for op in family.ops.values():
        if op.value != val:
            out.append(f'\t{op.enum_name} = {op.value},')
        else:
            out.append(f'\t{op.enum_name},')
        val = op.value + 1
    out.append('')
    out += _max_lines(family, family.cmd_cnt, family.cmd_max)

    if family.mcgrps:
        out += defines([(c_upper(g.get('c-define-name', f"{family.ident}-mcgrp-{g['name']}")),
                         g['name']) for g in family.mcgrps])
        out.append('')
    out.append(f'#endif /* {guard} */')
    return '\n'.join(out) + '\n'


def _max_lines(family, cnt, mx):
    if family.max_by_define:
        return [f'\t{cnt}', '};', f'#define {mx} ({cnt} - 1)', '']
    return [f'\t{cnt},', f'\t{mx} = ({cnt} - 1)', '};', '']


# --------------------------------------------------------------------------
# kernel header


def mcgrp_id(family, g):
    return c_upper(f"{family.ident}-nlgrp-{g['name']}")


def mcgrp_define(family, g):
    return c_upper(g.get('c-define-name', f"{family.ident}-mcgrp-{g['name']}"))


def dump_hooks(op):
    dump = op.yaml.get('dump') or {}
    return [(k, c_lower(dump[k])) for k, field in (('pre', 'start'), ('post', 'done'))
            if k in dump]


def render_hdr(family, spec_rel):
    guard = f'_{c_upper(family.ident)}_NETLINK_GEN_H'
    out = banner(family, spec_rel, '/*')
    out += ['', f'#ifndef {guard}', f'#define {guard}', '',
            '#include <net/netlink.h>', '#include <net/genetlink.h>', '',
            f'#include "uapi/{family.uapi_file}"', '']
    hooks = []
    for op in family.call_ops():
        for _, fn in dump_hooks(op):
            if fn not in hooks:
                hooks.append(fn)
    for fn in hooks:
        out.append(f'int {fn}(struct netlink_callback *cb);')
    if hooks:
        out.append('')
    for op in family.call_ops():
        if 'do' in op.yaml:
            out.append(f"int {op.handler('do')}(struct sk_buff *skb, struct genl_info *info);")
        if 'dump' in op.yaml:
            out.append(f"int {op.handler('dump')}(struct sk_buff *skb, "
                       'struct netlink_callback *cb);')
    out.append('')
    if family.mcgrps:
        out.append('enum {')
        for g in family.mcgrps:
            out.append(f'\t{mcgrp_id(family, g)},')
        out += ['};', '']
    out += ['/* Register in module init: the family is read-only after it. */',
            f'extern struct genl_family {family.c_name}_nl_family;', '',
            f'#endif /* {guard} */']
    return '\n'.join(out) + '\n'


# --------------------------------------------------------------------------
# kernel source


def flags_expr(flags):
    return ' | '.join(c_upper('genl-' + f) for f in flags)


class PolicyRenderer:
    def __init__(self, family):
        self.family = family
        self.ranges = {}                   # name: struct lines, of full-range checks

    def scalar(self, a):
        fam = self.family
        nla = c_upper('nla-' + a.type)
        checks = dict(a.checks)
        for k in ('min-len', 'max-len', 'exact-len', 'unterminated-ok'):
            if k in checks:
                raise GenError(f'{a.set.name}.{a.name}: check {k} does not apply to {a.type}')
        enum = fam.enums.get(a.yaml.get('enum')) if 'enum' in a.yaml else None
        is_bitfield = a.yaml.get('enum-as-flags', False) or (enum is not None and enum.type == 'flags')
        if is_bitfield or 'flags-mask' in checks:
            if a.type[0] == 's':
                raise GenError(f'{a.set.name}.{a.name}: a mask needs an unsigned type')
            if is_bitfield:
                mask = enum.mask()
            else:
                fl = fam.enums.get(checks['flags-mask'])
                if fl is None or fl.type != 'flags':
                    raise GenError(f"{a.set.name}.{a.name}: flags-mask {checks['flags-mask']} "
                                   'is not a flags definition')
                mask = fl.mask()
            return f'NLA_POLICY_MASK({nla}, 0x{mask:x})'
        if enum is not None:
            low, high = enum.value_range()
            if 'min' not in checks and (low != 0 or a.type[0] == 's'):
                checks['min'] = low
            if 'max' not in checks:
                checks['max'] = high
        lo = fam.limit_num(checks['min']) if 'min' in checks else None
        hi = fam.limit_num(checks['max']) if 'max' in checks else None
        if lo is not None and hi is not None and lo > hi:
            raise GenError(f'{a.set.name}.{a.name}: min {lo} > max {hi}')
        vals = [v for v in (lo, hi) if v is not None]
        if any(v < 0 for v in vals) and a.type[0] == 'u':
            raise GenError(f'{a.set.name}.{a.name}: negative limit on unsigned type')
        if not vals:
            return f'{{ .type = {nla}, }}'
        if min(vals) < -32768 or max(vals) > 32767:
            # .min/.max of struct nla_policy are s16: go through a range struct
            signed = a.type[0] == 's'
            suffix = 'LL' if signed else 'ULL'
            name = c_lower(a.enum_name) + '_range'
            kind = 'netlink_range_validation' + ('_signed' if signed else '')
            members = []
            if 'min' in checks:
                members.append(('min', fam.limit_str(a, checks['min'], suffix)))
            if 'max' in checks:
                members.append(('max', fam.limit_str(a, checks['max'], suffix)))
            # not const: 6.1's nla_policy.range is a pointer to non-const
            self.ranges[name] = ([f'static struct {kind} {name} = {{']
                                 + struct_init(members) + ['};', ''])
            macro = 'NLA_POLICY_FULL_RANGE' + ('_SIGNED' if signed else '')
            return f'{macro}({nla}, &{name})'
        if lo is not None and hi is not None:
            return (f"NLA_POLICY_RANGE({nla}, {fam.limit_str(a, checks['min'])}, "
                    f"{fam.limit_str(a, checks['max'])})")
        if lo is not None:
            return f"NLA_POLICY_MIN({nla}, {fam.limit_str(a, checks['min'])})"
        return f"NLA_POLICY_MAX({nla}, {fam.limit_str(a, checks['max'])})"

    def entry(self, a):
        """The policy initializer of one attribute, or None (pad, unused)."""
        fam = self.family
        c = a.checks
        if a.type in ('pad', 'unused'):
            return None
        if a.type in SCALARS:
            return self.scalar(a)
        bad = set(c) - {'min-len', 'max-len', 'exact-len', 'unterminated-ok'}
        if bad and a.type in ('string', 'binary'):
            raise GenError(f'{a.set.name}.{a.name}: checks {sorted(bad)} do not apply to {a.type}')
        if a.type == 'flag':
            if c:
                raise GenError(f'{a.set.name}.{a.name}: checks do not apply to flag')
            return '{ .type = NLA_FLAG, }'
        if a.type == 'string':
            if 'min-len' in c:
                raise GenError(f'{a.set.name}.{a.name}: min-len on a string is not supported')
            if 'exact-len' in c:
                return f"NLA_POLICY_EXACT_LEN({fam.limit_str(a, c['exact-len'])})"
            nla = 'NLA_STRING' if c.get('unterminated-ok') else 'NLA_NUL_STRING'
            if 'max-len' in c:
                return f"{{ .type = {nla}, .len = {fam.limit_str(a, c['max-len'])}, }}"
            return f'{{ .type = {nla}, }}'
        if a.type == 'binary':
            if 'unterminated-ok' in c:
                raise GenError(f'{a.set.name}.{a.name}: unterminated-ok applies to strings')
            if 'exact-len' in c:
                if 'min-len' in c or 'max-len' in c:
                    raise GenError(f'{a.set.name}.{a.name}: exact-len with min-len/max-len')
                return f"NLA_POLICY_EXACT_LEN({fam.limit_str(a, c['exact-len'])})"
            if 'min-len' in c and 'max-len' in c:
                return (f"NLA_POLICY_RANGE(NLA_BINARY, {fam.limit_str(a, c['min-len'])}, "
                        f"{fam.limit_str(a, c['max-len'])})")
            if 'min-len' in c:
                return f"NLA_POLICY_MIN_LEN({fam.limit_str(a, c['min-len'])})"
            if 'max-len' in c:
                return f"{{ .type = NLA_BINARY, .len = {fam.limit_str(a, c['max-len'])}, }}"
            return '{ .type = NLA_BINARY, }'
        if a.type == 'nest':
            if c:
                raise GenError(f'{a.set.name}.{a.name}: checks do not apply to nest')
            return f'NLA_POLICY_NESTED({fam.attr_sets[a.nested].policy_name})'
        if a.type == 'bitfield32':
            enum = fam.enums.get(a.yaml.get('enum'))
            if enum is None:
                raise GenError(f'{a.set.name}.{a.name}: bitfield32 needs an enum')
            return f'NLA_POLICY_BITFIELD32(0x{enum.mask():x})'
        raise GenError(f'{a.set.name}.{a.name}: type {a.type} is not supported')

    def table(self, name, max_name, attrs, comment, static_fwd=False):
        out = [comment] if comment else []
        head = f'static const struct nla_policy {name}[{max_name} + 1] = {{'
        if len(head) > 100:  # checkpatch's limit: break after the type
            head = f'static const struct nla_policy\n{name}[{max_name} + 1] = {{'
        out.append(head)
        for a in attrs:
            e = self.entry(a)
            if e is not None:
                out.append(f'\t[{a.enum_name}] = {e},')
        out += ['};', '']
        return out


def render_src(family, spec_rel):
    out = banner(family, spec_rel, '//')
    out += ['', '#include <net/netlink.h>', '#include <net/genetlink.h>', '',
            '#include "netlink-gen.h"', '']
    pr = PolicyRenderer(family)
    body = []

    sets, cyclic = family.policy_sets()
    fwd = [f'static const struct nla_policy {family.attr_sets[n].policy_name}'
           f'[{family.attr_sets[n].max_name} + 1];' for n in sorted(cyclic)]
    if fwd:
        body += fwd + ['']
    for aset in sets:
        body += pr.table(aset.policy_name, aset.max_name, aset.by_value(),
                         f'/* Nested: {aset.name} */' if aset.name != family.name else None)

    ops = family.call_ops()
    for op in ops:
        attrs = op.request_attrs()
        if not attrs:
            continue
        modes = ', '.join(op.request_modes())
        body += pr.table(op.policy_name, attrs[-1].enum_name, attrs,
                         f'/* {op.enum_name} - {modes} */')

    if pr.ranges:
        out.append('/* Integer value ranges */')
        for lines in pr.ranges.values():
            out += lines
    out += body

    out.append(f'/* Ops table for {family.ident} */')
    out.append(f'static const struct genl_ops {family.c_name}_nl_ops[] = {{')
    for op in ops:
        cond = op.yaml.get('config-cond')
        if cond:
            out.append(f'#ifdef {c_upper("config-" + cond)}')
        members = [('cmd', op.enum_name)]
        dv = op.yaml.get('dont-validate', [])
        members.append(('validate', ' | '.join(c_upper('genl-dont-validate-' + x)
                                               for x in dv) if dv else '0'))
        if 'do' in op.yaml:
            members.append(('doit', op.handler('do')))
        for k, fn in dump_hooks(op):
            if k == 'pre':
                members.append(('start', fn))
        if 'dump' in op.yaml:
            members.append(('dumpit', op.handler('dump')))
        for k, fn in dump_hooks(op):
            if k == 'post':
                members.append(('done', fn))
        attrs = op.request_attrs()
        if attrs:
            members.append(('policy', op.policy_name))
            members.append(('maxattr', attrs[-1].enum_name))
        if op.flags:
            members.append(('flags', flags_expr(op.flags)))
        out.append('\t{')
        out += struct_init(members, indent='\t\t')
        out.append('\t},')
        if cond:
            out.append('#endif')
    out += ['};', '']

    if family.mcgrps:
        out.append(f'static const struct genl_multicast_group {family.c_name}_nl_mcgrps[] = {{')
        for g in family.mcgrps:
            fl = f", .flags = {flags_expr(g['flags'])}" if g.get('flags') else ''
            out.append(f'\t[{mcgrp_id(family, g)}] = {{ .name = {mcgrp_define(family, g)}{fl}, }},')
        out += ['};', '']

    first = min(ops, key=lambda o: o.value)
    out.append(f'struct genl_family {family.c_name}_nl_family __ro_after_init = {{')
    members = [('name', family.fam_key),
               ('version', family.ver_key),
               ('netnsok', 'true'),
               ('parallel_ops', 'true'),
               ('module', 'THIS_MODULE'),
               ('ops', f'{family.c_name}_nl_ops'),
               ('n_ops', f'ARRAY_SIZE({family.c_name}_nl_ops)'),
               ('resv_start_op', first.enum_name)]
    if family.mcgrps:
        members += [('mcgrps', f'{family.c_name}_nl_mcgrps'),
                    ('n_mcgrps', f'ARRAY_SIZE({family.c_name}_nl_mcgrps)')]
    out += struct_init(members)
    out.append('};')
    return '\n'.join(out) + '\n'


# --------------------------------------------------------------------------
# Python table


def render_py(family, spec_rel):
    """The spec as kpctl.spec reads it: the YAML's own structure, so kpctl
    derives numbers by the same rules from the same data as from the file."""
    marker = MARKER.format(spec=spec_rel)
    return '\n'.join([
        f'# SPDX-License-Identifier: {family.license}',
        f'# {marker}',
        f'"""The {family.name} family as {spec_rel} describes it (see kpctl/spec.py)."""',
        '',
        f'FAMILY = {pprint.pformat(family.yaml, indent=1, width=100, sort_dicts=False)}',
        '',
    ])


# --------------------------------------------------------------------------
# Driver


def generate(spec=None, root=ROOT):
    """Return {relative output path: text} for the spec (default schema/kproxy.yaml)."""
    spec = spec or os.path.join(root, DEFAULT_SPEC)
    family = Family(spec)
    try:
        spec_rel = os.path.relpath(os.path.abspath(spec), root)
    except ValueError:
        spec_rel = os.path.basename(spec)
    if spec_rel.startswith('..'):
        spec_rel = os.path.basename(spec)
    return {
        os.path.join('kmod', 'uapi', family.uapi_file): render_uapi(family, spec_rel),
        os.path.join('kmod', 'netlink-gen.h'): render_hdr(family, spec_rel),
        os.path.join('kmod', 'netlink-gen.c'): render_src(family, spec_rel),
        os.path.join('kpctl', 'family.py'): render_py(family, spec_rel),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true',
                    help='exit 1 if a committed file differs from a fresh generation')
    ap.add_argument('--spec', help='the YNL spec (default: schema/kproxy.yaml)')
    ap.add_argument('--root', default=ROOT,
                    help='directory the outputs are relative to (default: the repository)')
    args = ap.parse_args(argv)
    spec = args.spec or os.path.join(ROOT, DEFAULT_SPEC)
    try:
        files = generate(spec, args.root)
    except GenError as e:
        print(f'gen.py: {spec}: {e}', file=sys.stderr)
        return 2

    if args.check:
        stale = 0
        for rel, text in files.items():
            path = os.path.join(args.root, rel)
            try:
                with open(path) as f:
                    old = f.read()
            except FileNotFoundError:
                print(f'{rel}: missing')
                stale += 1
                continue
            if old != text:
                stale += 1
                diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(),
                                                 f'a/{rel}', f'b/{rel}', lineterm=''))
                changed = sum(1 for d in diff if d[:1] in '+-' and d[:3] not in ('+++', '---'))
                print(f'{rel}: stale ({changed} lines differ)')
                for line in diff[:40]:
                    print('  ' + line)
                if len(diff) > 40:
                    print(f'  ... {len(diff) - 40} more diff lines')
        if stale:
            print(f'{stale} generated file(s) out of date: run python3 schema/gen.py')
            return 1
        return 0

    for rel, text in files.items():
        path = os.path.join(args.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except FileNotFoundError:
            pass
        with open(path, 'w') as f:
            f.write(text)
        print(f'wrote {rel}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
