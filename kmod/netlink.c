// SPDX-License-Identifier: GPL-2.0
/*
 * Generic netlink handlers. Policies, the op table and the family are
 * generated from schema/kproxy.yaml into netlink-gen.c.
 */
#include <linux/bpf.h>
#include <net/genetlink.h>
#include <net/ipv6.h>
#include <net/sock.h>

#include "kproxy.h"
#include "netlink-gen.h"

static int kproxy_put_addr(struct sk_buff *skb, int attr, int family,
			   __be32 v4, const struct in6_addr *v6)
{
	if (family == AF_INET)
		return nla_put_in_addr(skb, attr, v4);
	return nla_put_in6_addr(skb, attr, v6);
}

/* kTLS sides carry their protocol version and cipher. */
static int kproxy_put_tls(struct sk_buff *skb, struct sock *sk)
{
	u16 version, cipher;

	kproxy_tls_info(sk, &version, &cipher);
	if (nla_put_u16(skb, KPROXY_A_SOCK_TLS_VERSION, version) ||
	    nla_put_u16(skb, KPROXY_A_SOCK_TLS_CIPHER, cipher))
		return -EMSGSIZE;
	return 0;
}

static int kproxy_put_sock(struct sk_buff *skb, int attr,
			   const struct kproxy *kp, int idx)
{
	struct sock *sk = kp->sock[idx]->sk;
	const struct inet_sock *inet = inet_sk(sk);
	const struct in6_addr *saddr6 = NULL, *daddr6 = NULL;
	struct nlattr *nest;

#if IS_ENABLED(CONFIG_IPV6)
	saddr6 = &sk->sk_v6_rcv_saddr;
	daddr6 = &sk->sk_v6_daddr;
#endif
	nest = nla_nest_start(skb, attr);
	if (!nest)
		return -EMSGSIZE;
	if (nla_put_u16(skb, KPROXY_A_SOCK_FAMILY, sk->sk_family) ||
	    kproxy_put_addr(skb, KPROXY_A_SOCK_LOCAL_ADDR, sk->sk_family,
			    inet->inet_rcv_saddr, saddr6) ||
	    nla_put_u16(skb, KPROXY_A_SOCK_LOCAL_PORT, ntohs(inet->inet_sport)) ||
	    kproxy_put_addr(skb, KPROXY_A_SOCK_REMOTE_ADDR, sk->sk_family,
			    inet->inet_daddr, daddr6) ||
	    nla_put_u16(skb, KPROXY_A_SOCK_REMOTE_PORT, ntohs(inet->inet_dport)) ||
	    nla_put_u8(skb, KPROXY_A_SOCK_TCP_STATE, READ_ONCE(sk->sk_state)) ||
	    (kp->dir[idx].tls_src && kproxy_put_tls(skb, sk))) {
		nla_nest_cancel(skb, nest);
		return -EMSGSIZE;
	}
	nla_nest_end(skb, nest);
	return 0;
}

static int kproxy_put_prog(struct sk_buff *skb, int attr,
			   const struct kproxy_dir *dir, int kind)
{
	u32 id = kproxy_bpf_id(dir, kind);

	return id ? nla_put_u32(skb, attr, id) : 0;
}

/* Records a kTLS source received and a kTLS destination sent. */
static int kproxy_put_tls_records(struct sk_buff *skb,
				  const struct kproxy *kp, int d)
{
	const struct kproxy_dir *dir = &kp->dir[d];

	if (dir->tls_src &&
	    nla_put_u64_64bit(skb, KPROXY_A_DIR_TLS_RECORDS_IN,
			      kproxy_tls_records(kp->sock[d]->sk, false),
			      KPROXY_A_DIR_PAD))
		return -EMSGSIZE;
	if (dir->tls_dst &&
	    nla_put_u64_64bit(skb, KPROXY_A_DIR_TLS_RECORDS_OUT,
			      kproxy_tls_records(kp->sock[!d]->sk, true),
			      KPROXY_A_DIR_PAD))
		return -EMSGSIZE;
	return 0;
}

static int kproxy_put_dir(struct sk_buff *skb, int attr,
			  const struct kproxy *kp, int d)
{
	const struct kproxy_dir *dir = &kp->dir[d];
	struct nlattr *nest;

	nest = nla_nest_start(skb, attr);
	if (!nest)
		return -EMSGSIZE;
	if (nla_put_u64_64bit(skb, KPROXY_A_DIR_BYTES, READ_ONCE(dir->bytes),
			      KPROXY_A_DIR_PAD) ||
	    nla_put_u64_64bit(skb, KPROXY_A_DIR_SKBS, READ_ONCE(dir->skbs),
			      KPROXY_A_DIR_PAD) ||
	    nla_put_u64_64bit(skb, KPROXY_A_DIR_MSGS, READ_ONCE(dir->msgs),
			      KPROXY_A_DIR_PAD) ||
	    nla_put_u64_64bit(skb, KPROXY_A_DIR_DROPS, READ_ONCE(dir->drops),
			      KPROXY_A_DIR_PAD) ||
	    nla_put_u32(skb, KPROXY_A_DIR_QUEUED, READ_ONCE(dir->queued)) ||
	    kproxy_put_prog(skb, KPROXY_A_DIR_PARSER_ID, dir,
			    KPROXY_BPF_KIND_PARSER) ||
	    kproxy_put_prog(skb, KPROXY_A_DIR_VERDICT_ID, dir,
			    KPROXY_BPF_KIND_VERDICT) ||
	    nla_put_u64_64bit(skb, KPROXY_A_DIR_DENIED, kproxy_bpf_denied(dir),
			      KPROXY_A_DIR_PAD) ||
	    (READ_ONCE(dir->shut) && nla_put_flag(skb, KPROXY_A_DIR_SHUT)) ||
	    kproxy_put_tls_records(skb, kp, d)) {
		nla_nest_cancel(skb, nest);
		return -EMSGSIZE;
	}
	nla_nest_end(skb, nest);
	return 0;
}

