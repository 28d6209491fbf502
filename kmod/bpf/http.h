/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the http parser (http.bpf.c) and the http-filter verdict
 * (http-filter.bpf.c) share: the per-proxy state map and its layout.
 *
 * The parser keeps, per proxy (key: the proxy id the module puts in
 * skb->cb[0]), one struct http_state: per direction (skb->cb[1]) the
 * framing mode and what the message it framed last is (struct
 * http_dir_state), and a ring of what each request needs of its
 * response (HEAD: no body; CONNECT: a 2xx makes a tunnel), pushed by
 * the a-to-b parser and popped by the b-to-a one. The module runs a
 * direction's verdict on a message before its parser frames the next
 * one, so the verdict reads the facts of the very message it judges.
 *
 * The filter is loaded from its own object: kpctl makes it use the
 * parser's map (bpf_map__reuse_fd(), see kpctl/http.py), so both must
 * declare it identically: HTTP_STATE_MAP below.
 */
#ifndef KPROXY_HTTP_H
#define KPROXY_HTTP_H

#include "kproxy_bpf.h"

#define HTTP_PROXIES_MAX	65536	/* state entries (LRU) */
#define HTTP_RING		32	/* requests awaiting a response */
#define HTTP_PIECE_MAX		(64 * 1024)	/* a body piece */
#define HTTP_HDR_LIMIT		16384	/* default header block limit */
#define HTTP_HDR_LIMIT_MAX	65536	/* the most http_cfg may set */

/* How a direction frames its next message. */
enum http_mode {
	HTTP_M_HEAD,		/* a header block (request or response) */
	HTTP_M_BODY,		/* Content-Length body: remaining bytes */
	HTTP_M_CHUNK_SIZE,	/* a chunk-size line */
	HTTP_M_CHUNK_DATA,	/* chunk data: remaining bytes */
	HTTP_M_CHUNK_NEXT,	/* the CRLF after chunk data, then a size line */
	HTTP_M_TRAILERS,	/* the trailer section after the last chunk */
	HTTP_M_CLOSE,		/* a response body delimited by the close */
	HTTP_M_TUNNEL,		/* after 101 or a 2xx to CONNECT: plain bytes */
	HTTP_M_DEAD,		/* a bad message was framed: nothing more */
};

/* What the message framed last is. */
enum http_kind {
	HTTP_K_NONE,
	HTTP_K_HEADER,		/* a header block */
	HTTP_K_BODY,		/* a piece of a body (Content-Length or chunk) */
	HTTP_K_CHUNK_SIZE,	/* a chunk-size line (with the CRLF before it) */
	HTTP_K_TRAILERS,	/* the trailer section (or the final CRLF) */
	HTTP_K_STREAM,		/* close-delimited body or tunnel bytes */
	HTTP_K_BAD,		/* malformed or smuggling: see enum http_bad */
};

/* Why a message is bad. */
enum http_bad {
	HTTP_B_NONE,
	HTTP_B_CL_TE,		/* both Content-Length and Transfer-Encoding */
	HTTP_B_CL_DUP,		/* more than one Content-Length */
	HTTP_B_CL_BAD,		/* a Content-Length that is not 1-18 digits */
	HTTP_B_TE_BAD,		/* Transfer-Encoding not ending in one chunked */
	HTTP_B_FOLD,		/* obs-fold: a line starting with SP or HTAB */
	HTTP_B_BARE_LF,		/* LF without CR, or CR without LF */
	HTTP_B_CTL,		/* NUL or another control byte */
	HTTP_B_NAME,		/* an empty or invalid field name (SP before :) */
	HTTP_B_START_LINE,	/* a malformed request or status line */
	HTTP_B_TOO_BIG,		/* header block (or chunk line) over the limit */
	HTTP_B_HOST,		/* HTTP/1.1 without Host, or several Hosts */
	HTTP_B_CHUNK,		/* a malformed chunk-size line */
	HTTP_B_PIPELINE,	/* more than HTTP_RING requests unanswered */
};

/* Method numbers: bit n of http_rules.methods allows method n. */
enum http_method {
	HTTP_METHOD_OTHER,
	HTTP_METHOD_GET,
	HTTP_METHOD_HEAD,
	HTTP_METHOD_POST,
	HTTP_METHOD_PUT,
	HTTP_METHOD_DELETE,
	HTTP_METHOD_CONNECT,
	HTTP_METHOD_OPTIONS,
	HTTP_METHOD_TRACE,
	HTTP_METHOD_PATCH,
};

/* Path flags: a target the backend may read differently than its bytes. */
#define HTTP_PATH_NONCANONICAL	1	/* %-encoded unreserved or /, //, /./, /../ */

/* A ring entry: what a request needs of its response. */
#define HTTP_REQ_HEAD		1
#define HTTP_REQ_CONNECT	2

struct http_dir_state {
	__u8 mode;		/* enum http_mode */
	__u8 kind;		/* enum http_kind, of the message framed last */
	__u8 bad;		/* enum http_bad */
	__u8 method;		/* enum http_method, of the last request */
	__u16 status;		/* of the last response */
	__u16 hdr_count;	/* fields in the last header block */
	__u32 line_len;		/* request or status line, without CRLF */
	__u32 hdr_len;		/* the last header block, CRLFCRLF included */
	/* Of the last request's header block, offsets from its first byte. */
	__u32 path_off;
	__u32 path_len;		/* the path and query (0: none, e.g. "*") */
	__u32 host_off;		/* Host, or the authority of absolute-form */
	__u32 host_len;
	__u32 path_flags;	/* HTTP_PATH_* */
	__u32 heads;		/* header blocks framed (requests or responses) */
	__u64 remaining;	/* of the body or chunk being framed */
	__u64 body_len;		/* body bytes framed so far */
	__u64 body_expected;	/* Content-Length, or the chunk sizes so far */
	__u64 msgs;		/* messages framed */
};

struct http_state {
	struct http_dir_state dir[2];
	__u32 ring_head;	/* pushed by a-to-b */
	__u32 ring_tail;	/* popped by b-to-a */
	__u32 tunnel;		/* both directions pass bytes through */
	__u32 stamp;		/* skb->cb[KPROXY_CB_STAMP] of its proxy */
	__u8 ring[HTTP_RING];
};

#define HTTP_STATE_MAP						\
	struct {						\
		__uint(type, BPF_MAP_TYPE_LRU_HASH);		\
		__uint(max_entries, HTTP_PROXIES_MAX);		\
		__type(key, __u32);				\
		__type(value, struct http_state);		\
	} http_state SEC(".maps")

#endif /* KPROXY_HTTP_H */
