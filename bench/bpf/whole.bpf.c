// SPDX-License-Identifier: GPL-2.0
/*
 * whole: a kproxy parser that frames whatever is available as one message.
 *
 * For the benchmarks' "kproxy+bpf" row: an opaque byte stream (iperf3,
 * sockperf) has no framing, so a real parser such as lenprefix would
 * misread it. This one returns the whole available length (capped at the
 * module's 1 MiB message limit), which makes every byte pass through the
 * parser and the verdict (pass.o) at the least possible framing cost.
 */
#include "kproxy_bpf.h"

SEC("socket")
int whole(struct __sk_buff *skb)
{
	__u32 len = skb->len;

	return len > KPROXY_MSG_MAX ? KPROXY_MSG_MAX : len;
}

char _license[] SEC("license") = "GPL";
