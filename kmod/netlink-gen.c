// SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause)
/* generated from schema/kproxy.yaml by schema/gen.py — do not edit */

#include <net/netlink.h>
#include <net/genetlink.h>

#include "netlink-gen.h"

/* Nested: endpoint */
static const struct nla_policy kproxy_endpoint_nl_policy[KPROXY_A_ENDPOINT_MAX + 1] = {
	[KPROXY_A_ENDPOINT_FAMILY] = { .type = NLA_U16, },
	[KPROXY_A_ENDPOINT_ADDR] = NLA_POLICY_RANGE(NLA_BINARY, 4, 16),
	[KPROXY_A_ENDPOINT_PORT] = { .type = NLA_U16, },
};

/* KPROXY_CMD_PROXY_NEW - do */
static const struct nla_policy kproxy_proxy_new_nl_policy[KPROXY_A_PROXY_VERDICT_DIRECTION + 1] = {
	[KPROXY_A_PROXY_FD_A] = { .type = NLA_U32, },
	[KPROXY_A_PROXY_FD_B] = { .type = NLA_U32, },
	[KPROXY_A_PROXY_NOTIFY] = { .type = NLA_FLAG, },
	[KPROXY_A_PROXY_VERDICT_REPLIES] = { .type = NLA_BINARY, .len = KPROXY_REPLY_LEN_MAX, },
	[KPROXY_A_PROXY_PARSER_FD] = { .type = NLA_U32, },
	[KPROXY_A_PROXY_VERDICT_FD] = { .type = NLA_U32, },
	[KPROXY_A_PROXY_VERDICT_DIRECTION] = NLA_POLICY_MAX(NLA_U32, 2),
};

/* KPROXY_CMD_PROXY_DEL - do */
static const struct nla_policy kproxy_proxy_del_nl_policy[KPROXY_A_PROXY_ID + 1] = {
	[KPROXY_A_PROXY_ID] = NLA_POLICY_MIN(NLA_U32, 1),
};

/* KPROXY_CMD_PROXY_GET - do */
static const struct nla_policy kproxy_proxy_get_nl_policy[KPROXY_A_PROXY_ID + 1] = {
	[KPROXY_A_PROXY_ID] = NLA_POLICY_MIN(NLA_U32, 1),
};

/* KPROXY_CMD_BPF_ATTACH - do */
static const struct nla_policy kproxy_bpf_attach_nl_policy[KPROXY_A_PROXY_VERDICT_REPLIES + 1] = {
	[KPROXY_A_PROXY_ID] = NLA_POLICY_MIN(NLA_U32, 1),
	[KPROXY_A_PROXY_PROG_FD] = { .type = NLA_U32, },
	[KPROXY_A_PROXY_KIND] = NLA_POLICY_MAX(NLA_U32, 1),
	[KPROXY_A_PROXY_DIRECTION] = NLA_POLICY_MAX(NLA_U32, 2),
	[KPROXY_A_PROXY_VERDICT_REPLIES] = { .type = NLA_BINARY, .len = KPROXY_REPLY_LEN_MAX, },
};

/* KPROXY_CMD_BPF_DETACH - do */
static const struct nla_policy kproxy_bpf_detach_nl_policy[KPROXY_A_PROXY_DIRECTION + 1] = {
	[KPROXY_A_PROXY_ID] = NLA_POLICY_MIN(NLA_U32, 1),
	[KPROXY_A_PROXY_KIND] = NLA_POLICY_MAX(NLA_U32, 1),
	[KPROXY_A_PROXY_DIRECTION] = NLA_POLICY_MAX(NLA_U32, 2),
};

/* KPROXY_CMD_LISTENER_NEW - do */
static const struct nla_policy
kproxy_listener_new_nl_policy[KPROXY_A_LISTENER_VERDICT_DIRECTION + 1] = {
	[KPROXY_A_LISTENER_FD] = { .type = NLA_U32, },
	[KPROXY_A_LISTENER_TARGET] = NLA_POLICY_NESTED(kproxy_endpoint_nl_policy),
	[KPROXY_A_LISTENER_SOURCE] = NLA_POLICY_NESTED(kproxy_endpoint_nl_policy),
	[KPROXY_A_LISTENER_MAX_PROXIES] = { .type = NLA_U32, },
	[KPROXY_A_LISTENER_CONNECT_TIMEOUT_MS] = NLA_POLICY_MIN(NLA_U32, 1),
	[KPROXY_A_LISTENER_PARSER_FD] = { .type = NLA_U32, },
	[KPROXY_A_LISTENER_VERDICT_FD] = { .type = NLA_U32, },
	[KPROXY_A_LISTENER_NOTIFY] = { .type = NLA_FLAG, },
	[KPROXY_A_LISTENER_VERDICT_REPLIES] = { .type = NLA_BINARY, .len = KPROXY_REPLY_LEN_MAX, },
	[KPROXY_A_LISTENER_VERDICT_DIRECTION] = NLA_POLICY_MAX(NLA_U32, 2),
};