/* Fill one proxy message. Caller holds kproxy_lock or owns the teardown. */
static int kproxy_fill(struct sk_buff *skb, struct kproxy *kp, u32 portid,
		       u32 seq, int flags, u8 cmd, struct netlink_callback *cb)
{
	void *hdr;

	hdr = genlmsg_put(skb, portid, seq, &kproxy_nl_family, flags, cmd);
	if (!hdr)
		return -EMSGSIZE;
	if (cb)
		genl_dump_check_consistent(cb, hdr);

	if (nla_put_u32(skb, KPROXY_A_PROXY_ID, kp->id) ||
	    nla_put_u32(skb, KPROXY_A_PROXY_STATE, kproxy_state(kp)) ||
	    nla_put_u64_64bit(skb, KPROXY_A_PROXY_CREATE_TIME, kp->created_ns,
			      KPROXY_A_PROXY_PAD) ||
	    kproxy_put_sock(skb, KPROXY_A_PROXY_SOCK_A, kp, 0) ||
	    kproxy_put_sock(skb, KPROXY_A_PROXY_SOCK_B, kp, 1) ||
	    kproxy_put_dir(skb, KPROXY_A_PROXY_A_TO_B, kp, KPROXY_A_TO_B) ||
	    kproxy_put_dir(skb, KPROXY_A_PROXY_B_TO_A, kp, KPROXY_B_TO_A) ||
	    (cmd == KPROXY_CMD_PROXY_DEL_NTF &&
	     nla_put_u32(skb, KPROXY_A_PROXY_REASON, kp->reason)) ||
	    (cmd == KPROXY_CMD_PROXY_DEL_NTF &&
	     kp->reason == KPROXY_REASON_TLS_ALERT &&
	     nla_put_u8(skb, KPROXY_A_PROXY_TLS_ALERT, kp->tls_alert)) ||
	    (kp->listener_id &&
	     nla_put_u32(skb, KPROXY_A_PROXY_LISTENER_ID, kp->listener_id))) {
		genlmsg_cancel(skb, hdr);
		return -EMSGSIZE;
	}
	genlmsg_end(skb, hdr);
	return 0;
}

/*
 * A proxy's notification @cmd: multicast to the monitor group and, when
 * @portid is a creator that asked (notify_portid), unicast to its socket,
 * which the multicast skips so that it reads the message once. Both copies
 * share one message: the unicast gets its own clone, since the multicast
 * marks the skb it is given as a group's. Netlink sends from the kernel
 * never block: a full receive buffer drops the copy and the reader gets
 * ENOBUFS; a socket gone (ECONNREFUSED) is no error of ours.
 */
static void kproxy_nl_send_proxy(struct kproxy *kp, u8 cmd, u32 portid)
{
	struct sk_buff *skb, *uskb = NULL;
	bool mcast;

	mcast = genl_has_listeners(&kproxy_nl_family, kp->net,
				   KPROXY_NLGRP_MONITOR);
	if (!mcast && !portid)
		return;
	skb = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!skb)
		return;
	if (kproxy_fill(skb, kp, 0, 0, 0, cmd, NULL)) {
		nlmsg_free(skb);
		return;
	}
	if (portid)
		uskb = mcast ? skb_clone(skb, GFP_KERNEL) : skb;
	if (mcast)
		genlmsg_multicast_netns(&kproxy_nl_family, kp->net, skb, portid,
					KPROXY_NLGRP_MONITOR, GFP_KERNEL);
	if (uskb)
		genlmsg_unicast(kp->net, uskb, portid);
}

/* To the monitor group only (proxy-new's creator has its reply). */
void kproxy_nl_notify(struct kproxy *kp, u8 cmd)
{
	kproxy_nl_send_proxy(kp, cmd, 0);
}

/* proxy-del-ntf: also to the creator that asked (proxy-new's notify). */
void kproxy_nl_notify_end(struct kproxy *kp)
{
	kproxy_nl_send_proxy(kp, KPROXY_CMD_PROXY_DEL_NTF, kp->notify_portid);
}

/* proxy-new-ntf of a listener's proxy: also to the listener's creator. */
void kproxy_nl_notify_new(struct kproxy *kp)
{
	kproxy_nl_send_proxy(kp, KPROXY_CMD_PROXY_NEW_NTF, kp->notify_portid);
}

/* The proxy a request names by id, or NULL with the reason in extack.
 * Caller holds kproxy_lock.
 */
static struct kproxy *kproxy_nl_find(struct genl_info *info)
{
	struct nlattr *attr = info->attrs[KPROXY_A_PROXY_ID];
	struct kproxy *kp;

	kp = kproxy_find(genl_info_net(info), nla_get_u32(attr));
	if (!kp)
		NL_SET_ERR_MSG_ATTR(info->extack, attr,
				    "no such proxy in this network namespace");
	return kp;
}

struct kproxy_new_reply {
	struct sk_buff *skb;
	struct genl_info *info;
	int err;
	/* Programs attached before the proxy runs: references, may be NULL. */
	struct bpf_prog *prog[2];
	struct kproxy_replies *replies;
	u32 verdict_dir;		/* KPROXY_DIRECTION_* */
};

static struct bpf_prog *kproxy_nl_listener_prog(struct genl_info *info,
						int attr_type);

