// SPDX-License-Identifier: GPL-2.0
/*
 * Taking a socket over and handing it back.
 *
 * A joined socket is ours alone: besides its callbacks and sk_user_data,
 * the proxy claims its ULP slot (icsk_ulp_ops), so no one holding the fd
 * can install kTLS (or any ULP) later, and sockmap refuses it too. kTLS
 * would otherwise chain onto our callbacks and our sends, which go
 * through TCP's sendmsg_locked, would put plaintext on the wire. A socket
 * that is kTLS already, with both keys, joins as a kTLS side (tls.c): its
 * slot stays the TLS layer's, which refuses any other ULP, and the
 * direction's work reads and sends it through the TLS layer.
 *
 * Joining also sets what the data path needs of the socket's options,
 * and hand-back puts the owner's values back:
 * - SO_RCVLOWAT is 1, since TCP calls data_ready only at the low-water
 *   mark and a small message would wait for bytes that never come;
 * - urgent data is in line (SO_OOBINLINE), since tcp_read_sock() stops
 *   at the urgent mark for good: the urgent byte is forwarded as an
 *   ordinary byte of the stream.
 * Locking rules are in kproxy.h.
 */
#include <net/inet_connection_sock.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "kproxy.h"

/* Never registered: it only fills the slot while the socket is joined. */
static struct tcp_ulp_ops kproxy_ulp = {
	.name = "kproxy",
};

/* Look the descriptor up and check it is a TCP socket; keeps its file ref. */
struct socket *kproxy_get_socket(int fd, int idx,
				 struct netlink_ext_ack *extack)
{
	struct socket *sock;
	struct sock *sk;
	int err;

	sock = sockfd_lookup(fd, &err);
	if (!sock) {
		if (err == -ENOTSOCK)
			KPROXY_FD_ERR(extack, idx,
				      "fd-a is not a socket",
				      "fd-b is not a socket");
		else
			KPROXY_FD_ERR(extack, idx,
				      "fd-a is not an open file descriptor",
				      "fd-b is not an open file descriptor");
		return ERR_PTR(err);
	}

	sk = sock->sk;
	if (!sk || sk->sk_type != SOCK_STREAM ||
	    sk->sk_protocol != IPPROTO_TCP ||
	    (sk->sk_family != AF_INET && sk->sk_family != AF_INET6)) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is not a TCP socket",
			      "fd-b is not a TCP socket");
		sockfd_put(sock);
		return ERR_PTR(-EPROTONOSUPPORT);
	}
	/* Nobody joins sockets of a namespace they do not administer. */
	if (!ns_capable(sock_net(sk)->user_ns, CAP_NET_ADMIN)) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a belongs to a network namespace the caller does not administer (CAP_NET_ADMIN)",
			      "fd-b belongs to a network namespace the caller does not administer (CAP_NET_ADMIN)");
		sockfd_put(sock);
		return ERR_PTR(-EPERM);
	}
	return sock;
}

/*
 * Take the socket over: check under its lock that it is connected and
 * that no one else (a proxy, sockmap, KCM, a ULP other than kTLS with both
 * keys) owns it, then install our callbacks and claim its ULP slot.
 */
