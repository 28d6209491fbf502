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
 * returns 0 to drop it, KPROXY_VERDICT_REPLY(i) to answer it with reply i
 * and close (below), anything else to forward it.
 *
 * Context: before every run the module sets skb->cb[0] to the proxy's id,
 * cb[1] to the direction (KPROXY_DIR_A_TO_B, KPROXY_DIR_B_TO_A), cb[2]
 * to flags (KPROXY_CB_TLS: this direction reads a kTLS side, the program
 * sees decrypted bytes; KPROXY_CB_VERDICT: a verdict judges this
 * direction's messages; KPROXY_CB_FRAMED: a parser of this proxy has
 * framed a message before this run) and cb[3] to the proxy's stamp (the
 * low 32 bits of its creation time, created_ns). cb[4] is 0, the
 * program's scratch; the module puts its own cb back afterwards. The two
 * directions of one proxy can so share state in a map keyed by the proxy
 * id. Ids are not reused while the module is loaded (barring wrap-around
 * at 2^31) but start again at a reload: an entry whose stamp is not the
 * proxy's belongs to an earlier proxy. And an entry missing once
 * KPROXY_CB_FRAMED is set was lost (an LRU map evicts): a program that
 * frames from such state must refuse, not start again mid-stream.
 *
 * Reply and close: a verdict returning KPROXY_VERDICT_REPLY(i), i below
 * KPROXY_REPLIES_MAX (16), does not forward the message, and the
 * direction reads nothing more from that sender; its destination gets a
 * FIN once what was forwarded before is sent. Reply i (given with the
 * verdict at attach time: verdict-replies, at most 1 KiB each) goes to the
 * message's sender after the rest of the other direction's stream (what
 * that destination still sends, e.g. responses to earlier pipelined
 * requests, until its FIN), then the sender gets a FIN and the proxy ends
 * with reason "denied". Without a reply i: the same, with no bytes.
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

#define KPROXY_ENOMEM		12

#define KPROXY_PASS		1
#define KPROXY_DROP		0

/* "Reply and close" with reply i (uapi: KPROXY_VERDICT_REPLY_FLAG). */
#define KPROXY_VERDICT_REPLY(i)	(0x80000000U | (i))
#define KPROXY_REPLIES_MAX	16

/* skb->cb[] as the module sets it before each run. */
#define KPROXY_CB_PROXY		0	/* the proxy id */
#define KPROXY_CB_DIR		1	/* KPROXY_DIR_* */
#define KPROXY_CB_FLAGS		2	/* KPROXY_CB_TLS | _VERDICT | _FRAMED */
#define KPROXY_CB_STAMP		3	/* the proxy's stamp */
#define KPROXY_DIR_A_TO_B	0
#define KPROXY_DIR_B_TO_A	1
#define KPROXY_CB_TLS		1
#define KPROXY_CB_VERDICT	2
#define KPROXY_CB_FRAMED	4

#endif /* KPROXY_BPF_H */