/* proxy-new's program attributes, checked; references in @r. */
static int kproxy_nl_new_progs(struct genl_info *info,
			       struct kproxy_new_reply *r)
{
	struct nlattr **attrs = info->attrs;
	struct bpf_prog *prog;
	int kind;

	if ((attrs[KPROXY_A_PROXY_VERDICT_REPLIES] ||
	     attrs[KPROXY_A_PROXY_VERDICT_DIRECTION]) &&
	    !attrs[KPROXY_A_PROXY_VERDICT_FD]) {
		NL_SET_ERR_MSG(info->extack,
			       "verdict-replies and verdict-direction are for a verdict: give verdict-fd too");
		return -EINVAL;
	}
	if (attrs[KPROXY_A_PROXY_VERDICT_FD] && !attrs[KPROXY_A_PROXY_PARSER_FD]) {
		NL_SET_ERR_MSG_ATTR(info->extack, attrs[KPROXY_A_PROXY_VERDICT_FD],
				    "a verdict needs a parser: give parser-fd too");
		return -EINVAL;
	}
	r->verdict_dir = KPROXY_DIRECTION_BOTH;
	if (attrs[KPROXY_A_PROXY_VERDICT_DIRECTION])
		r->verdict_dir =
			nla_get_u32(attrs[KPROXY_A_PROXY_VERDICT_DIRECTION]);
	for (kind = 0; kind < 2; kind++) {
		prog = kproxy_nl_listener_prog(info, kind == KPROXY_BPF_KIND_PARSER ?
					       KPROXY_A_PROXY_PARSER_FD :
					       KPROXY_A_PROXY_VERDICT_FD);
		if (IS_ERR(prog))
			return PTR_ERR(prog);
		r->prog[kind] = prog;
	}
	if (!r->prog[KPROXY_BPF_KIND_VERDICT])
		return 0;
	return kproxy_nl_replies(info, KPROXY_A_PROXY_VERDICT_REPLIES,
				 &r->replies);
}

static void kproxy_nl_new_put(struct kproxy_new_reply *r)
{
	int kind;

	for (kind = 0; kind < 2; kind++)
		if (r->prog[kind])
			bpf_prog_put(r->prog[kind]);
	kproxy_replies_put(r->replies);
}

/* kproxy_create()'s @published: under kproxy_lock, before anything can
 * end the new proxy, so the reply and proxy-new-ntf describe a live proxy
 * and the notification comes before any proxy-del-ntf of it. A reply
 * that cannot be built undoes the creation.
 */
static int kproxy_nl_new_published(struct kproxy *kp, void *arg)
{
	struct kproxy_new_reply *r = arg;
	int err;

	err = kproxy_bpf_attach_new(kp, r->prog, r->verdict_dir, r->replies);
	if (err)
		return err;
	if (r->info->attrs[KPROXY_A_PROXY_NOTIFY])
		kp->notify_portid = r->info->snd_portid;
	err = kproxy_fill(r->skb, kp, r->info->snd_portid, r->info->snd_seq,
			  0, KPROXY_CMD_PROXY_NEW, NULL);
	if (!err)
		kproxy_nl_notify(kp, KPROXY_CMD_PROXY_NEW_NTF);
	return err;
}

/*
 * Who may change proxies, beyond the family's GENL_UNS_ADMIN_PERM
 * (CAP_NET_ADMIN over the request's netns): CAP_NET_ADMIN in the initial
 * user namespace, or a user namespace's root when userns_admin allows.
 * proxy-new also needs it over each socket's netns (kproxy_get_socket()).
 */
static int kproxy_nl_may_mutate(struct sk_buff *skb, struct genl_info *info)
{
	if (READ_ONCE(kproxy_userns_admin) || netlink_capable(skb, CAP_NET_ADMIN))
		return 0;
	NL_SET_ERR_MSG(info->extack,
		       "kproxy needs CAP_NET_ADMIN in the initial user namespace (module parameter userns_admin lets a user namespace's root)");
	return -EPERM;
}

int kproxy_nl_proxy_new_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct net *net = genl_info_net(info);
	struct kproxy_new_reply r = { .info = info };
	int err;

	err = kproxy_nl_may_mutate(skb, info);
	if (err)
		return err;
	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_FD_A) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_FD_B))
		return -EINVAL;

	err = kproxy_nl_new_progs(info, &r);
	if (err)
		goto out_put;
	r.skb = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!r.skb) {
		err = -ENOMEM;
		goto out_put;
	}

	err = kproxy_create(net, nla_get_u32(info->attrs[KPROXY_A_PROXY_FD_A]),
			    nla_get_u32(info->attrs[KPROXY_A_PROXY_FD_B]),
			    kproxy_nl_new_published, &r, info->extack);
	/* The directions took their own references. */
	kproxy_nl_new_put(&r);
	if (err) {
		nlmsg_free(r.skb);
		return err;
	}
	return genlmsg_reply(r.skb, info);
out_put:
	kproxy_nl_new_put(&r);
	return err;
}

int kproxy_nl_proxy_del_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct kproxy *kp;
	int err;

	err = kproxy_nl_may_mutate(skb, info);
	if (err)
		return err;
	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_ID))
		return -EINVAL;

	/* A proxy found under the lock is not DEAD: the claim succeeds. */
	mutex_lock(&kproxy_lock);
	kp = kproxy_nl_find(info);
	if (kp)
		kproxy_claim(kp, KPROXY_REASON_USER);
	mutex_unlock(&kproxy_lock);

	if (!kp)
		return -ENOENT;
	kproxy_destroy(kp);
	return 0;
}

