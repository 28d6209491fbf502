/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Where the kernels kproxy builds for differ, mapped once: the logic calls
 * these and never tests a kernel itself. Each KPROXY_HAVE_* comes from a
 * test of the kernel's own headers in Kbuild (so a backport counts); the
 * comment names the release that brought the feature upstream. Tested on
 * Debian's 6.1 and 6.12 and on 7.2.
 */
#ifndef _KPROXY_COMPAT_H
#define _KPROXY_COMPAT_H

#include <linux/bvec.h>
#include <linux/net.h>
#include <linux/skbuff.h>
#include <linux/socket.h>
#include <linux/uio.h>
#include <net/net_namespace.h>
#include <net/sock.h>

/*
 * WQ_PERCPU (6.17, in Debian's 6.12 too) names a per-CPU queue, until then
 * the default: 7.x warns at alloc_workqueue() when neither it nor
 * WQ_UNBOUND is given, as queues are to become unbound by default.
 */
#ifndef KPROXY_HAVE_WQ_PERCPU
#define WQ_PERCPU 0
#endif

/*
 * Send @len bytes of @skb from @offset on the locked TCP socket @sk
 * without blocking; @more says that more data follows at once.
 *
 * skb_send_sock_locked_with_flags() (6.16) takes message flags: the
 * send carries MSG_MORE when more follows, so TCP packs the small skbs of
 * one drain into full segments instead of pushing each, and MSG_NOSIGNAL,
 * so a send on a shut socket can never raise SIGPIPE in whichever task
 * runs it. Before, each call pushes what it sent, and the caller's own
 * check that the socket can take data (kproxy_can_send()) is what keeps
 * SIGPIPE away.
 */
static inline int kproxy_send_skb(struct sock *sk, struct sk_buff *skb,
				  int offset, int len, bool more)
{
#ifdef KPROXY_HAVE_SEND_FLAGS
	return skb_send_sock_locked_with_flags(sk, skb, offset, len,
					       MSG_NOSIGNAL |
					       (more ? MSG_MORE : 0));
#else
	return skb_send_sock_locked(sk, skb, offset, len);
#endif
}

/*
 * Send @len bytes of @page from @offset through @sock's own sendmsg (a
 * kTLS socket's: the TLS layer takes the socket lock itself), without
 * copying where the kernel can. Until 6.5 that was sendpage; since, it is
 * sendmsg with MSG_SPLICE_PAGES, and sendpage is gone.
 */
static inline int kproxy_sendmsg_page(struct socket *sock, struct page *page,
				      int offset, size_t len, int flags)
{
#ifdef KPROXY_HAVE_SENDPAGE
	return kernel_sendpage(sock, page, offset, len, flags);
#else
	struct msghdr msg = { .msg_flags = flags | MSG_SPLICE_PAGES };
	struct bio_vec bvec;

	bvec_set_page(&bvec, page, len, offset);
	iov_iter_bvec(&msg.msg_iter, ITER_SOURCE, &bvec, 1, len);
	return sock_sendmsg(sock, &msg);
#endif
}

/*
 * A listener's upstream socket is a kernel socket (sock_create_kern()),
 * which holds no reference on its netns. Once joined and later released
 * it may live on in TCP (FIN_WAIT, LAST_ACK) with timers that use the
 * netns, so when it is joined it is made to hold one as a user's socket
 * does (listener.c); false when the netns is already going away (its
 * refcount is 0 and may not be raised). 6.1 does it by
 * hand as its MPTCP does; later kernels track kernel sockets apart and
 * have sk_net_refcnt_upgrade() (6.14, backported to 6.12.y).
 */
static inline bool kproxy_sock_hold_net(struct sock *sk)
{
	struct net *net = sock_net(sk);

	if (!maybe_get_net(net))
		return false;
#ifdef KPROXY_HAVE_NET_REFCNT_UPGRADE
	sk_net_refcnt_upgrade(sk);
	put_net(net);
#else
	/* The reference from maybe_get_net() becomes the socket's. */
	sk->sk_net_refcnt = 1;
	netns_tracker_alloc(net, &sk->ns_tracker, GFP_KERNEL);
	sock_inuse_add(net, 1);
#endif
	return true;
}

/* kernel_connect() and kernel_bind() take a sockaddr_unsized since 6.19. */
#ifdef KPROXY_HAVE_SOCKADDR_UNSIZED
#define KPROXY_SOCKADDR(addr)	((struct sockaddr_unsized *)(addr))
#else
#define KPROXY_SOCKADDR(addr)	((struct sockaddr *)(addr))
#endif

#endif /* _KPROXY_COMPAT_H */
