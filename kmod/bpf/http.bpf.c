// SPDX-License-Identifier: GPL-2.0
/*
 * http: a kproxy parser for HTTP/1.1 (RFC 9112), requests on a-to-b and
 * responses on b-to-a (attach it to both directions).
 *
 * Messages it frames: a header block (start line to the empty line);
 * then the body as pieces of at most 64 KiB: by Content-Length, or
 * chunked (each chunk-size line, with the CRLF ending the chunk before
 * it, is a message; chunk data are body pieces; the trailer section is
 * the last message), or, for a response with neither, up to the close.
 * Responses to HEAD, 1xx, 204 and 304 have no body; 101 and a 2xx to
 * CONNECT make both directions a tunnel: plain pieces for the rest of the
 * proxy's life. What it framed last (kind, parsed facts, a finding) is in
 * the http_state map (http.h) for a verdict, http-filter, to read.
 *
 * Smuggling and malformed messages (both Content-Length and
 * Transfer-Encoding, several or malformed Content-Lengths, a
 * Transfer-Encoding not ending in one chunked, obs-fold, bare LF or CR,
 * NUL or other control bytes, whitespace before a field's colon, a bad
 * start line, HTTP/1.1 without a Host or with several, a bad chunk-size
 * line, a header block over the limit): the bytes it has are framed as
 * one message of kind HTTP_K_BAD, for the verdict to answer (400); with
 * no verdict on the direction the parser returns -EBADMSG instead, which
 * ends the proxy, so the peer never gets the message.
 *
 * The header block limit is 16 KiB, or what the one-entry array map
 * http_cfg says (256 B to 64 KiB).
 *
 * Verifier notes (6.1 and later): bytes are scanned by a bpf_loop()
 * callback, one byte per call, reading 8 bytes at a time with
 * bpf_skb_load_bytes() into a word the callback shifts from; no variable
 * stack offsets, no loops the verifier has to unroll. The scanners'
 * state is in per-CPU map values (http_scan, http_chunk), which the
 * verifier does not track value by value, so the callback verifies in a
 * few passes instead of once per combination of states.
 *
 *   kpctl attach 3 parser http --dir both
 */
#include "http.h"

HTTP_STATE_MAP;

struct http_cfg {
	__u32 hdr_limit;		/* 0: HTTP_HDR_LIMIT */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_cfg);
} http_cfg SEC(".maps");

#define CHUNK_LINE_MAX	4096

/* Scanner states. */
enum {
	S_TOK1,		/* method, or a response's version */
	S_TOK2,		/* target, or status code */
	S_TOK3,		/* version, or reason phrase */
	S_SL_LF,	/* LF ending the start line */
	S_LS,		/* a line's first byte */
	S_NAME,		/* field name */
	S_OWS,		/* whitespace before a value */
	S_VAL,		/* field value */
	S_LF,		/* LF ending a field line */
	S_END_LF,	/* LF ending the block */
};

/* Fields the parser reads. */
enum { H_OTHER, H_CL, H_TE, H_HOST };

/* Target forms being read. */
enum { T_START, T_ORIGIN, T_QUERY, T_ABS, T_AUTH, T_OTHER };

/* No word loaded: pos - NO_WORD >= 8 for any pos below KPROXY_MSG_MAX. */
#define NO_WORD		0x80000000U

/* Reads a message a byte at a time, 8 bytes per load. */
struct reader {
	__u64 word;		/* bytes [word_at, word_at + 8) */
	__u32 word_at;
	__u32 avail;
};

