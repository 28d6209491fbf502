/* SPDX-License-Identifier: ((GPL-2.0 WITH Linux-syscall-note) OR BSD-3-Clause) */
/* generated from schema/kproxy.yaml by schema/gen.py — do not edit */

#ifndef _KPROXY_NETLINK_GEN_H
#define _KPROXY_NETLINK_GEN_H

#include <net/netlink.h>
#include <net/genetlink.h>

#include "uapi/kproxy.h"

int kproxy_nl_proxy_new_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_proxy_del_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_proxy_get_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_proxy_get_dumpit(struct sk_buff *skb, struct netlink_callback *cb);
int kproxy_nl_bpf_attach_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_bpf_detach_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_listener_new_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_listener_del_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_listener_get_doit(struct sk_buff *skb, struct genl_info *info);
int kproxy_nl_listener_get_dumpit(struct sk_buff *skb, struct netlink_callback *cb);

enum {
	KPROXY_NLGRP_MONITOR,
};

/* Register in module init: the family is read-only after it. */
extern struct genl_family kproxy_nl_family;

#endif /* _KPROXY_NETLINK_GEN_H */
