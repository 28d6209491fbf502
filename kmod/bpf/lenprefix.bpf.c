// SPDX-License-Identifier: GPL-2.0
/*
 * lenprefix: a kproxy parser for length-prefixed messages.
 *
 * Each message is a 4-byte big-endian length N followed by N bytes of
 * payload; the message (what the verdict sees and what is forwarded whole)
 * is the 4 + N bytes, header included. An empty payload (N = 0) is a
 * valid 4-byte message.
 *
 * Returns 0 until the 4 header bytes are there, then 4 + N. A length the
 * module could never hold (4 + N > 1 MiB) is a protocol error: -EMSGSIZE,
 * which ends the proxy with reason "error".
 *
 *   kpctl attach 3 parser lenprefix [--dir a-to-b|b-to-a|both]
 */
#include "kproxy_bpf.h"

#define HDR_LEN 4

SEC("socket")
int lenprefix(struct __sk_buff *skb)
{
	__u32 be, len;

	if (skb->len < HDR_LEN)
		return 0;
	if (bpf_skb_load_bytes(skb, 0, &be, sizeof(be)))
		return 0;	/* cannot happen: skb->len >= 4 */
	len = bpf_ntohl(be);
	if (len > KPROXY_MSG_MAX - HDR_LEN)
		return -KPROXY_EMSGSIZE;
	return HDR_LEN + len;
}

char _license[] SEC("license") = "GPL";