struct scan {
	struct reader r;
	__u64 tok1;		/* first 8 bytes of the start line */
	__u64 tok3;		/* first 8 bytes of a request's version */
	__u64 cl;
	__u32 end;		/* offset after the block, 0 until found */
	__u32 tok_at;		/* where the current start-line token began */
	__u32 tok1_len;
	__u32 line_len;
	__u32 name_at;
	__u32 val_at, val_end;
	__u32 hdr_count;
	__u32 status;
	__u32 path_off, path_len;
	__u32 host_off, host_len;
	__u32 auth_off, auth_len;
	__u32 seg_len, seg_dots;
	__u8 resp;
	__u8 st;
	__u8 bad;
	__u8 hid;
	__u8 name_ok;		/* bits: name still matches CL, TE, Host */
	__u8 prev, prev2;
	__u8 cl_seen, cl_digits, cl_ws;
	__u8 te_seen, te_len, te_match, te_ws, te_chunked, te_final;
	__u8 host_seen;
	__u8 tgt;
	__u8 pct, pct_val;
	__u8 path_flags;
};

/*
 * The scanners' state lives in a per-CPU map value, not on the stack:
 * the verifier tracks stack values exactly, and would walk the scanner's
 * states for every combination of them; map values it does not track.
 * The module runs programs with preemption off, so a CPU's value is one
 * program run's at a time.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan);
} http_scan SEC(".maps");

/* bpf_loop()'s context: where the scanner's state is. */
struct loop_ctx {
	void *state;
	struct __sk_buff *skb;	/* here: in a map value it would be a number */
};

static __always_inline int is_tchar(__u8 c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return 1;
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'':
	case '*': case '+': case '-': case '.': case '^': case '_':
	case '`': case '|': case '~':
		return 1;
	}
	return 0;
}

