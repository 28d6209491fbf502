// SPDX-License-Identifier: GPL-2.0
/*
 * kTLS sides. A joined socket may carry the tls ULP, its keys for both
 * directions installed by its owner after a handshake in userspace. The
 * proxy then reads plaintext from it and writes plaintext into it, and the
 * TLS layer protects the records: never TCP's own read_sock (it would read
 * ciphertext) nor TCP's sendmsg_locked (it would put plaintext on the wire).
 *
 * Reading. Where the TLS layer has its own read_sock (tls_sw_read_sock,
 * 6.6 on) it runs under the socket lock like TCP's, with the same actor,
 * and stops with -EINVAL at a control record. Elsewhere (6.1) the data is
 * copied with recvmsg: peeked into a buffer, given to the actor, and only
 * what the actor took is consumed, so nothing is lost when the queue is
 * full. Both give the parser and verdict programs plaintext.
 *
 * Control records are read whole with recvmsg and a cmsg buffer, without
 * the socket lock (the TLS layer takes it):
 * - close_notify ends the stream like a FIN: the other side gets a FIN
 *   (and a close_notify first when it is kTLS too);
 * - a fatal alert ends the proxy (reason tls-alert, its description in
 *   the notification);
 * - NewSessionTicket, and a TLS 1.2 HelloRequest (which a client may
 *   ignore), are consumed and counted;
 * - a KeyUpdate ends the proxy (reason tls-rekey): the next keys derive
 *   from secrets only userspace holds;
 * - anything else ends it with reason error.
 * A record that fails authentication makes the TLS layer fail the socket
 * (EBADMSG), which ends the proxy with reason error: nothing of it passes.
 *
 * Sending goes through the socket's sendmsg, the TLS layer's, which takes
 * the socket lock itself: the direction calls it without the lock.
 * Locking rules are in kproxy.h.
 */
#include <linux/bvec.h>
#include <linux/net.h>
#include <linux/uio.h>
#include <net/inet_connection_sock.h>
#include <net/sock.h>
#include <net/tcp.h>
#include <net/tls.h>

#include "compat.h"
#include "kproxy.h"

/* Record content types, RFC 8446 5.1 (the kernel keeps its own private). */
#define KPROXY_TLS_RECORD_ALERT		21
#define KPROXY_TLS_RECORD_HANDSHAKE	22
#define KPROXY_TLS_RECORD_DATA		23

/* Alert levels and descriptions, RFC 8446 6. */
#define KPROXY_TLS_WARNING		1
#define KPROXY_TLS_CLOSE_NOTIFY		0
#define KPROXY_TLS_USER_CANCELED	90

/* Post-handshake handshake messages, RFC 5246 7.4 and RFC 8446 4. */
#define KPROXY_TLS_HELLO_REQUEST	0
#define KPROXY_TLS_NEW_SESSION_TICKET	4
#define KPROXY_TLS_KEY_UPDATE		24

/* The longest plaintext of one record: a control record is read whole. */
#define KPROXY_TLS_RECORD_MAX		TLS_MAX_PAYLOAD_SIZE

/* Plaintext one 6.1 recvmsg peeks, a page of copy buffer. */
#define KPROXY_TLS_PEEK_MAX		(PAGE_SIZE - 256)

/*
 * Whether @sk may join as a kTLS side: 1 if it is, 0 if it has no ULP,
 * else -errno with the reason in @extack. Under the socket lock.
 */
int kproxy_tls_check(struct sock *sk, int idx, struct netlink_ext_ack *extack)
{
	const struct tcp_ulp_ops *ulp = inet_csk(sk)->icsk_ulp_ops;
	struct tls_context *ctx;

	if (!ulp)
		return 0;
	if (strcmp(ulp->name, "tls")) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is owned by another kernel user (a ULP other than kTLS)",
			      "fd-b is owned by another kernel user (a ULP other than kTLS)");
		return -EBUSY;
	}
	ctx = tls_get_ctx(sk);
	if (ctx->rx_conf != TLS_SW && ctx->rx_conf != TLS_HW) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is a kTLS socket without its TLS_RX key: the direction reading it needs one",
			      "fd-b is a kTLS socket without its TLS_RX key: the direction reading it needs one");
		return -ENOKEY;
	}
	if (ctx->tx_conf != TLS_SW && ctx->tx_conf != TLS_HW) {
		KPROXY_FD_ERR(extack, idx,
			      "fd-a is a kTLS socket without its TLS_TX key: the direction sending on it needs one",
			      "fd-b is a kTLS socket without its TLS_TX key: the direction sending on it needs one");
		return -ENOKEY;
	}
	return 1;
}