int kproxy_nl_proxy_get_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct sk_buff *reply;
	struct kproxy *kp;
	int err;

	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_ID))
		return -EINVAL;

	reply = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!reply)
		return -ENOMEM;

	mutex_lock(&kproxy_lock);
	kp = kproxy_nl_find(info);
	if (kp)
		err = kproxy_fill(reply, kp, info->snd_portid, info->snd_seq, 0,
				  KPROXY_CMD_PROXY_GET, NULL);
	else
		err = -ENOENT;
	mutex_unlock(&kproxy_lock);

	if (err) {
		nlmsg_free(reply);
		return err;
	}
	return genlmsg_reply(reply, info);
}

/* cb->args[0]: the id to resume the dump from. */
int kproxy_nl_proxy_get_dumpit(struct sk_buff *skb, struct netlink_callback *cb)
{
	struct net *net = sock_net(skb->sk);
	struct kproxy *kp;
	int id = cb->args[0];
	int err = 0;

	mutex_lock(&kproxy_lock);
	cb->seq = kproxy_pernet(net)->gen;
	for (kp = idr_get_next(&kproxy_idr, &id); kp;
	     id++, kp = idr_get_next(&kproxy_idr, &id)) {
		if (!net_eq(kp->net, net) || test_bit(KPROXY_DEAD, &kp->flags))
			continue;
		err = kproxy_fill(skb, kp, NETLINK_CB(cb->skb).portid,
				  cb->nlh->nlmsg_seq, NLM_F_MULTI,
				  KPROXY_CMD_PROXY_GET, cb);
		if (err)
			break;
	}
	mutex_unlock(&kproxy_lock);

	cb->args[0] = id;
	/* A full skb ends this part; the next call resumes at id. */
	if (err == -EMSGSIZE && skb->len)
		return skb->len;
	return err ?: skb->len;
}

/* The directions a request names: one, or both for KPROXY_DIRECTION_BOTH. */
static void kproxy_dirs(struct genl_info *info, int *first, int *last)
{
	u32 d = nla_get_u32(info->attrs[KPROXY_A_PROXY_DIRECTION]);

	*first = d == KPROXY_DIRECTION_B_TO_A ? KPROXY_B_TO_A : KPROXY_A_TO_B;
	*last = d == KPROXY_DIRECTION_A_TO_B ? KPROXY_A_TO_B : KPROXY_B_TO_A;
}

static struct bpf_prog *kproxy_get_prog(struct genl_info *info)
{
	struct nlattr *attr = info->attrs[KPROXY_A_PROXY_PROG_FD];
	struct bpf_prog *prog;

	prog = bpf_prog_get_type(nla_get_u32(attr), BPF_PROG_TYPE_SOCKET_FILTER);
	if (IS_ERR(prog)) {
		if (PTR_ERR(prog) == -EINVAL)
			NL_SET_ERR_MSG_ATTR(info->extack, attr,
					    "program is not of type socket_filter");
		else
			NL_SET_ERR_MSG_ATTR(info->extack, attr,
					    "prog-fd is not a BPF program");
	}
	return prog;
}

/*
 * The verdict-replies (attribute @type, repeated) of a request, in order,
 * copied into one object with a reference for the caller; NULL when there
 * are none. The policy has checked each one's length already.
 */
int kproxy_nl_replies(struct genl_info *info, int type,
		      struct kproxy_replies **replies)
{
	struct kproxy_replies *r;
	const struct nlattr *a;
	size_t total = 0;
	int count = 0, rem;

	*replies = NULL;
	nla_for_each_attr(a, genlmsg_data(info->genlhdr),
			  genlmsg_len(info->genlhdr), rem) {
		if (nla_type(a) != type)
			continue;
		if (count == KPROXY_REPLIES_MAX) {
			NL_SET_ERR_MSG_ATTR(info->extack, a,
					    "at most 16 verdict-replies");
			return -E2BIG;
		}
		count++;
		total += nla_len(a);
	}
	if (!count)
		return 0;
	r = kzalloc(struct_size(r, data, total), GFP_KERNEL_ACCOUNT);
	if (!r)
		return -ENOMEM;
	refcount_set(&r->ref, 1);
	total = 0;
	nla_for_each_attr(a, genlmsg_data(info->genlhdr),
			  genlmsg_len(info->genlhdr), rem) {
		if (nla_type(a) != type)
			continue;
		r->off[r->count] = total;
		r->len[r->count] = nla_len(a);
		memcpy(r->data + total, nla_data(a), nla_len(a));
		total += nla_len(a);
		r->count++;
	}
	*replies = r;
	return 0;
}

