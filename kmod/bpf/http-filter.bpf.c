// SPDX-License-Identifier: GPL-2.0
/*
 * http-filter: a kproxy verdict for requests framed by the http parser,
 * on the a-to-b (client to server) direction.
 *
 * It judges each message by what the parser recorded about it in the
 * http_state map (http.h), which it shares with the parser: kpctl loads
 * it with the parser's map (bpf_map__reuse_fd(); see kpctl/http.py).
 * Rules are in the one-entry array map http_rules, written by kpctl
 * (kpctl.http.apply()), and may change while it is attached. A denied
 * request is answered with KPROXY_VERDICT_REPLY(i) and the connection is
 * closed; i selects a canned response (kpctl.http.CANNED_REPLIES, given
 * as verdict-replies at attach):
 *
 *   0 400 Bad Request: the parser found the message malformed or a
 *     smuggling attempt, or a path rule met a non-canonical path
 *   1 403 Forbidden: denied Host, denied path prefix, or not an allowed one
 *   2 405 Method Not Allowed: a method not in allow-methods
 *   3 413 Content Too Large: a body over max-body-bytes
 *   4 414 URI Too Long: a request line over max-request-line
 *   5 431 Request Header Fields Too Large: max-header-bytes, max-headers
 *
 * Path prefixes are compared with the path's bytes as sent. A path that a
 * server could read otherwise (%-encoded unreserved bytes or '/', "//",
 * "." or ".." segments) is refused (400) while any path rule is set, so
 * "/%61dmin" cannot pass a deny of "/admin". Hosts are compared without
 * case and without a ":port"; an absolute-form target's authority is the
 * host (RFC 9112 3.2.2). Anything but a header block is passed, except a
 * body over the limit (chunked bodies are counted as they come).
 *
 *   kpctl attach 3 verdict http-filter --deny-path /admin
 */
#include "http.h"

HTTP_STATE_MAP;

#define RULE_LEN	64		/* a host or a path prefix */
#define RULES_MAX	8		/* hosts, and path prefixes */

enum {
	REPLY_400, REPLY_403, REPLY_405, REPLY_413, REPLY_414, REPLY_431,
};

struct http_rule {
	__u32 len;
	__u32 allow;			/* path rules: 1 allow, 0 deny */
	__u8 bytes[RULE_LEN];
};

struct http_rules {
	__u32 methods;			/* allowed: bit per enum http_method; 0 all */
	__u32 max_line;			/* 0: no limit, for all four */
	__u32 max_header_bytes;
	__u32 max_headers;
	__u64 max_body;
	__u32 n_hosts;
	__u32 n_paths;
	struct http_rule hosts[RULES_MAX];	/* denied */
	struct http_rule paths[RULES_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_rules);
} http_rules SEC(".maps");

/* Whether @len bytes of @buf equal @r's, case-insensitively for hosts. */
static __always_inline int rule_match(const __u8 *buf, __u32 len,
				      const struct http_rule *r, int host)
{
	__u32 n = r->len;
	int i;

	if (!n || n > RULE_LEN || n > len)
		return 0;
	/* A host matches as a whole, or followed by ":port". */
	if (host && n < len && (n >= RULE_LEN || buf[n & (RULE_LEN - 1)] != ':'))
		return 0;
	for (i = 0; i < RULE_LEN; i++) {
		__u8 a = buf[i], b = r->bytes[i];

		if (i >= n)
			break;
		if (host) {
			a |= (a >= 'A' && a <= 'Z') ? 0x20 : 0;
			b |= (b >= 'A' && b <= 'Z') ? 0x20 : 0;
		}
		if (a != b)
			return 0;
	}
	return 1;
}

/* Load up to RULE_LEN bytes at @off; how many, 0 if none. */
static __always_inline __u32 load_field(struct __sk_buff *skb, __u32 off,
					__u32 len, __u8 *buf)
{
	__u64 n = len > RULE_LEN ? RULE_LEN : len;

	if (!n || off > KPROXY_MSG_MAX)
		return 0;
	/*
	 * 1..RULE_LEN in a form the verifier tracks: 6.1's learns nothing
	 * from the n != 0 branch, and refuses a size that may be zero. The
	 * barrier keeps the compiler from folding it back to n.
	 */
	asm volatile("" : "+r"(n));
	n = ((n - 1) & (RULE_LEN - 1)) + 1;
	if (bpf_skb_load_bytes(skb, off, buf, n))
		return 0;
	return n;
}

