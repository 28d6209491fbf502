// SPDX-License-Identifier: GPL-2.0
/*
 * sockmap: the benchmarks' BPF sockmap proxy (bench/sockmap.py loads it).
 *
 * An sk_skb verdict program (attached to `socks` as BPF_SK_SKB_VERDICT,
 * no stream parser) that redirects every skb a proxied socket receives to
 * the egress of its peer. The loader puts the two sockets of a proxied
 * connection in `socks` at indices i and j, and records in `peer` each
 * socket's cookie (SO_COOKIE) -> the index of the other one. A socket
 * with no peer (not expected) keeps its data (SK_PASS).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MAX_SOCKS 65536

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, MAX_SOCKS);
	__type(key, __u32);
	__type(value, __u32);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SOCKS);
	__type(key, __u64);
	__type(value, __u32);
} peer SEC(".maps");

SEC("sk_skb/verdict")
int redirect(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 *idx = bpf_map_lookup_elem(&peer, &cookie);

	if (!idx)
		return SK_PASS;
	return bpf_sk_redirect_map(skb, &socks, *idx, 0);
}

char _license[] SEC("license") = "GPL";