static __always_inline int hexval(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Byte k of an up to 24-byte lowercase name held in three words. */
static __always_inline __u8 name_at(__u64 w0, __u64 w1, __u64 w2, __u32 k)
{
	if (k < 8)
		return w0 >> (k * 8);
	if (k < 16)
		return w1 >> ((k - 8) * 8);
	return w2 >> ((k - 16) * 8);
}

/* "content-length", "transfer-encoding", "host", little-endian words. */
#define CL_W0	0x2d746e65746e6f63ULL	/* "content-" */
#define CL_W1	0x00006874676e656cULL	/* "length" */
#define TE_W0	0x726566736e617274ULL	/* "transfer" */
#define TE_W1	0x6e69646f636e652dULL	/* "-encodin" */
#define TE_W2	0x0000000000000067ULL	/* "g" */
#define HOST_W0	0x0000000074736f68ULL	/* "host" */
#define CHUNKED	0x0064656b6e756863ULL	/* "chunked" */
#define HTTP11	0x312e312f50545448ULL	/* "HTTP/1.1" */
#define HTTP10	0x302e312f50545448ULL	/* "HTTP/1.0" */

/* The byte at @pos, through the cached word. 0, or -1 if unreadable. */
static __always_inline int get_byte(struct __sk_buff *skb, struct reader *r,
				    __u32 pos, __u8 *c)
{
	__u32 k = pos - r->word_at;

	if (k >= 8) {
		if (pos + 8 <= r->avail) {
			if (bpf_skb_load_bytes(skb, pos, &r->word, 8))
				return -1;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
			r->word = __builtin_bswap64(r->word);
#endif
			r->word_at = pos;
			k = 0;
		} else {
			return bpf_skb_load_bytes(skb, pos, c, 1) ? -1 : 0;
		}
	}
	*c = r->word >> (k * 8);
	return 0;
}

static __always_inline int fail(struct scan *s, __u8 why)
{
	s->bad = why;
	return 1;
}

/* A byte of a field value of a field the parser reads. */
static __always_inline int value_byte(struct scan *s, __u8 c)
{
	int ws = c == ' ' || c == '\t';

	if (s->hid == H_CL) {
		if (ws) {
			s->cl_ws = 1;
			return 0;
		}
		if (c < '0' || c > '9' || s->cl_ws || s->cl_digits >= 18)
			return fail(s, HTTP_B_CL_BAD);
		s->cl = s->cl * 10 + (c - '0');
		s->cl_digits++;
	} else if (s->hid == H_TE) {
		if (c == ',') {
			s->te_chunked += s->te_match && s->te_len == 7;
			s->te_len = 0;
			s->te_match = 1;
			s->te_ws = 0;
		} else if (ws) {
			s->te_ws = s->te_len > 0;
		} else {
			if (s->te_ws)
				return fail(s, HTTP_B_TE_BAD);
			if (s->te_len >= 7 ||
			    (__u8)(c | 0x20) != (__u8)(CHUNKED >> (s->te_len * 8)))
				s->te_match = 0;
			if (s->te_len < 255)
				s->te_len++;
		}
	}
	return 0;
}

/* The end of a field value. */
static __always_inline int value_end(struct scan *s)
{
	if (s->hid == H_CL) {
		if (!s->cl_digits)
			return fail(s, HTTP_B_CL_BAD);
	} else if (s->hid == H_TE) {
		s->te_final = s->te_match && s->te_len == 7;
		s->te_chunked += s->te_final;
		if (!s->te_final || s->te_chunked > 1)
			return fail(s, HTTP_B_TE_BAD);
	} else if (s->hid == H_HOST) {
		s->host_off = s->val_at;
		s->host_len = s->val_end - s->val_at;
	}
	return 0;
}

/* The colon after a field name: which field it is. */
static __always_inline int name_end(struct scan *s, __u32 pos)
{
	__u32 len = pos - s->name_at;

	if (!len)
		return fail(s, HTTP_B_NAME);
	s->hid = H_OTHER;
	if ((s->name_ok & 1) && len == 14)
		s->hid = H_CL;
	else if ((s->name_ok & 2) && len == 17)
		s->hid = H_TE;
	else if ((s->name_ok & 4) && len == 4)
		s->hid = H_HOST;
	if (s->hid == H_CL) {
		if (s->cl_seen)
			return fail(s, HTTP_B_CL_DUP);
		s->cl_seen = 1;
	} else if (s->hid == H_TE) {
		if (s->te_seen)
			return fail(s, HTTP_B_TE_BAD);
		s->te_seen = 1;
		s->te_match = 1;
	} else if (s->hid == H_HOST) {
		if (s->host_seen)
			return fail(s, HTTP_B_HOST);
		s->host_seen = 1;
	}
	return 0;
}

/* A byte of a field name: narrow the fields it may still be. */
static __always_inline void name_byte(struct scan *s, __u32 pos, __u8 c)
{
	__u32 k = pos - s->name_at;
	__u8 l = c | 0x20;

	if (k >= 17) {
		s->name_ok = 0;
		return;
	}
	if (k >= 14 || l != name_at(CL_W0, CL_W1, 0, k))
		s->name_ok &= ~1;
	if (l != name_at(TE_W0, TE_W1, TE_W2, k))
		s->name_ok &= ~2;
	if (k >= 4 || l != name_at(HOST_W0, 0, 0, k))
		s->name_ok &= ~4;
}

/* The end of a path segment (at '/', '?' or the target's end). */
static __always_inline void segment_end(struct scan *s)
{
	if (s->seg_len && s->seg_len == s->seg_dots && s->seg_dots <= 2)
		s->path_flags |= HTTP_PATH_NONCANONICAL;
	s->seg_len = 0;
	s->seg_dots = 0;
}

/* A byte of a request target: find the path and an absolute-form's host. */
static __always_inline void target_byte(struct scan *s, __u32 pos, __u8 c)
{
	int v;

	switch (s->tgt) {
	case T_START:
		if (c == '/') {
			s->path_off = pos;
			s->tgt = T_ORIGIN;
		} else {
			s->tgt = c == '*' ? T_OTHER : T_ABS;
		}
		break;
	case T_ABS:
		/* scheme "://": the authority follows */
		if (c == '/' && s->prev == '/' && s->prev2 == ':') {
			s->auth_off = pos + 1;
			s->tgt = T_AUTH;
		}
		break;
	case T_AUTH:
		if (c == '/' || c == '?') {
			s->auth_len = pos - s->auth_off;
			s->path_off = pos;
			s->tgt = c == '/' ? T_ORIGIN : T_QUERY;
		}
		break;
	case T_ORIGIN:
		if (s->pct) {
			v = hexval(c);
			if (v < 0) {
				s->path_flags |= HTTP_PATH_NONCANONICAL;
				s->pct = 0;
				break;
			}
			s->pct_val = (s->pct_val << 4) | v;
			if (++s->pct < 3)
				break;
			s->pct = 0;
			c = s->pct_val;
			/* An encoded unreserved byte or separator. */
			if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
				s->path_flags |= HTTP_PATH_NONCANONICAL;
			if ((c >= '0' && c <= '9') || c == '-' || c == '.' ||
			    c == '_' || c == '~' || c == '/' || c == '\\')
				s->path_flags |= HTTP_PATH_NONCANONICAL;
			s->seg_len++;
			break;
		}
		if (c == '/' || c == '?') {
			if (c == '/' && s->prev == '/')
				s->path_flags |= HTTP_PATH_NONCANONICAL;
			segment_end(s);
			if (c == '?')
				s->tgt = T_QUERY;
			break;
		}
		if (c == '%') {
			s->pct = 1;
			s->pct_val = 0;
		} else if (c == '\\') {
			s->path_flags |= HTTP_PATH_NONCANONICAL;
		}
		s->seg_len++;
		s->seg_dots += c == '.';
		break;
	}
}

/* The SP ending a request target. */
static __always_inline void target_end(struct scan *s, __u32 pos)
{
	if (s->tgt == T_AUTH)
		s->auth_len = pos - s->auth_off;
	if (s->tgt == T_ORIGIN)
		segment_end(s);
	if (s->tgt == T_ORIGIN || s->tgt == T_QUERY)
		s->path_len = pos - s->path_off;
	if (s->pct)
		s->path_flags |= HTTP_PATH_NONCANONICAL;
}

/* The start line, a byte at a time. */
static __always_inline int start_line(struct scan *s, __u32 pos, __u8 c)
{
	__u32 k = pos - s->tok_at;

	switch (s->st) {
	case S_TOK1:
		if (c == ' ' && k) {
			if (s->resp && (k != 8 ||
					(s->tok1 != HTTP11 && s->tok1 != HTTP10)))
				return fail(s, HTTP_B_START_LINE);
			s->tok1_len = k;
			s->st = S_TOK2;
			s->tok_at = pos + 1;
			return 0;
		}
		if (s->resp ? (c <= ' ' || c >= 0x7f) : !is_tchar(c))
			return fail(s, HTTP_B_START_LINE);
		if (k < 8)
			s->tok1 |= (__u64)c << (k * 8);
		return 0;
	case S_TOK2:
		if (s->resp) {
			if (k == 3 && (c == ' ' || c == '\r')) {
				s->st = S_TOK3;
				s->tok_at = pos + 1;
				if (c == '\r')
					goto cr;
				return 0;
			}
			if (k >= 3 || c < '0' || c > '9')
				return fail(s, HTTP_B_START_LINE);
			s->status = s->status * 10 + (c - '0');
			return 0;
		}
		if (c == ' ' && k) {
			target_end(s, pos);
			s->st = S_TOK3;
			s->tok_at = pos + 1;
			return 0;
		}
		if (c <= ' ' || c == 0x7f)
			return fail(s, HTTP_B_START_LINE);
		target_byte(s, pos, c);
		return 0;
	case S_TOK3:
		if (c == '\r') {
			if (!s->resp && (k != 8 ||
					 (s->tok3 != HTTP11 && s->tok3 != HTTP10)))
				return fail(s, HTTP_B_START_LINE);
			goto cr;
		}
		if (c == '\n')
			return fail(s, HTTP_B_BARE_LF);
		if (s->resp) {
			if ((c < ' ' && c != '\t') || c == 0x7f)
				return fail(s, HTTP_B_CTL);
			return 0;
		}
		if (k >= 8)
			return fail(s, HTTP_B_START_LINE);
		s->tok3 |= (__u64)c << (k * 8);
		return 0;
	}
	return fail(s, HTTP_B_START_LINE);
cr:
	s->line_len = pos;
	s->st = S_SL_LF;
	return 0;
}

/* bpf_loop() callback: one byte of a header block (or trailer section). */
static int scan_byte(__u32 i, void *ctx)
{
	struct loop_ctx *lc = ctx;
	struct scan *s = lc->state;
	__u32 pos = i;
	__u8 c;

	if (get_byte(lc->skb, &s->r, pos, &c))
		return 1;
	switch (s->st) {
	case S_TOK1:
	case S_TOK2:
	case S_TOK3:
		if (start_line(s, pos, c))
			return 1;
		break;
	case S_SL_LF:
	case S_LF:
		if (c != '\n')
			return fail(s, HTTP_B_BARE_LF);
		s->st = S_LS;
		break;
	case S_END_LF:
		if (c != '\n')
			return fail(s, HTTP_B_BARE_LF);
		s->end = pos + 1;
		return 1;
	case S_LS:
		if (c == '\r') {
			s->st = S_END_LF;
			break;
		}
		if (c == ' ' || c == '\t')
			return fail(s, HTTP_B_FOLD);
		if (c == '\n')
			return fail(s, HTTP_B_BARE_LF);
		if (!is_tchar(c))
			return fail(s, c < ' ' ? HTTP_B_CTL : HTTP_B_NAME);
		s->name_at = pos;
		s->name_ok = 7;
		s->hdr_count++;
		s->st = S_NAME;
		name_byte(s, pos, c);
		break;
	case S_NAME:
		if (c == ':') {
			if (name_end(s, pos))
				return 1;
			s->st = S_OWS;
			break;
		}
		if (!is_tchar(c))
			return fail(s, c < ' ' ? HTTP_B_CTL : HTTP_B_NAME);
		name_byte(s, pos, c);
		break;
	case S_OWS:
		if (c == ' ' || c == '\t')
			break;
		s->val_at = pos;
		s->val_end = pos;
		s->st = S_VAL;
		/* fall through */
	case S_VAL:
		if (c == '\r') {
			if (value_end(s))
				return 1;
			s->st = S_LF;
			break;
		}
		if (c == '\n')
			return fail(s, HTTP_B_BARE_LF);
		if ((c < ' ' && c != '\t') || c == 0x7f)
			return fail(s, HTTP_B_CTL);
		if (c != ' ' && c != '\t')
			s->val_end = pos + 1;
		if (value_byte(s, c))
			return 1;
		break;
	}
	s->prev2 = s->prev;
	s->prev = c;
	return 0;
}

/*
 * The parser's state for this proxy, made before its first message is
 * framed. An entry with another stamp is an earlier proxy's with the same
 * id: replaced. Missing once the proxy has framed a message, it was lost
 * (the LRU map evicted it, with more than HTTP_PROXIES_MAX proxies about):
 * NULL, and the caller refuses rather than frame from a fresh guess, which
 * could take a body for a request or a request for a body.
 */
static __always_inline struct http_state *state_of(struct __sk_buff *skb)
{
	__u32 id = skb->cb[KPROXY_CB_PROXY], stamp = skb->cb[KPROXY_CB_STAMP];
	struct http_state *st = bpf_map_lookup_elem(&http_state, &id);
	struct http_state fresh = { .stamp = stamp };

	if (st && st->stamp == stamp)
		return st;
	if (skb->cb[KPROXY_CB_FLAGS] & KPROXY_CB_FRAMED)
		return NULL;
	bpf_map_update_elem(&http_state, &id, &fresh, BPF_ANY);
	return bpf_map_lookup_elem(&http_state, &id);
}

/* Frame what there is as a bad message, or end the proxy without a verdict. */
static __always_inline int frame_bad(struct http_dir_state *ds, __u8 why,
				     __u32 avail, __u32 flags)
{
	ds->kind = HTTP_K_BAD;
	ds->bad = why;
	ds->mode = HTTP_M_DEAD;
	if (!(flags & KPROXY_CB_VERDICT) || !avail)
		return -KPROXY_EBADMSG;
	ds->msgs++;
	return avail > KPROXY_MSG_MAX ? KPROXY_MSG_MAX : avail;
}

/* A piece of a body of known length (Content-Length or a chunk). */
static __always_inline int frame_piece(struct http_dir_state *ds, __u8 next)
{
	__u64 n = ds->remaining;

	if (n > HTTP_PIECE_MAX)
		n = HTTP_PIECE_MAX;
	ds->remaining -= n;
	ds->body_len += n;
	ds->kind = HTTP_K_BODY;
	ds->msgs++;
	if (!ds->remaining)
		ds->mode = next;
	return n;
}

static __always_inline __u8 method_of(__u64 tok, __u32 len)
{
	switch (len) {
	case 3:
		if (tok == 0x544547)
			return HTTP_METHOD_GET;
		if (tok == 0x545550)
			return HTTP_METHOD_PUT;
		break;
	case 4:
		if (tok == 0x44414548)
			return HTTP_METHOD_HEAD;
		if (tok == 0x54534f50)
			return HTTP_METHOD_POST;
		break;
	case 5:
		if (tok == 0x4543415254ULL)
			return HTTP_METHOD_TRACE;
		if (tok == 0x4843544150ULL)
			return HTTP_METHOD_PATCH;
		break;
	case 6:
		if (tok == 0x4554454c4544ULL)
			return HTTP_METHOD_DELETE;
		break;
	case 7:
		if (tok == 0x5443454e4e4f43ULL)
			return HTTP_METHOD_CONNECT;
		if (tok == 0x534e4f4954504fULL)
			return HTTP_METHOD_OPTIONS;
		break;
	}
	return HTTP_METHOD_OTHER;
}

/* Run the scanner over [0, n) of the message; states from @st. */
static __always_inline void scan_block(struct scan *s, struct __sk_buff *skb,
				       __u32 n, __u8 st, __u8 resp)
{
	struct loop_ctx lc = { .state = s, .skb = skb };

	__builtin_memset(s, 0, sizeof(*s));
	s->r.word_at = NO_WORD;
	s->r.avail = skb->len;
	s->st = st;
	s->resp = resp;
	s->tgt = T_START;
	bpf_loop(n, scan_byte, &lc, 0);
}

/* What a header block of @s says; HTTP_B_* or 0. */
static __always_inline int head_done(struct http_state *st,
				     struct http_dir_state *ds,
				     struct scan *s)
{
	__u32 head = st->ring_head, tail = st->ring_tail;
	__u8 req = 0;

	ds->kind = HTTP_K_HEADER;
	ds->bad = HTTP_B_NONE;
	ds->hdr_count = s->hdr_count;
	ds->line_len = s->line_len;
	ds->hdr_len = s->end;
	ds->body_len = 0;
	ds->body_expected = 0;
	ds->remaining = 0;
	ds->msgs++;
	ds->heads++;
	if (s->te_seen && s->cl_seen)
		return HTTP_B_CL_TE;

	if (!s->resp) {
		ds->method = method_of(s->tok1, s->tok1_len);
		ds->path_off = s->path_off;
		ds->path_len = s->path_len;
		ds->path_flags = s->path_flags;
		if (s->auth_off) {
			/* absolute-form: its authority is the host (9112 3.2.2) */
			ds->host_off = s->auth_off;
			ds->host_len = s->auth_len;
		} else {
			ds->host_off = s->host_off;
			ds->host_len = s->host_len;
			if (!s->host_seen && s->tok3 == HTTP11)
				return HTTP_B_HOST;
		}
		if (head - tail >= HTTP_RING)
			return HTTP_B_PIPELINE;
		if (ds->method == HTTP_METHOD_HEAD)
			req = HTTP_REQ_HEAD;
		if (ds->method == HTTP_METHOD_CONNECT)
			req = HTTP_REQ_CONNECT;
		st->ring[head & (HTTP_RING - 1)] = req;
		st->ring_head = head + 1;
		if (s->te_seen) {
			ds->mode = HTTP_M_CHUNK_SIZE;
		} else if (s->cl) {
			ds->mode = HTTP_M_BODY;
			ds->remaining = s->cl;
			ds->body_expected = s->cl;
		} else {
			ds->mode = HTTP_M_HEAD;
		}
		return 0;
	}

	ds->status = s->status;
	ds->mode = HTTP_M_HEAD;
	if (s->status < 200 && s->status != 101)
		return 0;		/* interim: the request waits on */
	if (head != tail) {
		req = st->ring[tail & (HTTP_RING - 1)];
		st->ring_tail = tail + 1;
	}
	if (s->status == 101 ||
	    ((req & HTTP_REQ_CONNECT) && s->status / 100 == 2)) {
		st->tunnel = 1;
		ds->mode = HTTP_M_TUNNEL;
		return 0;
	}
	if ((req & HTTP_REQ_HEAD) || s->status == 204 || s->status == 304)
		return 0;
	if (s->te_seen) {
		ds->mode = HTTP_M_CHUNK_SIZE;
	} else if (s->cl_seen) {
		if (s->cl) {
			ds->mode = HTTP_M_BODY;
			ds->remaining = s->cl;
			ds->body_expected = s->cl;
		}
	} else {
		ds->mode = HTTP_M_CLOSE;
	}
	return 0;
}

/* Chunk-size line scanner. */
struct chunk_scan {
	struct reader r;
	__u64 size;
	__u32 end;		/* offset after the line's LF, 0 until found */
	__u32 digits;
	__u8 st;		/* see chunk_byte() */
	__u8 bad;
};

enum { C_CR0, C_LF0, C_HEX, C_EXT, C_LF };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chunk_scan);
} http_chunk SEC(".maps");

