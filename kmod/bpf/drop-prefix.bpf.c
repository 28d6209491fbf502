// SPDX-License-Identifier: GPL-2.0
/*
 * drop-prefix: a kproxy verdict that drops the messages whose payload
 * starts with a configured prefix, and forwards every other message.
 *
 * "Payload" starts `offset` bytes into the message: 4 by default, made for
 * the lenprefix parser (whose messages are a 4-byte length then the
 * payload); 0 compares from the message's first byte (e.g. with the lines
 * parser). A message shorter than offset + the prefix's length is
 * forwarded.
 *
 * The prefix (at most PREFIX_MAX = 64 bytes) and the offset live in a
 * one-entry BPF array map, `prefix_cfg`, rather than in the program's
 * constants: the loader (kpctl attach ... --prefix TEXT [--offset N])
 * writes it after loading and before attaching, every load gets its own
 * map (two proxies can drop different prefixes with the same object
 * file), and the rule can be changed while the program is attached,
 * without replacing it (e.g. bpftool map update, or pin the map). Values
 * in .rodata would be frozen at load, so a change would mean loading and
 * attaching a new program. An unconfigured map (len 0) drops nothing.
 *
 *   kpctl attach 3 verdict drop-prefix --prefix 'DROP'
 */
#include "kproxy_bpf.h"

#define PREFIX_MAX 64

struct prefix_cfg {
	__u32 offset;			/* where the payload starts */
	__u32 len;			/* prefix length, 0: drop nothing */
	__u8 prefix[PREFIX_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct prefix_cfg);
} prefix_cfg SEC(".maps");

SEC("socket")
int drop_prefix(struct __sk_buff *skb)
{
	__u8 buf[PREFIX_MAX] = {};
	struct prefix_cfg *cfg;
	__u32 key = 0, len, off;
	int i;

	cfg = bpf_map_lookup_elem(&prefix_cfg, &key);
	if (!cfg)
		return KPROXY_PASS;
	len = cfg->len;
	off = cfg->offset;
	if (len == 0 || len > PREFIX_MAX || off > KPROXY_MSG_MAX)
		return KPROXY_PASS;
	if (skb->len < off + len)
		return KPROXY_PASS;

	if (skb->len >= off + PREFIX_MAX) {
		/* The common case: one load. */
		if (bpf_skb_load_bytes(skb, off, buf, PREFIX_MAX))
			return KPROXY_PASS;
	} else {
		/* A short message: the prefix's bytes one by one. */
#pragma unroll
		for (i = 0; i < PREFIX_MAX; i++)
			if (i < len && bpf_skb_load_bytes(skb, off + i, &buf[i], 1))
				return KPROXY_PASS;
	}
#pragma unroll
	for (i = 0; i < PREFIX_MAX; i++)
		if (i < len && buf[i] != cfg->prefix[i])
			return KPROXY_PASS;
	return KPROXY_DROP;
}

char _license[] SEC("license") = "GPL";
