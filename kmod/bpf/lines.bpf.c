// SPDX-License-Identifier: GPL-2.0
/*
 * lines: a kproxy parser for newline-terminated lines (a text protocol).
 *
 * A message is one line, its '\n' included. A line may be at most
 * LINE_MAX (8 KiB) bytes long, newline included: when LINE_MAX bytes are
 * there and none is a '\n', the peer is not speaking the protocol and the
 * parser returns -EMSGSIZE, which ends the proxy with reason "error".
 * Without a '\n' in the bytes available so far, it returns 0 (more bytes
 * needed); the module runs it again from the line's first byte when more
 * arrive.
 *
 * Verifier notes (Linux 6.1 and later): the scan reads CHUNK bytes at a
 * time into the stack with bpf_skb_load_bytes() (socket filters have no
 * direct packet access) in a loop with a constant bound, and finds a '\n'
 * eight bytes at a time without branching (first_nl()), so the longest
 * path the verifier walks has about 1,100 branches (the limit on pending
 * branches is 8,192) and the program verifies in a few tens of thousands
 * of instructions (the limit is 1,000,000). A last
 * partial chunk is read as the final CHUNK bytes of the window,
 * overlapping bytes already known to hold no '\n', so every load has a
 * constant size.
 *
 *   kpctl attach 3 parser lines
 */
#include "kproxy_bpf.h"

#ifndef LINE_MAX
#define LINE_MAX	8192			/* -DLINE_MAX=N to change it */
#endif
#define CHUNK		256			/* bytes per load (stack) */
#define WORDS		(CHUNK / 8)
#define NL		'\n'

#define ONES		0x0101010101010101ULL
#define HIGHS		0x8080808080808080ULL
#define NLS		(ONES * NL)

/*
 * Index (0..7) of the first '\n' among the 8 bytes of @w as they lie in
 * memory, or 8 if there is none. Branch-free, so that the verifier walks
 * one path per word: the "has zero byte" trick flags the bytes of
 * x = w ^ "\n\n\n\n\n\n\n\n" that are zero; its lowest flag is exact (false
 * flags appear only above a true one). b = t & -t isolates it as
 * 0x80 << 8k, and multiplying 1 << 8k by 0x0001020304050607 brings byte
 * 7 - k of the constant, which is k, to the top.
 */
static __always_inline __u64 first_nl(__u64 w)
{
	__u64 x, t, b;

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	w = __builtin_bswap64(w);	/* first byte in memory at the bottom */
#endif
	x = w ^ NLS;
	t = (x - ONES) & ~x & HIGHS;
	if (!t)
		return 8;
	b = t & -t;
	return ((b >> 7) * 0x0001020304050607ULL) >> 56;
}

/* Offset of the first '\n' in buf[0..CHUNK), or CHUNK when there is none. */
static __always_inline __u32 scan_chunk(const __u64 *buf)
{
	__u64 k;
	int w;

#pragma unroll
	for (w = 0; w < WORDS; w++) {
		k = first_nl(buf[w]);
		if (k < 8)
			return w * 8 + k;
	}
	return CHUNK;
}

SEC("socket")
int lines(struct __sk_buff *skb)
{
	__u64 buf[WORDS];
	__u32 avail = skb->len;
	__u32 k, start, pos;
	int i;

	if (avail > LINE_MAX)
		avail = LINE_MAX;

	if (avail < CHUNK) {
		/* Short window: byte by byte. */
		for (i = 0; i < CHUNK; i++) {
			__u8 c;

			if (i >= avail)
				break;
			if (bpf_skb_load_bytes(skb, i, &c, 1))
				return 0;
			if (c == NL)
				return i + 1;
		}
		return 0;
	}

	for (k = 0; k < LINE_MAX / CHUNK; k++) {
		start = k * CHUNK;
		if (start >= avail)
			break;
		if (start + CHUNK > avail)
			start = avail - CHUNK;	/* overlap: no '\n' before */
		if (bpf_skb_load_bytes(skb, start, buf, CHUNK))
			return 0;
		pos = scan_chunk(buf);
		if (pos < CHUNK)
			return start + pos + 1;
	}
	/* No '\n' in the window: a whole LINE_MAX without one is an error. */
	if (avail >= LINE_MAX)
		return -KPROXY_EMSGSIZE;
	return 0;
}

char _license[] SEC("license") = "GPL";