int kproxy_nl_bpf_attach_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct bpf_prog *prog, *old[2] = {};
	struct kproxy_replies *replies;
	struct kproxy *kp;
	int kind, first, last, d, err;

	err = kproxy_nl_may_mutate(skb, info);
	if (err)
		return err;
	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_ID) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_PROG_FD) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_KIND) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_DIRECTION))
		return -EINVAL;
	kind = nla_get_u32(info->attrs[KPROXY_A_PROXY_KIND]);
	kproxy_dirs(info, &first, &last);
	if (kind != KPROXY_BPF_KIND_VERDICT &&
	    info->attrs[KPROXY_A_PROXY_VERDICT_REPLIES]) {
		NL_SET_ERR_MSG_ATTR(info->extack,
				    info->attrs[KPROXY_A_PROXY_VERDICT_REPLIES],
				    "verdict-replies are for a verdict");
		return -EINVAL;
	}
	err = kproxy_nl_replies(info, KPROXY_A_PROXY_VERDICT_REPLIES, &replies);
	if (err)
		return err;

	prog = kproxy_get_prog(info);
	if (IS_ERR(prog)) {
		kproxy_replies_put(replies);
		return PTR_ERR(prog);
	}
	/* One reference per direction it is attached to. */
	if (first != last)
		bpf_prog_inc(prog);

	mutex_lock(&kproxy_lock);
	kp = kproxy_nl_find(info);
	if (!kp) {
		err = -ENOENT;
		goto out_unlock;
	}
	if (kind == KPROXY_BPF_KIND_VERDICT) {
		for (d = first; d <= last; d++) {
			if (!kp->dir[d].bpf.want[KPROXY_BPF_KIND_PARSER]) {
				NL_SET_ERR_MSG(info->extack,
					       "a verdict needs a parser on its direction: attach the parser first");
				err = -EINVAL;
				goto out_unlock;
			}
		}
	}
	for (d = first; d <= last; d++) {
		err = kproxy_bpf_prepare(&kp->dir[d], kind);
		if (err)
			goto out_unlock;
	}
	for (d = first; d <= last; d++)
		old[d] = kind == KPROXY_BPF_KIND_VERDICT ?
			 kproxy_bpf_want_verdict(&kp->dir[d], prog, replies) :
			 kproxy_bpf_want(&kp->dir[d], kind, prog);
	for (d = first; d <= last; d++)
		kproxy_dir_kick(&kp->dir[d]);
	prog = NULL;
out_unlock:
	mutex_unlock(&kproxy_lock);

	kproxy_replies_put(replies);

	for (d = 0; d < 2; d++)
		if (old[d])
			bpf_prog_put(old[d]);
	if (prog) {
		bpf_prog_put(prog);
		if (first != last)
			bpf_prog_put(prog);
	}
	return err;
}

int kproxy_nl_bpf_detach_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct bpf_prog *old[2] = {};
	struct kproxy *kp;
	int kind, first, last, d, err;

	err = kproxy_nl_may_mutate(skb, info);
	if (err)
		return err;
	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_ID) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_KIND) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_PROXY_DIRECTION))
		return -EINVAL;
	kind = nla_get_u32(info->attrs[KPROXY_A_PROXY_KIND]);
	kproxy_dirs(info, &first, &last);

	mutex_lock(&kproxy_lock);
	kp = kproxy_nl_find(info);
	if (!kp) {
		err = -ENOENT;
		goto out_unlock;
	}
	for (d = first; d <= last; d++) {
		struct kproxy_bpf *bpf = &kp->dir[d].bpf;

		if (!bpf->want[kind]) {
			NL_SET_ERR_MSG(info->extack,
				       "no program of this kind is attached on that direction");
			err = -ENOENT;
			goto out_unlock;
		}
		if (kind == KPROXY_BPF_KIND_PARSER &&
		    bpf->want[KPROXY_BPF_KIND_VERDICT]) {
			NL_SET_ERR_MSG(info->extack,
				       "a verdict is attached on that direction: detach it first");
			err = -EBUSY;
			goto out_unlock;
		}
	}
	for (d = first; d <= last; d++) {
		old[d] = kproxy_bpf_want(&kp->dir[d], kind, NULL);
		kproxy_dir_kick(&kp->dir[d]);
	}
out_unlock:
	mutex_unlock(&kproxy_lock);

	for (d = 0; d < 2; d++)
		if (old[d])
			bpf_prog_put(old[d]);
	return err;
}

/* ---- listeners ------------------------------------------------------------ */

static int kproxy_put_endpoint(struct sk_buff *skb, int attr,
			       const struct sockaddr_storage *ss)
{
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
	const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
	struct nlattr *nest;
	int err;

	nest = nla_nest_start(skb, attr);
	if (!nest)
		return -EMSGSIZE;
	if (ss->ss_family == AF_INET6)
		err = nla_put_u16(skb, KPROXY_A_ENDPOINT_FAMILY, AF_INET6) ||
		      nla_put_in6_addr(skb, KPROXY_A_ENDPOINT_ADDR,
				       &sin6->sin6_addr) ||
		      nla_put_u16(skb, KPROXY_A_ENDPOINT_PORT,
				  ntohs(sin6->sin6_port));
	else
		err = nla_put_u16(skb, KPROXY_A_ENDPOINT_FAMILY, AF_INET) ||
		      nla_put_in_addr(skb, KPROXY_A_ENDPOINT_ADDR,
				      sin->sin_addr.s_addr) ||
		      nla_put_u16(skb, KPROXY_A_ENDPOINT_PORT,
				  ntohs(sin->sin_port));
	if (err) {
		nla_nest_cancel(skb, nest);
		return -EMSGSIZE;
	}
	nla_nest_end(skb, nest);
	return 0;
}

static int kproxy_put_counter(struct sk_buff *skb, int attr, u64 value)
{
	return nla_put_u64_64bit(skb, attr, value, KPROXY_A_LISTENER_PAD);
}

static int kproxy_fill_listener(struct sk_buff *skb,
				const struct kproxy_listener_info *info,
				u32 portid, u32 seq, int flags, u8 cmd,
				struct netlink_callback *cb)
{
	const u64 *c = info->counters;
	void *hdr;

	hdr = genlmsg_put(skb, portid, seq, &kproxy_nl_family, flags, cmd);
	if (!hdr)
		return -EMSGSIZE;
	if (cb)
		genl_dump_check_consistent(cb, hdr);

