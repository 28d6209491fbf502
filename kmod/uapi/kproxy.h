/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */
/* generated from schema/kproxy.yaml by schema/gen.py — do not edit */

#ifndef _UAPI_LINUX_KPROXY_H
#define _UAPI_LINUX_KPROXY_H

#define KPROXY_FAMILY_NAME	"kproxy"
#define KPROXY_FAMILY_VERSION	1

/**
 * enum kproxy_state - Life cycle of a proxy.
 * @KPROXY_STATE_ACTIVE: Forwarding in both directions.
 * @KPROXY_STATE_HALF_CLOSED: One direction has forwarded its FIN; the other
 *   still flows.
 * @KPROXY_STATE_CLOSING: The proxy is ending; its sockets are being handed
 *   back.
 */
enum kproxy_state {
	KPROXY_STATE_ACTIVE,
	KPROXY_STATE_HALF_CLOSED,
	KPROXY_STATE_CLOSING,
};

/**
 * enum kproxy_reason - Why a proxy ended (carried by proxy-del-ntf).
 * @KPROXY_REASON_USER: Deleted by a proxy-del request.
 * @KPROXY_REASON_CLOSED: Both directions forwarded their FIN.
 * @KPROXY_REASON_RESET: One socket was reset by its peer; the other was
 *   aborted.
 * @KPROXY_REASON_ERROR: A socket error or a forwarding failure; the other
 *   socket was aborted.
 * @KPROXY_REASON_NETNS_EXIT: The network namespace that owned the proxy was
 *   deleted.
 * @KPROXY_REASON_UNLOAD: The kproxy module was unloaded.
 * @KPROXY_REASON_TLS_ALERT: A kTLS side received a fatal TLS alert (tls-alert
 *   carries its description); the other socket was aborted.
 * @KPROXY_REASON_TLS_REKEY: A kTLS side received a TLS 1.3 KeyUpdate. The next
 *   keys derive from secrets only userspace holds, so the proxy ends rather
 *   than wait for records it cannot decrypt; the other socket was aborted.
 */
enum kproxy_reason {
	KPROXY_REASON_USER,
	KPROXY_REASON_CLOSED,
	KPROXY_REASON_RESET,
	KPROXY_REASON_ERROR,
	KPROXY_REASON_NETNS_EXIT,
	KPROXY_REASON_UNLOAD,
	KPROXY_REASON_TLS_ALERT,
	KPROXY_REASON_TLS_REKEY,
};

/**
 * enum kproxy_bpf_kind - What a program attached to a direction does.
 * @KPROXY_BPF_KIND_PARSER: Cuts the stream into messages: returns the length
 *   of the message starting at offset 0, 0 when it needs more bytes, a
 *   negative value on a protocol error (which ends the proxy with reason
 *   error).
 * @KPROXY_BPF_KIND_VERDICT: Judges each whole message (needs a parser): 0
 *   drops it, anything else forwards it.
 */
enum kproxy_bpf_kind {
	KPROXY_BPF_KIND_PARSER,
	KPROXY_BPF_KIND_VERDICT,
};

/**
 * enum kproxy_direction - The direction(s) a program applies to.
 */
enum kproxy_direction {
	KPROXY_DIRECTION_A_TO_B,
	KPROXY_DIRECTION_B_TO_A,
	KPROXY_DIRECTION_BOTH,
};

enum {
	KPROXY_A_PROXY_ID = 1,
	KPROXY_A_PROXY_FD_A,
	KPROXY_A_PROXY_FD_B,
	KPROXY_A_PROXY_STATE,
	KPROXY_A_PROXY_CREATE_TIME,
	KPROXY_A_PROXY_SOCK_A,
	KPROXY_A_PROXY_SOCK_B,
	KPROXY_A_PROXY_A_TO_B,
	KPROXY_A_PROXY_B_TO_A,
	KPROXY_A_PROXY_REASON,
	KPROXY_A_PROXY_PAD,
	KPROXY_A_PROXY_PROG_FD,
	KPROXY_A_PROXY_KIND,
	KPROXY_A_PROXY_DIRECTION,
	KPROXY_A_PROXY_NOTIFY,
	KPROXY_A_PROXY_TLS_ALERT,
	KPROXY_A_PROXY_LISTENER_ID,

	__KPROXY_A_PROXY_MAX,
	KPROXY_A_PROXY_MAX = (__KPROXY_A_PROXY_MAX - 1)
};