static int chunk_byte(__u32 i, void *ctx)
{
	struct loop_ctx *lc = ctx;
	struct chunk_scan *c = lc->state;
	__u8 b;

	if (get_byte(lc->skb, &c->r, i, &b))
		return 1;

	switch (c->st) {
	case C_CR0:
		if (b != '\r')
			goto bad;
		c->st = C_LF0;
		return 0;
	case C_LF0:
		if (b != '\n')
			goto bad;
		c->st = C_HEX;
		return 0;
	case C_HEX:
		if (hexval(b) >= 0) {
			if (c->digits >= 15)
				goto bad;
			c->size = (c->size << 4) | hexval(b);
			c->digits++;
			return 0;
		}
		if (!c->digits)
			goto bad;
		if (b == '\r') {
			c->st = C_LF;
			return 0;
		}
		if (b == ';' || b == ' ' || b == '\t') {
			c->st = C_EXT;
			return 0;
		}
		goto bad;
	case C_EXT:
		if (b == '\r') {
			c->st = C_LF;
			return 0;
		}
		if ((b < ' ' && b != '\t') || b == 0x7f)
			goto bad;
		return 0;
	case C_LF:
		if (b != '\n')
			goto bad;
		c->end = i + 1;
		return 1;
	}
bad:
	c->bad = 1;
	return 1;
}