/* KPROXY_CMD_LISTENER_DEL - do */
static const struct nla_policy kproxy_listener_del_nl_policy[KPROXY_A_LISTENER_END_PROXIES + 1] = {
	[KPROXY_A_LISTENER_ID] = NLA_POLICY_MIN(NLA_U32, 1),
	[KPROXY_A_LISTENER_END_PROXIES] = { .type = NLA_FLAG, },
};

/* KPROXY_CMD_LISTENER_GET - do */
static const struct nla_policy kproxy_listener_get_nl_policy[KPROXY_A_LISTENER_ID + 1] = {
	[KPROXY_A_LISTENER_ID] = NLA_POLICY_MIN(NLA_U32, 1),
};

/* Ops table for kproxy */
static const struct genl_ops kproxy_nl_ops[] = {
	{
		.cmd		= KPROXY_CMD_PROXY_NEW,
		.validate	= 0,
		.doit		= kproxy_nl_proxy_new_doit,
		.policy		= kproxy_proxy_new_nl_policy,
		.maxattr	= KPROXY_A_PROXY_VERDICT_DIRECTION,
		.flags		= GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd		= KPROXY_CMD_PROXY_DEL,
		.validate	= 0,
		.doit		= kproxy_nl_proxy_del_doit,
		.policy		= kproxy_proxy_del_nl_policy,
		.maxattr	= KPROXY_A_PROXY_ID,
		.flags		= GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd		= KPROXY_CMD_PROXY_GET,
		.validate	= 0,
		.doit		= kproxy_nl_proxy_get_doit,
		.dumpit		= kproxy_nl_proxy_get_dumpit,
		.policy		= kproxy_proxy_get_nl_policy,
		.maxattr	= KPROXY_A_PROXY_ID,
	},
	{
		.cmd		= KPROXY_CMD_BPF_ATTACH,
		.validate	= 0,
		.doit		= kproxy_nl_bpf_attach_doit,
		.policy		= kproxy_bpf_attach_nl_policy,
		.maxattr	= KPROXY_A_PROXY_VERDICT_REPLIES,
		.flags		= GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd		= KPROXY_CMD_BPF_DETACH,
		.validate	= 0,
		.doit		= kproxy_nl_bpf_detach_doit,
		.policy		= kproxy_bpf_detach_nl_policy,
		.maxattr	= KPROXY_A_PROXY_DIRECTION,
		.flags		= GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd		= KPROXY_CMD_LISTENER_NEW,
		.validate	= 0,
		.doit		= kproxy_nl_listener_new_doit,
		.policy		= kproxy_listener_new_nl_policy,
		.maxattr	= KPROXY_A_LISTENER_VERDICT_DIRECTION,
		.flags		= GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd		= KPROXY_CMD_LISTENER_DEL,
		.validate	= 0,
		.doit		= kproxy_nl_listener_del_doit,
		.policy		= kproxy_listener_del_nl_policy,
		.maxattr	= KPROXY_A_LISTENER_END_PROXIES,
		.flags		= GENL_UNS_ADMIN_PERM,
	},
	{
		.cmd		= KPROXY_CMD_LISTENER_GET,
		.validate	= 0,
		.doit		= kproxy_nl_listener_get_doit,
		.dumpit		= kproxy_nl_listener_get_dumpit,
		.policy		= kproxy_listener_get_nl_policy,
		.maxattr	= KPROXY_A_LISTENER_ID,
	},
};

static const struct genl_multicast_group kproxy_nl_mcgrps[] = {
	[KPROXY_NLGRP_MONITOR] = { .name = KPROXY_MCGRP_MONITOR, },
};

struct genl_family kproxy_nl_family __ro_after_init = {
	.name		= KPROXY_FAMILY_NAME,
	.version	= KPROXY_FAMILY_VERSION,
	.netnsok	= true,
	.parallel_ops	= true,
	.module		= THIS_MODULE,
	.ops		= kproxy_nl_ops,
	.n_ops		= ARRAY_SIZE(kproxy_nl_ops),
	.resv_start_op	= KPROXY_CMD_PROXY_NEW,
	.mcgrps		= kproxy_nl_mcgrps,
	.n_mcgrps	= ARRAY_SIZE(kproxy_nl_mcgrps),
};