enum {
	KPROXY_A_SOCK_FAMILY = 1,
	KPROXY_A_SOCK_LOCAL_ADDR,
	KPROXY_A_SOCK_LOCAL_PORT,
	KPROXY_A_SOCK_REMOTE_ADDR,
	KPROXY_A_SOCK_REMOTE_PORT,
	KPROXY_A_SOCK_TCP_STATE,
	KPROXY_A_SOCK_TLS_VERSION,
	KPROXY_A_SOCK_TLS_CIPHER,

	__KPROXY_A_SOCK_MAX,
	KPROXY_A_SOCK_MAX = (__KPROXY_A_SOCK_MAX - 1)
};

enum {
	KPROXY_A_DIR_BYTES = 1,
	KPROXY_A_DIR_SKBS,
	KPROXY_A_DIR_MSGS,
	KPROXY_A_DIR_DROPS,
	KPROXY_A_DIR_QUEUED,
	KPROXY_A_DIR_SHUT,
	KPROXY_A_DIR_PAD,
	KPROXY_A_DIR_PARSER_ID,
	KPROXY_A_DIR_VERDICT_ID,
	KPROXY_A_DIR_TLS_RECORDS_IN,
	KPROXY_A_DIR_TLS_RECORDS_OUT,

	__KPROXY_A_DIR_MAX,
	KPROXY_A_DIR_MAX = (__KPROXY_A_DIR_MAX - 1)
};

enum {
	KPROXY_A_ENDPOINT_FAMILY = 1,
	KPROXY_A_ENDPOINT_ADDR,
	KPROXY_A_ENDPOINT_PORT,

	__KPROXY_A_ENDPOINT_MAX,
	KPROXY_A_ENDPOINT_MAX = (__KPROXY_A_ENDPOINT_MAX - 1)
};

enum {
	KPROXY_A_LISTENER_ID = 1,
	KPROXY_A_LISTENER_FD,
	KPROXY_A_LISTENER_TARGET,
	KPROXY_A_LISTENER_SOURCE,
	KPROXY_A_LISTENER_MAX_PROXIES,
	KPROXY_A_LISTENER_CONNECT_TIMEOUT_MS,
	KPROXY_A_LISTENER_PARSER_FD,
	KPROXY_A_LISTENER_VERDICT_FD,
	KPROXY_A_LISTENER_LISTEN,
	KPROXY_A_LISTENER_PARSER_ID,
	KPROXY_A_LISTENER_VERDICT_ID,
	KPROXY_A_LISTENER_END_PROXIES,
	KPROXY_A_LISTENER_PAD,
	KPROXY_A_LISTENER_CREATE_TIME,
	KPROXY_A_LISTENER_ACCEPTED,
	KPROXY_A_LISTENER_CREATED,
	KPROXY_A_LISTENER_FAILED_REFUSED,
	KPROXY_A_LISTENER_FAILED_UNREACHABLE,
	KPROXY_A_LISTENER_FAILED_TIMEOUT,
	KPROXY_A_LISTENER_FAILED_OTHER,
	KPROXY_A_LISTENER_REFUSED_LIMIT,
	KPROXY_A_LISTENER_ACTIVE,
	KPROXY_A_LISTENER_PENDING,
	KPROXY_A_LISTENER_NOTIFY,
	KPROXY_A_LISTENER_ENDED,
	KPROXY_A_LISTENER_ENDED_BYTES_A_TO_B,
	KPROXY_A_LISTENER_ENDED_BYTES_B_TO_A,

	__KPROXY_A_LISTENER_MAX,
	KPROXY_A_LISTENER_MAX = (__KPROXY_A_LISTENER_MAX - 1)
};

enum {
	KPROXY_CMD_PROXY_NEW = 1,
	KPROXY_CMD_PROXY_DEL,
	KPROXY_CMD_PROXY_GET,
	KPROXY_CMD_PROXY_NEW_NTF,
	KPROXY_CMD_PROXY_DEL_NTF,
	KPROXY_CMD_BPF_ATTACH,
	KPROXY_CMD_BPF_DETACH,
	KPROXY_CMD_LISTENER_NEW,
	KPROXY_CMD_LISTENER_DEL,
	KPROXY_CMD_LISTENER_GET,
	KPROXY_CMD_LISTENER_NEW_NTF,
	KPROXY_CMD_LISTENER_DEL_NTF,

	__KPROXY_CMD_MAX,
	KPROXY_CMD_MAX = (__KPROXY_CMD_MAX - 1)
};

#define KPROXY_MCGRP_MONITOR	"monitor"

#endif /* _UAPI_LINUX_KPROXY_H */