/* A chunk-size line (after the CRLF ending the chunk before, if @crlf). */
static __always_inline int chunk_line(struct __sk_buff *skb,
				      struct http_dir_state *ds, int crlf,
				      __u32 flags)
{
	struct loop_ctx lc;
	struct chunk_scan *cp;
	__u32 n = skb->len, key = 0;

	cp = bpf_map_lookup_elem(&http_chunk, &key);
	if (!cp)
		return -KPROXY_ENOMEM;
	lc.state = cp;
	lc.skb = skb;
	if (n > CHUNK_LINE_MAX)
		n = CHUNK_LINE_MAX;
	__builtin_memset(cp, 0, sizeof(*cp));
	cp->r.word_at = NO_WORD;
	cp->r.avail = skb->len;
	cp->st = crlf ? C_CR0 : C_HEX;
	bpf_loop(n, chunk_byte, &lc, 0);
	if (cp->bad)
		return frame_bad(ds, HTTP_B_CHUNK, skb->len, flags);
	if (!cp->end) {
		if (skb->len >= CHUNK_LINE_MAX)
			return frame_bad(ds, HTTP_B_TOO_BIG, skb->len, flags);
		return 0;
	}
	ds->kind = HTTP_K_CHUNK_SIZE;
	ds->msgs++;
	ds->remaining = cp->size;
	ds->body_expected += cp->size;
	ds->mode = cp->size ? HTTP_M_CHUNK_DATA : HTTP_M_TRAILERS;
	return cp->end;
}