static __always_inline int check_host(struct __sk_buff *skb,
				      const struct http_dir_state *ds,
				      const struct http_rules *rules)
{
	__u8 buf[RULE_LEN] = {};
	__u32 len;
	int i;

	if (!rules->n_hosts || ds->host_len > RULE_LEN + 6)
		return 0;
	len = load_field(skb, ds->host_off, ds->host_len, buf);
	if (!len)
		return 0;
	for (i = 0; i < RULES_MAX; i++) {
		if (i >= rules->n_hosts)
			break;
		if (rule_match(buf, ds->host_len < len ? ds->host_len : len,
			       &rules->hosts[i], 1))
			return 1;
	}
	return 0;
}

/* 0, or the reply for the path: 400 or 403. */
static __always_inline int check_path(struct __sk_buff *skb,
				      const struct http_dir_state *ds,
				      const struct http_rules *rules)
{
	__u8 buf[RULE_LEN] = {};
	int i, allows = 0, allowed = 0;
	__u32 len;

	if (!rules->n_paths)
		return 0;
	if (ds->path_flags & HTTP_PATH_NONCANONICAL)
		return KPROXY_VERDICT_REPLY(REPLY_400);
	len = load_field(skb, ds->path_off, ds->path_len, buf);
	for (i = 0; i < RULES_MAX; i++) {
		const struct http_rule *r = &rules->paths[i];

		if (i >= rules->n_paths)
			break;
		if (r->allow) {
			allows = 1;
			allowed |= rule_match(buf, len, r, 0);
		} else if (rule_match(buf, len, r, 0)) {
			return KPROXY_VERDICT_REPLY(REPLY_403);
		}
	}
	return allows && !allowed ? KPROXY_VERDICT_REPLY(REPLY_403) : 0;
}

SEC("socket")
int http_filter(struct __sk_buff *skb)
{
	__u32 id = skb->cb[KPROXY_CB_PROXY], key = 0;
	const struct http_dir_state *ds;
	const struct http_rules *rules;
	struct http_state *st;
	int ret;

	/*
	 * The parser framed this message from this proxy's state: without it
	 * (another parser, or state lost) nothing can be judged, so nothing
	 * passes.
	 */
	st = bpf_map_lookup_elem(&http_state, &id);
	if (!st || st->stamp != skb->cb[KPROXY_CB_STAMP])
		return KPROXY_VERDICT_REPLY(REPLY_400);
	ds = &st->dir[skb->cb[KPROXY_CB_DIR] & 1];
	if (ds->kind == HTTP_K_BAD)
		return KPROXY_VERDICT_REPLY(REPLY_400);
	rules = bpf_map_lookup_elem(&http_rules, &key);
	if (!rules)
		return KPROXY_PASS;
	if (rules->max_body && ds->body_expected > rules->max_body)
		return KPROXY_VERDICT_REPLY(REPLY_413);
	/* Request rules; a filter on b-to-a judges only the framing. */
	if (ds->kind != HTTP_K_HEADER ||
	    skb->cb[KPROXY_CB_DIR] != KPROXY_DIR_A_TO_B)
		return KPROXY_PASS;

	if (rules->max_line && ds->line_len > rules->max_line)
		return KPROXY_VERDICT_REPLY(REPLY_414);
	if ((rules->max_header_bytes && ds->hdr_len > rules->max_header_bytes) ||
	    (rules->max_headers && ds->hdr_count > rules->max_headers))
		return KPROXY_VERDICT_REPLY(REPLY_431);
	if (rules->methods && !(rules->methods & (1U << (ds->method & 31))))
		return KPROXY_VERDICT_REPLY(REPLY_405);
	if (check_host(skb, ds, rules))
		return KPROXY_VERDICT_REPLY(REPLY_403);
	ret = check_path(skb, ds, rules);
	return ret ? ret : KPROXY_PASS;
}

char _license[] SEC("license") = "GPL";