	if (nla_put_u32(skb, KPROXY_A_LISTENER_ID, info->id) ||
	    kproxy_put_endpoint(skb, KPROXY_A_LISTENER_LISTEN, &info->listen) ||
	    kproxy_put_endpoint(skb, KPROXY_A_LISTENER_TARGET, &info->target) ||
	    (info->source.ss_family &&
	     kproxy_put_endpoint(skb, KPROXY_A_LISTENER_SOURCE, &info->source)) ||
	    nla_put_u32(skb, KPROXY_A_LISTENER_MAX_PROXIES, info->max_proxies) ||
	    nla_put_u32(skb, KPROXY_A_LISTENER_CONNECT_TIMEOUT_MS,
			info->timeout_ms) ||
	    (info->prog_id[KPROXY_BPF_KIND_PARSER] &&
	     nla_put_u32(skb, KPROXY_A_LISTENER_PARSER_ID,
			 info->prog_id[KPROXY_BPF_KIND_PARSER])) ||
	    (info->prog_id[KPROXY_BPF_KIND_VERDICT] &&
	     (nla_put_u32(skb, KPROXY_A_LISTENER_VERDICT_ID,
			  info->prog_id[KPROXY_BPF_KIND_VERDICT]) ||
	      nla_put_u32(skb, KPROXY_A_LISTENER_VERDICT_DIRECTION,
			  info->verdict_dir))) ||
	    nla_put_u64_64bit(skb, KPROXY_A_LISTENER_CREATE_TIME,
			      info->created_ns, KPROXY_A_LISTENER_PAD) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_ACCEPTED,
			       c[KPROXY_LC_ACCEPTED]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_CREATED,
			       c[KPROXY_LC_CREATED]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_FAILED_REFUSED,
			       c[KPROXY_LC_FAILED_REFUSED]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_FAILED_UNREACHABLE,
			       c[KPROXY_LC_FAILED_UNREACHABLE]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_FAILED_TIMEOUT,
			       c[KPROXY_LC_FAILED_TIMEOUT]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_FAILED_OTHER,
			       c[KPROXY_LC_FAILED_OTHER]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_REFUSED_LIMIT,
			       c[KPROXY_LC_REFUSED_LIMIT]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_ENDED,
			       c[KPROXY_LC_ENDED]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_ENDED_BYTES_A_TO_B,
			       c[KPROXY_LC_ENDED_BYTES_A_TO_B]) ||
	    kproxy_put_counter(skb, KPROXY_A_LISTENER_ENDED_BYTES_B_TO_A,
			       c[KPROXY_LC_ENDED_BYTES_B_TO_A]) ||
	    nla_put_u32(skb, KPROXY_A_LISTENER_ACTIVE, info->active) ||
	    nla_put_u32(skb, KPROXY_A_LISTENER_PENDING, info->pending)) {
		genlmsg_cancel(skb, hdr);
		return -EMSGSIZE;
	}
	genlmsg_end(skb, hdr);
	return 0;
}

void kproxy_nl_notify_listener(struct net *net,
			       const struct kproxy_listener_info *info, u8 cmd)
{
	struct sk_buff *skb;

	if (!genl_has_listeners(&kproxy_nl_family, net, KPROXY_NLGRP_MONITOR))
		return;
	skb = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!skb)
		return;
	if (kproxy_fill_listener(skb, info, 0, 0, 0, cmd, NULL)) {
		nlmsg_free(skb);
		return;
	}
	genlmsg_multicast_netns(&kproxy_nl_family, net, skb, 0,
				KPROXY_NLGRP_MONITOR, GFP_KERNEL);
}

/* An endpoint nest into a sockaddr; @target: the port must not be 0. */
static int kproxy_nl_endpoint(struct nlattr *nest, bool target,
			      struct sockaddr_storage *ss,
			      struct netlink_ext_ack *extack)
{
	struct nlattr *tb[KPROXY_A_ENDPOINT_MAX + 1];
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct nlattr *addr;
	u16 port = 0;
	int err;

	/* The generated policy has validated the nest already. */
	err = nla_parse_nested(tb, KPROXY_A_ENDPOINT_MAX, nest, NULL, extack);
	if (err)
		return err;
	addr = tb[KPROXY_A_ENDPOINT_ADDR];
	if (!tb[KPROXY_A_ENDPOINT_FAMILY] || !addr) {
		NL_SET_ERR_MSG_ATTR(extack, nest,
				    "an endpoint needs a family and an addr");
		return -EINVAL;
	}
	if (tb[KPROXY_A_ENDPOINT_PORT])
		port = nla_get_u16(tb[KPROXY_A_ENDPOINT_PORT]);
	if (target && !port) {
		NL_SET_ERR_MSG_ATTR(extack, nest, "the target needs a port");
		return -EINVAL;
	}
	memset(ss, 0, sizeof(*ss));
	switch (nla_get_u16(tb[KPROXY_A_ENDPOINT_FAMILY])) {
	case AF_INET:
		if (nla_len(addr) != sizeof(struct in_addr)) {
			NL_SET_ERR_MSG_ATTR(extack, addr,
					    "an AF_INET addr is 4 bytes");
			return -EINVAL;
		}
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = nla_get_in_addr(addr);
		sin->sin_port = htons(port);
		return 0;
	case AF_INET6:
		if (!IS_ENABLED(CONFIG_IPV6))
			break;
		if (nla_len(addr) != sizeof(struct in6_addr)) {
			NL_SET_ERR_MSG_ATTR(extack, addr,
					    "an AF_INET6 addr is 16 bytes");
			return -EINVAL;
		}
		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = nla_get_in6_addr(addr);
		sin6->sin6_port = htons(port);
		return 0;
	}
	NL_SET_ERR_MSG_ATTR(extack, tb[KPROXY_A_ENDPOINT_FAMILY],
			    "family must be AF_INET (2) or AF_INET6 (10)");
	return -EAFNOSUPPORT;
}