int kproxy_hook(struct kproxy *kp, int idx, struct netlink_ext_ack *extack)
{
	struct sock *sk = kp->sock[idx]->sk;
	struct kproxy_saved_cb *saved = &kp->saved[idx];
	int err = 0, tls;

	lock_sock(sk);
	write_lock_bh(&sk->sk_callback_lock);

	if (sk->sk_state == TCP_LISTEN) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is a listening socket",
			      "fd-b is a listening socket");
		err = -ENOTCONN;
	} else if (sk->sk_state != TCP_ESTABLISHED &&
		   sk->sk_state != TCP_CLOSE_WAIT) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is not connected",
			      "fd-b is not connected");
		err = -ENOTCONN;
	} else if (inet_csk(sk)->icsk_ulp_ops == &kproxy_ulp ||
		   sk->sk_data_ready == kproxy_data_ready) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is already in a proxy",
			      "fd-b is already in a proxy");
		err = -EBUSY;
	} else if (sk->sk_user_data) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is owned by another kernel user (sockmap or KCM)",
			      "fd-b is owned by another kernel user (sockmap or KCM)");
		err = -EBUSY;
	} else {
		tls = kproxy_tls_check(sk, idx, extack);
		if (tls < 0) {
			err = tls;
			goto out;
		}
		saved->data_ready = sk->sk_data_ready;
		saved->write_space = sk->sk_write_space;
		saved->state_change = sk->sk_state_change;
		saved->rcvlowat = READ_ONCE(sk->sk_rcvlowat);
		saved->urginline = sock_flag(sk, SOCK_URGINLINE);
		sk->sk_user_data = kp;
		WRITE_ONCE(sk->sk_data_ready, kproxy_data_ready);
		WRITE_ONCE(sk->sk_write_space, kproxy_write_space);
		WRITE_ONCE(sk->sk_state_change, kproxy_state_change);
		WRITE_ONCE(sk->sk_rcvlowat, 1);
		sock_set_flag(sk, SOCK_URGINLINE);
		/* A kTLS socket's slot is the TLS layer's, which keeps others out. */
		if (!tls)
			inet_csk(sk)->icsk_ulp_ops = &kproxy_ulp;
		kp->dir[idx].tls_src = tls;
		kp->dir[!idx].tls_dst = tls;
	}

out:
	write_unlock_bh(&sk->sk_callback_lock);
	release_sock(sk);
	return err;
}

/*
 * After this returns no callback of the socket can reach the proxy. The
 * socket's options are the owner's again; a low-water mark the owner set
 * while joined (setsockopt on its fd) is kept.
 */
void kproxy_unhook(struct kproxy *kp, int idx)
{
	struct sock *sk = kp->sock[idx]->sk;
	struct kproxy_saved_cb *saved = &kp->saved[idx];

	lock_sock(sk);
	write_lock_bh(&sk->sk_callback_lock);
	/* Put back callbacks only where they are still ours. */
	if (sk->sk_data_ready == kproxy_data_ready)
		WRITE_ONCE(sk->sk_data_ready, saved->data_ready);
	if (sk->sk_write_space == kproxy_write_space)
		WRITE_ONCE(sk->sk_write_space, saved->write_space);
	if (sk->sk_state_change == kproxy_state_change)
		WRITE_ONCE(sk->sk_state_change, saved->state_change);
	if (sk->sk_user_data == kp)
		sk->sk_user_data = NULL;
	if (inet_csk(sk)->icsk_ulp_ops == &kproxy_ulp)
		inet_csk(sk)->icsk_ulp_ops = NULL;
	if (READ_ONCE(sk->sk_rcvlowat) == 1)
		WRITE_ONCE(sk->sk_rcvlowat, saved->rcvlowat);
	if (!saved->urginline)
		sock_reset_flag(sk, SOCK_URGINLINE);
	write_unlock_bh(&sk->sk_callback_lock);
	release_sock(sk);
}

/*
 * After unhooking, when the proxy's own sends are done: the owner's
 * callbacks never saw what arrived while the socket was joined, so an
 * edge-triggered poller would wait for bytes already queued, or for
 * room already there. Wake it as TCP would have.
 */
void kproxy_hand_back(struct kproxy *kp, int idx)
{
	struct sock *sk = kp->sock[idx]->sk;

	if (!skb_queue_empty_lockless(&sk->sk_receive_queue) ||
	    (READ_ONCE(sk->sk_shutdown) & RCV_SHUTDOWN))
		sk->sk_data_ready(sk);
	if (sk_stream_is_writeable(sk))
		sk->sk_write_space(sk);
}
