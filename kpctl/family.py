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
                                            'tls-alert.\n'},
                                    {'name': 'listener-id',
                                     'type': 'u32',
                                     'doc': 'The listener that made this proxy (listener-new); '
                                            'absent for a\n'
                                            'proxy made by proxy-new.\n'}]},
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
                                            'destination is plain.\n'}]},
                    {'name': 'endpoint',
                     'doc': 'An address and port, as the sock set carries them.',
                     'attributes': [{'name': 'family',
                                     'type': 'u16',
                                     'doc': 'AF_INET or AF_INET6.'},
                                    {'name': 'addr',
                                     'type': 'binary',
                                     'display-hint': 'ipv6',
                                     'doc': 'The address, 4 bytes (IPv4) or 16 bytes (IPv6), '
                                            'network order.',
                                     'checks': {'min-len': 4, 'max-len': 16}},
                                    {'name': 'port',
                                     'type': 'u16',
                                     'doc': 'The port; in a source, 0 lets the kernel choose.'}]},
                    {'name': 'listener',
                     'attributes': [{'name': 'id',
                                     'type': 'u32',
                                     'doc': 'Listener identifier, unique in the system while the '
                                            'listener lives.',
                                     'checks': {'min': 1}},
                                    {'name': 'fd',
                                     'type': 'u32',
                                     'doc': "File descriptor (in the caller's table) of a "
                                            'listening TCP socket.\n'
                                            'The listener holds its own reference: the caller may '
                                            'close it.\n'},
                                    {'name': 'target',
                                     'type': 'nest',
                                     'nested-attributes': 'endpoint',
                                     'doc': 'Where every accepted connection is connected to (IPv4 '
                                            'or IPv6).'},
                                    {'name': 'source',
                                     'type': 'nest',
                                     'nested-attributes': 'endpoint',
                                     'doc': 'The address (and port, if not 0) the upstream sockets '
                                            'bind to before\n'
                                            'connecting; same family as the target. Absent: the '
                                            'kernel chooses.\n'},
                                    {'name': 'max-proxies',
                                     'type': 'u32',
                                     'doc': 'Proxies of this listener that may live at once, '
                                            'connects in flight\n'
                                            'included; an accepted connection beyond it is reset '
                                            'and counted in\n'
                                            'refused-limit. 0 or absent: no limit of its own (the '
                                            "module's\n"
                                            'max_proxies still applies).\n'},
                                    {'name': 'connect-timeout-ms',
                                     'type': 'u32',
                                     'doc': 'How long a connect to the target may take before the '
                                            'client is reset\n'
                                            'and failed-timeout counted (default 10000).\n',
                                     'checks': {'min': 1}},
                                    {'name': 'parser-fd',
                                     'type': 'u32',
                                     'doc': 'A parser program (socket_filter) attached to both '
                                            'directions of every proxy.'},
                                    {'name': 'verdict-fd',
                                     'type': 'u32',
                                     'doc': 'A verdict program attached to both directions of '
                                            'every proxy (needs parser-fd).'},
                                    {'name': 'listen',
                                     'type': 'nest',
                                     'nested-attributes': 'endpoint',
                                     'doc': "The listening socket's local address."},
                                    {'name': 'parser-id',
                                     'type': 'u32',
                                     'doc': 'Id of the parser program; absent when none.'},
                                    {'name': 'verdict-id',
                                     'type': 'u32',
                                     'doc': 'Id of the verdict program; absent when none.'},
                                    {'name': 'end-proxies',
                                     'type': 'flag',
                                     'doc': 'In listener-del: also end the proxies the listener '
                                            'made (reason\n'
                                            'user). Without it they go on.\n'},
                                    {'name': 'pad', 'type': 'pad'},
                                    {'name': 'create-time',
                                     'type': 'u64',
                                     'doc': 'Creation time, nanoseconds since the Unix epoch '
                                            '(CLOCK_REALTIME).'},
                                    {'name': 'accepted',
                                     'type': 'u64',
                                     'doc': 'Connections accepted on the listening socket.'},
                                    {'name': 'created',
                                     'type': 'u64',
                                     'doc': 'Proxies made (the connect to the target completed and '
                                            'both joined).'},
                                    {'name': 'failed-refused',
                                     'type': 'u64',
                                     'doc': 'Connects the target refused (RST); the client was '
                                            'reset.'},
                                    {'name': 'failed-unreachable',
                                     'type': 'u64',
                                     'doc': 'Connects that failed with a host or network '
                                            'unreachable; the client was reset.'},
                                    {'name': 'failed-timeout',
                                     'type': 'u64',
                                     'doc': 'Connects that did not complete within '
                                            'connect-timeout-ms; the client was reset.'},
                                    {'name': 'failed-other',
                                     'type': 'u64',
                                     'doc': 'Connections that failed otherwise (no memory, the '
                                            "module's limit of\n"
                                            'proxies, the listener being deleted, any other '
                                            'error); the client\n'
                                            'was reset.\n'},
                                    {'name': 'refused-limit',
                                     'type': 'u64',
                                     'doc': 'Connections reset at once because max-proxies was '
                                            'reached.'},
                                    {'name': 'active',
                                     'type': 'u32',
                                     'doc': 'Proxies of this listener alive now.'},
                                    {'name': 'pending',
                                     'type': 'u32',
                                     'doc': 'Connects to the target in flight now.'},
                                    {'name': 'notify',
                                     'type': 'flag',
                                     'doc': 'In listener-new: also unicast the proxy-new-ntf and '
                                            'proxy-del-ntf\n'
                                            'of every proxy this listener makes to the socket that '
                                            'sent\n'
                                            "listener-new (as proxy-new's notify does; that socket "
                                            'then gets\n'
                                            'them once, not also through the monitor group).\n'},
                                    {'name': 'ended',
                                     'type': 'u64',
                                     'doc': 'Proxies of this listener that have ended.'},
                                    {'name': 'ended-bytes-a-to-b',
                                     'type': 'u64',
                                     'doc': 'Bytes its ended proxies carried from the client to '
                                            'the target (their\n'
                                            'final counters, summed when each ends).\n'},
                                    {'name': 'ended-bytes-b-to-a',
                                     'type': 'u64',
                                     'doc': 'Bytes its ended proxies carried from the target to '
                                            'the client.'}]}],
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
                                                          'tls-alert',
                                                          'listener-id']}}},
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
                                                          'tls-alert',
                                                          'listener-id']}},
                          'dump': {'reply': {'attributes': ['id',
                                                            'state',
                                                            'create-time',
                                                            'sock-a',
                                                            'sock-b',
                                                            'a-to-b',
                                                            'b-to-a',
                                                            'reason',
                                                            'tls-alert',
                                                            'listener-id']}}},
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
                          'do': {'request': {'attributes': ['id', 'kind', 'direction']}}},
                         {'name': 'listener-new',
                          'doc': 'Accept connections on a listening TCP socket in the kernel: each '
                                 'one\n'
                                 'is connected to the target and joined to it as a proxy, with no\n'
                                 'userspace per connection.\n',
                          'attribute-set': 'listener',
                          'flags': ['uns-admin-perm'],
                          'do': {'request': {'attributes': ['fd',
                                                            'target',
                                                            'source',
                                                            'max-proxies',
                                                            'connect-timeout-ms',
                                                            'parser-fd',
                                                            'verdict-fd',
                                                            'notify']},
                                 'reply': {'attributes': ['id',
                                                          'listen',
                                                          'target',
                                                          'source',
                                                          'max-proxies',
                                                          'connect-timeout-ms',
                                                          'parser-id',
                                                          'verdict-id',
                                                          'create-time',
                                                          'accepted',
                                                          'created',
                                                          'failed-refused',
                                                          'failed-unreachable',
                                                          'failed-timeout',
                                                          'failed-other',
                                                          'refused-limit',
                                                          'active',
                                                          'pending',
                                                          'ended',
                                                          'ended-bytes-a-to-b',
                                                          'ended-bytes-b-to-a']}}},
                         {'name': 'listener-del',
                          'doc': 'Stop accepting: the listening socket is handed back, connects '
                                 'in\n'
                                 "flight end (their clients are reset); the listener's proxies go "
                                 'on\n'
                                 'unless end-proxies is set.\n',
                          'attribute-set': 'listener',
                          'flags': ['uns-admin-perm'],
                          'do': {'request': {'attributes': ['id', 'end-proxies']}}},
                         {'name': 'listener-get',
                          'doc': "Get one listener, or dump the listeners of the caller's network "
                                 'namespace.',
                          'attribute-set': 'listener',
                          'do': {'request': {'attributes': ['id']},
                                 'reply': {'attributes': ['id',
                                                          'listen',
                                                          'target',
                                                          'source',
                                                          'max-proxies',
                                                          'connect-timeout-ms',
                                                          'parser-id',
                                                          'verdict-id',
                                                          'create-time',
                                                          'accepted',
                                                          'created',
                                                          'failed-refused',
                                                          'failed-unreachable',
                                                          'failed-timeout',
                                                          'failed-other',
                                                          'refused-limit',
                                                          'active',
                                                          'pending',
                                                          'ended',
                                                          'ended-bytes-a-to-b',
                                                          'ended-bytes-b-to-a']}},
                          'dump': {'reply': {'attributes': ['id',
                                                            'listen',
                                                            'target',
                                                            'source',
                                                            'max-proxies',
                                                            'connect-timeout-ms',
                                                            'parser-id',
                                                            'verdict-id',
                                                            'create-time',
                                                            'accepted',
                                                            'created',
                                                            'failed-refused',
                                                            'failed-unreachable',
                                                            'failed-timeout',
                                                            'failed-other',
                                                            'refused-limit',
                                                            'active',
                                                            'pending',
                                                            'ended',
                                                            'ended-bytes-a-to-b',
                                                            'ended-bytes-b-to-a']}}},
                         {'name': 'listener-new-ntf',
                          'doc': 'A listener was created.',
                          'notify': 'listener-get',
                          'mcgrp': 'monitor'},
                         {'name': 'listener-del-ntf',
                          'doc': 'A listener was deleted; carries its final counters.',
                          'notify': 'listener-get',
                          'mcgrp': 'monitor'}]},
 'mcast-groups': {'list': [{'name': 'monitor'}]}}
