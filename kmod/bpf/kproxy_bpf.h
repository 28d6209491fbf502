/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every kproxy BPF program shares: the includes, the return
 * conventions and the limits the module enforces.
 *
 * Programs are BPF_PROG_TYPE_SOCKET_FILTER (SEC("socket")). They read
 * the message with bpf_skb_load_bytes(): socket filters have no direct
 * packet access. The module hands them a view of the stream in which the
 * first byte of the message (for a parser: the first byte not yet framed)
 * is at offset 0, whatever the TCP segment boundaries were.
 *
 * A parser returns the length of the whole message starting at offset 0
 * (header included), 0 when it needs more bytes, or a negative errno on
 * a protocol error, which ends the proxy with reason "error".
 * A verdict sees exactly one whole message (skb->len is its length) and
 * returns 0 to drop it, anything else to forward it.
 */
#ifndef KPROXY_BPF_H
#define KPROXY_BPF_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The longest message the module accepts from a parser (1 MiB). */
#define KPROXY_MSG_MAX		(1024 * 1024)

/* Not in the uapi headers; the values of asm-generic/errno.h. */
#define KPROXY_EMSGSIZE		90
#define KPROXY_EBADMSG		74

#define KPROXY_PASS		1
#define KPROXY_DROP		0

#endif /* KPROXY_BPF_H */