/* A kTLS side's protocol version and cipher, for /proc and netlink. */
void kproxy_tls_info(struct sock *sk, u16 *version, u16 *cipher)
{
	const struct tls_prot_info *prot = &tls_get_ctx(sk)->prot_info;

	*version = prot->version;
	*cipher = prot->cipher_type;
}

/*
 * Records a kTLS side has received (@tx false) or sent under its current
 * keys: its record sequence number. Read without the socket lock, as any
 * counter here: a read racing a record may be off by it.
 */
u64 kproxy_tls_records(struct sock *sk, bool tx)
{
	struct tls_context *ctx = tls_get_ctx(sk);

	return get_unaligned_be64(tx ? ctx->tx.rec_seq : ctx->rx.rec_seq);
}

/* recvmsg on @sk without blocking; the record type goes to @type. */
static int kproxy_tls_recvmsg(struct sock *sk, struct kvec *vec, int flags,
			      u8 *type)
{
	char cbuf[CMSG_SPACE(sizeof(*type))];
	struct msghdr msg = {
		.msg_control = cbuf,
		.msg_controllen = sizeof(cbuf),
	};
	struct cmsghdr *cmsg;
	int ret;

	ret = kernel_recvmsg(sk->sk_socket, &msg, vec, 1, vec->iov_len,
			     flags | MSG_DONTWAIT);
	cmsg = (struct cmsghdr *)cbuf;
	*type = KPROXY_TLS_RECORD_DATA;
	if (ret >= 0 && !(msg.msg_flags & MSG_CTRUNC) &&
	    msg.msg_controllen < sizeof(cbuf) &&
	    cmsg->cmsg_level == SOL_TLS && cmsg->cmsg_type == TLS_GET_RECORD_TYPE)
		*type = *(u8 *)CMSG_DATA(cmsg);
	return ret;
}

/* What a handshake record after the handshake asks: 0, or -errno. */
static int kproxy_tls_handshake_record(struct kproxy *kp, const u8 *p,
				       int len)
{
	struct kproxy_net *kn = kproxy_pernet(kp->net);

	while (len >= 4) {
		u32 body = (p[1] << 16) | (p[2] << 8) | p[3];

		switch (p[0]) {
		case KPROXY_TLS_NEW_SESSION_TICKET:
		case KPROXY_TLS_HELLO_REQUEST:
			atomic64_inc(&kn->tls_control);
			break;
		case KPROXY_TLS_KEY_UPDATE:
			return -EKEYEXPIRED;
		default:
			return -EPROTO;
		}
		if (body > len - 4)
			break;		/* the rest comes in the next record */
		p += 4 + body;
		len -= 4 + body;
	}
	return 0;
}

/*
 * Read and act on the control record at the head of @dir's source.
 * 1 when the stream goes on (the record was consumed: read on), 0 at its
 * end (close_notify: dir->eof), else -errno: -EREMOTEIO for a fatal alert
 * (in kp->tls_alert), -EKEYEXPIRED for a KeyUpdate.
 */
static int kproxy_tls_control(struct kproxy_dir *dir)
{
	struct kproxy *kp = kproxy_of(dir);
	struct kvec vec;
	u8 type, *buf;
	int ret;

	buf = kmalloc(KPROXY_TLS_RECORD_MAX, GFP_KERNEL_ACCOUNT);
	if (!buf)
		return -ENOMEM;
	vec = (struct kvec){ .iov_base = buf, .iov_len = KPROXY_TLS_RECORD_MAX };
	ret = kproxy_tls_recvmsg(kproxy_src(dir), &vec, 0, &type);
	if (ret < 0)
		goto out;

	switch (type) {
	case KPROXY_TLS_RECORD_ALERT:
		if (ret < 2) {
			ret = -EPROTO;
		} else if (buf[1] == KPROXY_TLS_CLOSE_NOTIFY) {
			dir->eof = true;
			ret = 0;
		} else if (buf[0] == KPROXY_TLS_WARNING &&
			   buf[1] == KPROXY_TLS_USER_CANCELED) {
			ret = 1;	/* close_notify follows */
		} else {
			kp->tls_alert = buf[1];
			ret = -EREMOTEIO;
		}
		break;
	case KPROXY_TLS_RECORD_HANDSHAKE:
		ret = kproxy_tls_handshake_record(kp, buf, ret) ?: 1;
		break;
	default:
		/*
		 * Data cannot come first here (the head was a control record),
		 * and TLS has no other record type after the handshake: end
		 * the proxy rather than drop bytes of the stream.
		 */
		ret = -EPROTO;
	}
out:
	kfree(buf);
	return ret;
}