static __always_inline __u32 hdr_limit(void)
{
	struct http_cfg *cfg;
	__u32 key = 0, limit;

	cfg = bpf_map_lookup_elem(&http_cfg, &key);
	limit = cfg ? cfg->hdr_limit : 0;
	if (!limit)
		return HTTP_HDR_LIMIT;
	if (limit < 256)
		return 256;
	return limit > HTTP_HDR_LIMIT_MAX ? HTTP_HDR_LIMIT_MAX : limit;
}

/* A header block, or with @trailers the trailer section. */
static __always_inline int header_block(struct __sk_buff *skb,
					struct http_state *st,
					struct http_dir_state *ds, __u32 dir,
					__u32 flags, int trailers)
{
	__u32 limit = hdr_limit(), n = skb->len, key = 0;
	struct scan *s;
	int bad;

	s = bpf_map_lookup_elem(&http_scan, &key);
	if (!s)
		return -KPROXY_ENOMEM;
	if (n > limit)
		n = limit;
	scan_block(s, skb, n, trailers ? S_LS : S_TOK1,
		   dir == KPROXY_DIR_B_TO_A);
	if (s->bad)
		return frame_bad(ds, s->bad, skb->len, flags);
	if (!s->end) {
		if (skb->len >= limit)
			return frame_bad(ds, HTTP_B_TOO_BIG, skb->len, flags);
		return 0;
	}
	if (trailers) {
		ds->kind = HTTP_K_TRAILERS;
		ds->mode = HTTP_M_HEAD;
		ds->msgs++;
		return s->end;
	}
	bad = head_done(st, ds, s);
	if (bad)
		return frame_bad(ds, bad, s->end, flags);
	return s->end;
}

