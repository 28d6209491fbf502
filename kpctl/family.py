# SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause)
# generated from schema/kproxy.yaml by schema/gen.py — do not edit
"""The kproxy family as schema/kproxy.yaml describes it (see kpctl/spec.py)."""

FAMILY = {'name': 'kproxy',
 'protocol': 'genetlink-legacy',
 'version': 1,
 'kernel-policy': 'per-op',
 'uapi-header': 'kproxy.h',
 'doc': 'Join two connected TCP sockets inside the kernel: the bytes that arrive on\n'
        'one are sent out on the other, both ways, without a trip through userspace.\n',
 'c-family-name': 'kproxy-family-name',
 'c-version-name': 'kproxy-family-version',
 'definitions': [{'name': 'state',
                  'type': 'enum',
                  'doc': 'Life cycle of a proxy.',
                  'entries': [{'name': 'active', 'doc': 'Forwarding in both directions.'},
                              {'name': 'half-closed',
                               'doc': 'One direction has forwarded its FIN; the other still '
                                      'flows.'},
                              {'name': 'closing',
                               'doc': 'The proxy is ending; its sockets are being handed back.'}]},
                 {'name': 'reason',
                  'type': 'enum',
                  'doc': 'Why a proxy ended (carried by proxy-del-ntf).',
                  'entries': [{'name': 'user', 'doc': 'Deleted by a proxy-del request.'},
                              {'name': 'closed', 'doc': 'Both directions forwarded their FIN.'},
                              {'name': 'reset',
                               'doc': 'One socket was reset by its peer; the other was aborted.'},
                              {'name': 'error',
                               'doc': 'A socket error or a forwarding failure; the other socket '
                                      'was aborted.'},
                              {'name': 'netns-exit',
                               'doc': 'The network namespace that owned the proxy was deleted.'},
                              {'name': 'unload', 'doc': 'The kproxy module was unloaded.'},
                              {'name': 'tls-alert',
                               'doc': 'A kTLS side received a fatal TLS alert (tls-alert carries '
                                      'its\n'
                                      'description); the other socket was aborted.\n'},
                              {'name': 'tls-rekey',
                               'doc': 'A kTLS side received a TLS 1.3 KeyUpdate. The next keys '
                                      'derive from\n'
                                      'secrets only userspace holds, so the proxy ends rather than '
                                      'wait for\n'
                                      'records it cannot decrypt; the other socket was '
                                      'aborted.\n'}]},
                 {'name': 'bpf-kind',
                  'type': 'enum',
                  'doc': 'What a program attached to a direction does.',
                  'entries': [{'name': 'parser',
                               'doc': 'Cuts the stream into messages: returns the length of the '
                                      'message\n'
                                      'starting at offset 0, 0 when it needs more bytes, a '
                                      'negative value\n'
                                      'on a protocol error (which ends the proxy with reason '
                                      'error).\n'},
                              {'name': 'verdict',
                               'doc': 'Judges each whole message (needs a parser): 0 drops it, '
                                      'anything\n'
                                      'else forwards it.\n'}]},
                 {'name': 'direction',
                  'type': 'enum',
                  'doc': 'The direction(s) a program applies to.',
                  'entries': [{'name': 'a-to-b'}, {'name': 'b-to-a'}, {'name': 'both'}]}],
 'attribute-sets': [{'name': 'proxy',
                     'attributes': [{'name': 'id',
                                     'type': 'u32',
                                     'doc': 'Proxy identifier, unique in the system while the '
                                            'proxy lives.',
                                     'checks': {'min': 1}},
                                    {'name': 'fd-a',
                                     'type': 'u32',
                                     'doc': "File descriptor (in the caller's table) of the first "
                                            'TCP socket.'},
                                    {'name': 'fd-b',
                                     'type': 'u32',
                                     'doc': "File descriptor (in the caller's table) of the second "
                                            'TCP socket.'},
                                    {'name': 'state', 'type': 'u32', 'enum': 'state'},
                                    {'name': 'create-time',
                                     'type': 'u64',
                                     'doc': 'Creation time, nanoseconds since the Unix epoch '
                                            '(CLOCK_REALTIME).'},
                                    {'name': 'sock-a',
                                     'type': 'nest',
                                     'nested-attributes': 'sock',
                                     'doc': 'The first socket.'},
                                    {'name': 'sock-b',
                                     'type': 'nest',
                                     'nested-attributes': 'sock',
                                     'doc': 'The second socket.'},
                                    {'name': 'a-to-b',
                                     'type': 'nest',
                                     'nested-attributes': 'dir',
                                     'doc': 'Counters of the direction read from A and sent on B.'},
                                    {'name': 'b-to-a',
                                     'type': 'nest',
                                     'nested-attributes': 'dir',
                                     'doc': 'Counters of the direction read from B and sent on A.'},
                                    {'name': 'reason',
                                     'type': 'u32',
                                     'enum': 'reason',
                                     'doc': 'Why the proxy ended; only in proxy-del-ntf.'},
                                    {'name': 'pad', 'type': 'pad'},
                                    {'name': 'prog-fd',
                                     'type': 'u32',
                                     'doc': 'File descriptor of a BPF_PROG_TYPE_SOCKET_FILTER '
                                            'program.'},
                                    {'name': 'kind', 'type': 'u32', 'enum': 'bpf-kind'},
                                    {'name': 'direction', 'type': 'u32', 'enum': 'direction'},
                                    {'name': 'notify',
                                     'type': 'flag',
                                     'doc': "Also unicast this proxy's proxy-del-ntf to the socket "
                                            'that sent\n'
                                            "proxy-new (in the proxy's network namespace, whether "
                                            'or not anyone\n'
                                            'listens on the monitor group; that socket then gets '
                                            'it once, not\n'
                                            'also through the group). A socket gone by then is '
                                            'skipped; one whose\n'
                                            'receive buffer is full loses it and reads ENOBUFS, as '
                                            'for a group.\n'},
                                    {'name': 'tls-alert',
                                     'type': 'u8',
                                     'doc': 'The description of the TLS alert that ended the proxy '
                                            '(RFC 8446\n'
                                            '6.2, e.g. 20 bad_record_mac); only in proxy-del-ntf '
                                            'with reason\n'
                                            'tls-alert.\n'}]},
                    {'name': 'sock',
                     'attributes': [{'name': 'family',
                                     'type': 'u16',
                                     'doc': 'AF_INET or AF_INET6.'},
                                    {'name': 'local-addr',
                                     'type': 'binary',
                                     'display-hint': 'ipv6',
                                     'doc': 'Local address, 4 bytes (IPv4) or 16 bytes (IPv6), '
                                            'network order.'},
                                    {'name': 'local-port', 'type': 'u16'},
                                    {'name': 'remote-addr',
                                     'type': 'binary',
                                     'display-hint': 'ipv6',
                                     'doc': 'Remote address, 4 bytes (IPv4) or 16 bytes (IPv6), '
                                            'network order.'},
                                    {'name': 'remote-port', 'type': 'u16'},
                                    {'name': 'tcp-state',
                                     'type': 'u8',
                                     'doc': "The socket's TCP state (as in /proc/net/tcp, "
                                            'TCP_ESTABLISHED is 1).'},
                                    {'name': 'tls-version',
                                     'type': 'u16',
                                     'doc': "The socket's kTLS protocol version (0x0303 TLS 1.2, "
                                            '0x0304 TLS 1.3);\n'
                                            'absent for a plain TCP socket.\n'},
                                    {'name': 'tls-cipher',
                                     'type': 'u16',
                                     'doc': "The socket's kTLS cipher (TLS_CIPHER_* of "
                                            'linux/tls.h, e.g. 51\n'
                                            'AES-GCM-128); absent for a plain TCP socket.\n'}]},
                    {'name': 'dir',
                     'attributes': [{'name': 'bytes',
                                     'type': 'u64',
                                     'doc': 'Bytes sent on the destination socket.'},
                                    {'name': 'skbs',
                                     'type': 'u64',
                                     'doc': 'Socket buffers read from the source socket.'},
                                    {'name': 'msgs',
                                     'type': 'u64',
                                     'doc': 'Messages forwarded (with a parser; equal to skbs '
                                            'without one).'},
                                    {'name': 'drops',
                                     'type': 'u64',
                                     'doc': 'Messages dropped by a verdict program.'},
                                    {'name': 'queued',
                                     'type': 'u32',
                                     'doc': 'Bytes read from the source and not yet sent on the '
                                            'destination.'},
                                    {'name': 'shut',
                                     'type': 'flag',
                                     'doc': "The source's FIN has been forwarded as a shutdown of "
                                            'the destination.'},
                                    {'name': 'pad', 'type': 'pad'},
                                    {'name': 'parser-id',
                                     'type': 'u32',
                                     'doc': 'Id of the attached parser program; absent when none.'},
                                    {'name': 'verdict-id',
                                     'type': 'u32',
                                     'doc': 'Id of the attached verdict program; absent when '
                                            'none.'},
                                    {'name': 'tls-records-in',
                                     'type': 'u64',
                                     'doc': 'TLS records the kTLS source has received under its '
                                            'current keys\n'
                                            '(its record sequence number: TLS 1.2 counts the '
                                            "handshake's\n"
                                            'Finished); absent when the source is plain.\n'},
                                    {'name': 'tls-records-out',
                                     'type': 'u64',
                                     'doc': 'TLS records the kTLS destination has sent under its '
                                            'current keys\n'
                                            '(its record sequence number); absent when the '
                                            'destination is plain.\n'}]}],
 'operations': {'list': [{'name': 'proxy-new',
                          'doc': 'Join two connected TCP sockets given by file descriptor.',
                          'attribute-set': 'proxy',
                          'flags': ['uns-admin-perm'],
                          'do': {'request': {'attributes': ['fd-a', 'fd-b', 'notify']},
                                 'reply': {'attributes': ['id',
                                                          'state',
                                                          'create-time',
                                                          'sock-a',
                                                          'sock-b',
                                                          'a-to-b',
                                                          'b-to-a',
                                                          'reason',
                                                          'tls-alert']}}},
                         {'name': 'proxy-del',
                          'doc': 'End a proxy and hand its sockets back.',
                          'attribute-set': 'proxy',
                          'flags': ['uns-admin-perm'],
                          'do': {'request': {'attributes': ['id']}}},
                         {'name': 'proxy-get',
                          'doc': "Get one proxy, or dump the proxies of the caller's network "
                                 'namespace.',
                          'attribute-set': 'proxy',
                          'do': {'request': {'attributes': ['id']},
                                 'reply': {'attributes': ['id',
                                                          'state',
                                                          'create-time',
                                                          'sock-a',
                                                          'sock-b',
                                                          'a-to-b',
                                                          'b-to-a',
                                                          'reason',
                                                          'tls-alert']}},
                          'dump': {'reply': {'attributes': ['id',
                                                            'state',
                                                            'create-time',
                                                            'sock-a',
                                                            'sock-b',
                                                            'a-to-b',
                                                            'b-to-a',
                                                            'reason',
                                                            'tls-alert']}}},
                         {'name': 'proxy-new-ntf',
                          'doc': 'A proxy was created.',
                          'notify': 'proxy-get',
                          'mcgrp': 'monitor'},
                         {'name': 'proxy-del-ntf',
                          'doc': 'A proxy ended; carries the reason and the final counters.',
                          'notify': 'proxy-get',
                          'mcgrp': 'monitor'},
                         {'name': 'bpf-attach',
                          'doc': 'Attach (or replace) a parser or verdict program on one direction '
                                 'or\n'
                                 'both, while traffic flows.\n',
                          'attribute-set': 'proxy',
                          'flags': ['uns-admin-perm'],
                          'do': {'request': {'attributes': ['id',
                                                            'prog-fd',
                                                            'kind',
                                                            'direction']}}},
                         {'name': 'bpf-detach',
                          'doc': 'Detach the parser or verdict program of one direction or both.',
                          'attribute-set': 'proxy',
                          'flags': ['uns-admin-perm'],
                          'do': {'request': {'attributes': ['id', 'kind', 'direction']}}}]},
 'mcast-groups': {'list': [{'name': 'monitor'}]}}