/*
 * 6.6 on: the TLS layer's read_sock under the source's lock. Returns what
 * kproxy_read() does, -EINVAL at a control record; sets dir->eof at the
 * end of the stream.
 */
static int kproxy_tls_read_locked(struct kproxy_dir *dir)
{
	struct sock *src = kproxy_src(dir);
	u64 skbs = dir->skbs;
	int ret;

	lock_sock(src);
	ret = kproxy_read(dir, src->sk_socket->ops->read_sock);
	/*
	 * 0 with the actor never called: no record, and the stream is shut
	 * (the TLS layer gives 0 only then, -EAGAIN while it waits).
	 */
	if (!ret && dir->skbs == skbs)
		ret = kproxy_read_shut(dir);
	release_sock(src);
	return ret;
}

/*
 * 6.1: peek at the plaintext, give it to the actor, and consume what it
 * took. Returns bytes taken or -errno (-EINVAL at a control record).
 */
static int kproxy_tls_read_copy(struct kproxy_dir *dir)
{
	struct sock *src = kproxy_src(dir);
	read_descriptor_t desc;
	struct sk_buff *skb;
	struct kvec vec;
	int ret, used;
	u8 type;

	skb = alloc_skb(KPROXY_TLS_PEEK_MAX, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!skb)
		return -ENOMEM;
	vec = (struct kvec){ .iov_base = skb->data,
			     .iov_len = KPROXY_TLS_PEEK_MAX };
	ret = kproxy_tls_recvmsg(src, &vec, MSG_PEEK, &type);
	if (ret == 0) {
		ret = kproxy_read_shut(dir);
		goto out;
	}
	if (ret < 0)
		goto out;
	if (type != KPROXY_TLS_RECORD_DATA) {
		ret = -EINVAL;
		goto out;
	}
	skb_put(skb, ret);

	kproxy_read_start(dir);
	desc = (read_descriptor_t){ .arg.data = dir, .count = 1 };
	used = kproxy_recv_actor(&desc, skb, 0, skb->len);
	if (desc.error) {
		ret = desc.error;
		goto out;
	}
	if (used) {
		/* Consumed into the discard: the actor has its copy or clone. */
		struct msghdr msg = {};

		iov_iter_discard(&msg.msg_iter, ITER_DEST, used);
		ret = sock_recvmsg(src->sk_socket, &msg, MSG_DONTWAIT);
		if (ret >= 0 && ret != used)
			ret = -EPROTO;	/* the TLS layer lost what it showed */
	}
	if (ret >= 0)
		ret = kproxy_read_finish(dir, used);
out:
	consume_skb(skb);
	return ret;
}

/*
 * Read what the queue has room for from a kTLS source, taking its lock as
 * needed. Returns > 0 for progress (bytes read, or a control record
 * consumed), 0, -EAGAIN while a record is incomplete, or -errno as
 * kproxy_read() does, and also -EREMOTEIO (fatal alert) and -EKEYEXPIRED
 * (KeyUpdate).
 */
int kproxy_tls_read(struct kproxy_dir *dir)
{
	const struct proto_ops *ops = kproxy_src(dir)->sk_socket->ops;
	int ret;

	if (ops->read_sock && ops->read_sock != tcp_read_sock)
		ret = kproxy_tls_read_locked(dir);
	else
		ret = kproxy_tls_read_copy(dir);
	if (ret == -EINVAL)
		ret = kproxy_tls_control(dir);
	return ret;
}