/* Bytes passed through as they come (close-delimited body, tunnel). */
static __always_inline int frame_stream(struct __sk_buff *skb,
					struct http_dir_state *ds)
{
	__u32 n = skb->len;

	ds->kind = HTTP_K_STREAM;
	ds->msgs++;
	return n > HTTP_PIECE_MAX ? HTTP_PIECE_MAX : n;
}

SEC("socket")
int http(struct __sk_buff *skb)
{
	__u32 dir = skb->cb[KPROXY_CB_DIR] & 1;
	__u32 flags = skb->cb[KPROXY_CB_FLAGS];
	struct http_dir_state *ds;
	struct http_state *st;

	st = state_of(skb);
	if (!st)
		return flags & KPROXY_CB_FRAMED ? -KPROXY_EBADMSG : -KPROXY_ENOMEM;
	ds = &st->dir[dir];
	/* The other direction saw 101 or a 2xx to CONNECT. */
	if (st->tunnel && ds->mode == HTTP_M_HEAD)
		ds->mode = HTTP_M_TUNNEL;

	switch (ds->mode) {
	case HTTP_M_HEAD:
		return header_block(skb, st, ds, dir, flags, 0);
	case HTTP_M_TRAILERS:
		return header_block(skb, st, ds, dir, flags, 1);
	case HTTP_M_BODY:
		return frame_piece(ds, HTTP_M_HEAD);
	case HTTP_M_CHUNK_DATA:
		return frame_piece(ds, HTTP_M_CHUNK_NEXT);
	case HTTP_M_CHUNK_SIZE:
		return chunk_line(skb, ds, 0, flags);
	case HTTP_M_CHUNK_NEXT:
		return chunk_line(skb, ds, 1, flags);
	case HTTP_M_CLOSE:
	case HTTP_M_TUNNEL:
		return frame_stream(skb, ds);
	}
	return -KPROXY_EBADMSG;
}

char _license[] SEC("license") = "GPL";