/* The listening socket by fd: a TCP socket of a netns the caller administers. */
static struct socket *kproxy_nl_listen_socket(struct genl_info *info)
{
	struct nlattr *attr = info->attrs[KPROXY_A_LISTENER_FD];
	struct socket *sock;
	struct sock *sk;
	int err;

	sock = sockfd_lookup(nla_get_u32(attr), &err);
	if (!sock) {
		if (err == -ENOTSOCK)
			NL_SET_ERR_MSG_ATTR(info->extack, attr,
					    "fd is not a socket");
		else
			NL_SET_ERR_MSG_ATTR(info->extack, attr,
					    "fd is not an open file descriptor");
		return ERR_PTR(err);
	}
	sk = sock->sk;
	if (!sk || sk->sk_type != SOCK_STREAM ||
	    sk->sk_protocol != IPPROTO_TCP ||
	    (sk->sk_family != AF_INET && sk->sk_family != AF_INET6)) {
		NL_SET_ERR_MSG_ATTR(info->extack, attr, "fd is not a TCP socket");
		sockfd_put(sock);
		return ERR_PTR(-EPROTONOSUPPORT);
	}
	if (!ns_capable(sock_net(sk)->user_ns, CAP_NET_ADMIN)) {
		NL_SET_ERR_MSG_ATTR(info->extack, attr,
				    "fd belongs to a network namespace the caller does not administer (CAP_NET_ADMIN)");
		sockfd_put(sock);
		return ERR_PTR(-EPERM);
	}
	return sock;
}

static struct bpf_prog *kproxy_nl_listener_prog(struct genl_info *info,
						int attr_type)
{
	struct nlattr *attr = info->attrs[attr_type];
	struct bpf_prog *prog;

	if (!attr)
		return NULL;
	prog = bpf_prog_get_type(nla_get_u32(attr), BPF_PROG_TYPE_SOCKET_FILTER);
	if (IS_ERR(prog)) {
		if (PTR_ERR(prog) == -EINVAL)
			NL_SET_ERR_MSG_ATTR(info->extack, attr,
					    "program is not of type socket_filter");
		else
			NL_SET_ERR_MSG_ATTR(info->extack, attr,
					    "not a BPF program");
	}
	return prog;
}

/* Everything listener-new asks for, checked, before anything is hooked. */
static int kproxy_nl_listener_args(struct genl_info *info,
				   struct kproxy_listener_new *args)
{
	struct nlattr **attrs = info->attrs;
	struct bpf_prog *prog;
	int err, kind;

	err = kproxy_nl_endpoint(attrs[KPROXY_A_LISTENER_TARGET], true,
				 &args->target, info->extack);
	if (err)
		return err;
	if (attrs[KPROXY_A_LISTENER_SOURCE]) {
		err = kproxy_nl_endpoint(attrs[KPROXY_A_LISTENER_SOURCE], false,
					 &args->source, info->extack);
		if (err)
			return err;
		if (args->source.ss_family != args->target.ss_family) {
			NL_SET_ERR_MSG_ATTR(info->extack,
					    attrs[KPROXY_A_LISTENER_SOURCE],
					    "source and target must be of the same family");
			return -EINVAL;
		}
	}
	if (attrs[KPROXY_A_LISTENER_NOTIFY])
		args->notify_portid = info->snd_portid;
	if (attrs[KPROXY_A_LISTENER_MAX_PROXIES])
		args->max_proxies = nla_get_u32(attrs[KPROXY_A_LISTENER_MAX_PROXIES]);
	args->timeout_ms = 10000;
	if (attrs[KPROXY_A_LISTENER_CONNECT_TIMEOUT_MS])
		args->timeout_ms =
			nla_get_u32(attrs[KPROXY_A_LISTENER_CONNECT_TIMEOUT_MS]);
	if (attrs[KPROXY_A_LISTENER_VERDICT_REPLIES] &&
	    !attrs[KPROXY_A_LISTENER_VERDICT_FD]) {
		NL_SET_ERR_MSG_ATTR(info->extack,
				    attrs[KPROXY_A_LISTENER_VERDICT_REPLIES],
				    "verdict-replies are for a verdict: give verdict-fd too");
		return -EINVAL;
	}
	err = kproxy_nl_replies(info, KPROXY_A_LISTENER_VERDICT_REPLIES,
				&args->replies);
	if (err)
		return err;
	args->verdict_dir = KPROXY_DIRECTION_BOTH;
	if (attrs[KPROXY_A_LISTENER_VERDICT_DIRECTION]) {
		if (!attrs[KPROXY_A_LISTENER_VERDICT_FD]) {
			NL_SET_ERR_MSG_ATTR(info->extack,
					    attrs[KPROXY_A_LISTENER_VERDICT_DIRECTION],
					    "verdict-direction is for a verdict: give verdict-fd too");
			return -EINVAL;
		}
		args->verdict_dir =
			nla_get_u32(attrs[KPROXY_A_LISTENER_VERDICT_DIRECTION]);
	}
	if (attrs[KPROXY_A_LISTENER_VERDICT_FD] &&
	    !attrs[KPROXY_A_LISTENER_PARSER_FD]) {
		NL_SET_ERR_MSG_ATTR(info->extack, attrs[KPROXY_A_LISTENER_VERDICT_FD],
				    "a verdict needs a parser: give parser-fd too");
		return -EINVAL;
	}
	for (kind = 0; kind < 2; kind++) {
		prog = kproxy_nl_listener_prog(info, kind == KPROXY_BPF_KIND_PARSER ?
					       KPROXY_A_LISTENER_PARSER_FD :
					       KPROXY_A_LISTENER_VERDICT_FD);
		if (IS_ERR(prog))
			return PTR_ERR(prog);
		args->prog[kind] = prog;
	}
	args->sock = kproxy_nl_listen_socket(info);
	if (IS_ERR(args->sock)) {
		err = PTR_ERR(args->sock);
		args->sock = NULL;
		return err;
	}
	return 0;
}

