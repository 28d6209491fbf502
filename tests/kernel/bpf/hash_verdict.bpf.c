// SPDX-License-Identifier: GPL-2.0
/*
 * hash_verdict: a test-only kproxy verdict for lenprefix messages
 * (tests/kernel/test_hardening.py compiles it into its tmp_path; it is not
 * shipped).
 *
 * A message is a 4-byte big-endian length, then the payload. The first 4
 * payload bytes (message offset 4), taken as they are, are a __u32 key:
 * a key present in the hash map `deny` drops the message, any other key
 * (or a payload shorter than 4 bytes) forwards it.
 *
 * The map is BPF_F_NO_PREALLOC: every element the test deletes or replaces
 * is really freed, after an RCU grace period, while messages are judged.
 * A verdict that runs outside an RCU read-side section can then read an
 * element after it was freed (KASAN), and the lookup helper's lockdep
 * check complains ("suspicious RCU usage") on a debug kernel.
 */
#include "kproxy_bpf.h"

#define HDR_LEN 4

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} deny SEC(".maps");

SEC("socket")
int hash_verdict(struct __sk_buff *skb)
{
	__u32 key;

	if (bpf_skb_load_bytes(skb, HDR_LEN, &key, sizeof(key)))
		return KPROXY_PASS;	/* no key: nothing to deny */
	if (bpf_map_lookup_elem(&deny, &key))
		return KPROXY_DROP;
	return KPROXY_PASS;
}

char _license[] SEC("license") = "GPL";