/* Send @len bytes at @data or in @page through the TLS layer. */
static int kproxy_tls_send_bytes(struct socket *sock, void *data,
				 struct page *page, unsigned int offset,
				 unsigned int len, int flags)
{
	struct msghdr msg = { .msg_flags = flags };
	struct kvec kv;

	if (page)
		return kproxy_sendmsg_page(sock, page, offset, len, flags);
	kv = (struct kvec){ .iov_base = data + offset, .iov_len = len };
	return kernel_sendmsg(sock, &msg, &kv, 1, len);
}

/* Count a send of @n bytes that returned @ret: whether all of it went. */
static bool kproxy_tls_sent(int ret, int n, int *sent)
{
	if (ret > 0)
		*sent += ret;
	return ret == n;
}

/*
 * kproxy_send()'s send for a kTLS destination: @len bytes of @skb from
 * @offset through the TLS layer, without the socket lock. Returns bytes
 * sent (fewer when the socket is full) or -errno.
 */
int kproxy_tls_send_skb(struct sock *sk, struct sk_buff *skb, int offset,
			int len, bool more)
{
	int flags = MSG_DONTWAIT | MSG_NOSIGNAL;
	int sent = 0, headlen = skb_headlen(skb);
	struct sk_buff *frag_iter;
	int i, n, ret;

	/* Head, then page fragments, then the frag_list's skbs in turn. */
	if (offset < headlen) {
		n = min(len, headlen - offset);
		ret = kproxy_tls_send_bytes(sk->sk_socket, skb->data, NULL,
					    offset, n,
					    flags | (n < len || more ? MSG_MORE : 0));
		if (!kproxy_tls_sent(ret, n, &sent))
			return sent ?: ret;
		offset = 0;
	} else {
		offset -= headlen;
	}
	for (i = 0; i < skb_shinfo(skb)->nr_frags && sent < len; i++) {
		skb_frag_t *frag = &skb_shinfo(skb)->frags[i];

		if (offset >= skb_frag_size(frag)) {
			offset -= skb_frag_size(frag);
			continue;
		}
		n = min_t(int, len - sent, skb_frag_size(frag) - offset);
		ret = kproxy_tls_send_bytes(sk->sk_socket, NULL,
					    skb_frag_page(frag),
					    skb_frag_off(frag) + offset, n,
					    flags | (sent + n < len || more ? MSG_MORE : 0));
		if (!kproxy_tls_sent(ret, n, &sent))
			return sent ?: ret;
		offset = 0;
	}
	skb_walk_frags(skb, frag_iter) {
		if (sent >= len)
			break;
		if (offset >= frag_iter->len) {
			offset -= frag_iter->len;
			continue;
		}
		n = min_t(int, len - sent, frag_iter->len - offset);
		ret = kproxy_tls_send_skb(sk, frag_iter, offset, n,
					  sent + n < len || more);
		if (!kproxy_tls_sent(ret, n, &sent))
			return sent ?: ret;
		offset = 0;
	}
	return sent;
}

/*
 * Before a kTLS destination's FIN: a close_notify alert, as a TLS peer
 * expects at the end of the stream. 0, -EAGAIN to try again when the
 * socket has room, or another -errno (the FIN goes anyway).
 */
int kproxy_tls_close_notify(struct sock *sk)
{
	u8 alert[2] = { KPROXY_TLS_WARNING, KPROXY_TLS_CLOSE_NOTIFY };
	u8 type = KPROXY_TLS_RECORD_ALERT;
	char cbuf[CMSG_SPACE(sizeof(type))] = {};
	struct kvec kv = { .iov_base = alert, .iov_len = sizeof(alert) };
	struct msghdr msg = {
		.msg_control = cbuf,
		.msg_controllen = sizeof(cbuf),
		.msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL,
	};
	struct cmsghdr *cmsg = (struct cmsghdr *)cbuf;
	int ret;

	cmsg->cmsg_level = SOL_TLS;
	cmsg->cmsg_type = TLS_SET_RECORD_TYPE;
	cmsg->cmsg_len = CMSG_LEN(sizeof(type));
	*(u8 *)CMSG_DATA(cmsg) = type;
	ret = kernel_sendmsg(sk->sk_socket, &msg, &kv, 1, sizeof(alert));
	return ret < 0 ? ret : 0;
}