struct kproxy_listener_reply {
	struct sk_buff *skb;
	struct genl_info *info;
};

/* kproxy_listener_create()'s @published: reply and listener-new-ntf. */
static int kproxy_nl_listener_published(struct kproxy_listener *l, void *arg)
{
	struct kproxy_listener_reply *r = arg;
	struct kproxy_listener_info li;
	int err;

	kproxy_listener_info(l, &li);
	err = kproxy_fill_listener(r->skb, &li, r->info->snd_portid,
				   r->info->snd_seq, 0,
				   KPROXY_CMD_LISTENER_NEW, NULL);
	if (!err)
		kproxy_nl_notify_listener(genl_info_net(r->info), &li,
					  KPROXY_CMD_LISTENER_NEW_NTF);
	return err;
}

int kproxy_nl_listener_new_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct kproxy_listener_reply r = { .info = info };
	struct kproxy_listener_new args = {};
	int err, kind;

	err = kproxy_nl_may_mutate(skb, info);
	if (err)
		return err;
	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_LISTENER_FD) ||
	    GENL_REQ_ATTR_CHECK(info, KPROXY_A_LISTENER_TARGET))
		return -EINVAL;

	err = kproxy_nl_listener_args(info, &args);
	if (err)
		goto out_put;
	r.skb = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!r.skb) {
		err = -ENOMEM;
		goto out_put;
	}
	err = kproxy_listener_create(genl_info_net(info), &args,
				     kproxy_nl_listener_published, &r,
				     info->extack);
	if (!err) {
		/* The listener took its own reference, if it keeps them. */
		kproxy_replies_put(args.replies);
		return genlmsg_reply(r.skb, info);
	}
	nlmsg_free(r.skb);
out_put:
	if (args.sock)
		sockfd_put(args.sock);
	for (kind = 0; kind < 2; kind++)
		if (!IS_ERR_OR_NULL(args.prog[kind]))
			bpf_prog_put(args.prog[kind]);
	kproxy_replies_put(args.replies);
	return err;
}

int kproxy_nl_listener_del_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct nlattr *attr = info->attrs[KPROXY_A_LISTENER_ID];
	int err;

	err = kproxy_nl_may_mutate(skb, info);
	if (err)
		return err;
	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_LISTENER_ID))
		return -EINVAL;
	err = kproxy_listener_delete(genl_info_net(info), nla_get_u32(attr),
				     info->attrs[KPROXY_A_LISTENER_END_PROXIES]);
	if (err == -ENOENT)
		NL_SET_ERR_MSG_ATTR(info->extack, attr,
				    "no such listener in this network namespace");
	return err;
}

int kproxy_nl_listener_get_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct nlattr *attr = info->attrs[KPROXY_A_LISTENER_ID];
	struct kproxy_listener_info li;
	struct kproxy_listener *l;
	struct sk_buff *reply;
	int err;

	if (GENL_REQ_ATTR_CHECK(info, KPROXY_A_LISTENER_ID))
		return -EINVAL;

	mutex_lock(&kproxy_lock);
	l = kproxy_listener_find(genl_info_net(info), nla_get_u32(attr));
	if (l)
		kproxy_listener_info(l, &li);
	mutex_unlock(&kproxy_lock);
	if (!l) {
		NL_SET_ERR_MSG_ATTR(info->extack, attr,
				    "no such listener in this network namespace");
		return -ENOENT;
	}

	reply = genlmsg_new(NLMSG_GOODSIZE, GFP_KERNEL);
	if (!reply)
		return -ENOMEM;
	err = kproxy_fill_listener(reply, &li, info->snd_portid, info->snd_seq,
				   0, KPROXY_CMD_LISTENER_GET, NULL);
	if (err) {
		nlmsg_free(reply);
		return err;
	}
	return genlmsg_reply(reply, info);
}

/* cb->args[0]: the id to resume the dump from. */
int kproxy_nl_listener_get_dumpit(struct sk_buff *skb,
				  struct netlink_callback *cb)
{
	struct net *net = sock_net(skb->sk);
	struct kproxy_listener_info li;
	struct kproxy_listener *l;
	int id = cb->args[0];
	int err = 0;

	mutex_lock(&kproxy_lock);
	cb->seq = kproxy_pernet(net)->gen;
	for (l = idr_get_next(&kproxy_listener_idr, &id); l;
	     id++, l = idr_get_next(&kproxy_listener_idr, &id)) {
		if (!kproxy_listener_find(net, id))
			continue;
		kproxy_listener_info(l, &li);
		err = kproxy_fill_listener(skb, &li, NETLINK_CB(cb->skb).portid,
					   cb->nlh->nlmsg_seq, NLM_F_MULTI,
					   KPROXY_CMD_LISTENER_GET, cb);
		if (err)
			break;
	}
	mutex_unlock(&kproxy_lock);

	cb->args[0] = id;
	if (err == -EMSGSIZE && skb->len)
		return skb->len;
	return err ?: skb->len;
}

int kproxy_nl_init(void)
{
	return genl_register_family(&kproxy_nl_family);
}

void kproxy_nl_exit(void)
{
	genl_unregister_family(&kproxy_nl_family);
}
