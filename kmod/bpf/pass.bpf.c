// SPDX-License-Identifier: GPL-2.0
/*
 * pass: a kproxy verdict that forwards every message.
 *
 * Useful to count messages (the msgs counter of the direction) with any
 * parser, and as the neutral verdict when replacing a verdict on a live
 * proxy.
 *
 *   kpctl attach 3 verdict pass
 */
#include "kproxy_bpf.h"

SEC("socket")
int pass(struct __sk_buff *skb)
{
	return KPROXY_PASS;
}

char _license[] SEC("license") = "GPL";
