// SPDX-License-Identifier: GPL-2.0
/*
 * The data path: each direction reads its source socket with
 * tcp_read_sock() into a bounded queue of skb clones (no copy) and sends
 * them on the destination with skb_send_sock_locked(), from a work item.
 * Locking rules are in kproxy.h.
 */
#include <linux/skbuff.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "kproxy.h"

/* Loop passes one work run may make before yielding the worker. */
#define KPROXY_WORK_BUDGET	64

/* Where a queued clone's unsent payload starts and how long it is. */
struct kproxy_skb_cb {
	u32 offset;
	u32 len;
};

static struct kproxy_skb_cb *kproxy_cb(struct sk_buff *skb)
{
	BUILD_BUG_ON(sizeof(struct kproxy_skb_cb) > sizeof(skb->cb));
	return (struct kproxy_skb_cb *)skb->cb;
}

void kproxy_dir_init(struct kproxy *kp, int d)
{
	struct kproxy_dir *dir = &kp->dir[d];

	dir->idx = d;
	dir->src = kp->sock[d]->sk;
	dir->dst = kp->sock[!d]->sk;
	skb_queue_head_init(&dir->queue);
	INIT_WORK(&dir->work, kproxy_dir_work);
	kproxy_bpf_init(dir);
}

void kproxy_queue_skb(struct kproxy_dir *dir, struct sk_buff *skb,
		      u32 offset, u32 len)
{
	kproxy_cb(skb)->offset = offset;
	kproxy_cb(skb)->len = len;
	__skb_queue_tail(&dir->queue, skb);
	WRITE_ONCE(dir->queued, dir->queued + len);
}

/*
 * tcp_read_sock() actor: without a parser, queue a clone of
 * [offset, offset + len); with one, feed the bytes to it. Consumes less
 * when the queue is full; tcp_read_sock() leaves the rest in the socket.
 */
static int kproxy_recv_actor(read_descriptor_t *desc, struct sk_buff *skb,
			     unsigned int offset, size_t len)
{
	struct kproxy_dir *dir = desc->arg.data;
	struct sk_buff *clone;
	size_t done = 0, n;
	int used;

	WRITE_ONCE(dir->skbs, dir->skbs + 1);
	while (done < len) {
		if (dir->bpf.strp_on) {
			used = kproxy_bpf_feed(dir, skb, offset + done,
					       len - done);
			if (used < 0) {
				desc->error = used;
				break;
			}
			done += used;
			if (dir->bpf.switching) {
				kproxy_bpf_adopt(dir);
				continue;
			}
			/* Stopped short without pausing: out of memory. */
			if (done < len && !dir->bpf.parser->strp.paused)
				desc->error = -ENOMEM;
			break;
		}

		if (kproxy_bpf_changed(dir)) {
			kproxy_bpf_adopt(dir);
			continue;
		}
		n = min_t(size_t, len - done, desc->count);
		if (!n)
			break;
		clone = skb_clone(skb, GFP_KERNEL | __GFP_NOWARN);
		if (!clone) {
			desc->error = -ENOMEM;
			break;
		}
		kproxy_queue_skb(dir, clone, offset + done, n);
		WRITE_ONCE(dir->msgs, dir->msgs + 1);
		desc->count -= n;
		done += n;
	}
	return done;
}

/* Read what the queue has room for; the socket lock of src is held. */
static int kproxy_read(struct kproxy_dir *dir)
{
	read_descriptor_t desc = {
		.arg.data = dir,
		.count = KPROXY_QUEUE_MAX - dir->queued,
	};
	int ret;

	/* No message in progress: start with the wanted programs. */
	if (!dir->bpf.in_msg && kproxy_bpf_changed(dir))
		kproxy_bpf_adopt(dir);

	ret = tcp_read_sock(dir->src, &desc, kproxy_recv_actor);
	if (desc.error)
		return desc.error;
	return ret;
}

/* Send the queue; the socket lock of dst is held. 0 or -errno. */
static int kproxy_send(struct kproxy_dir *dir)
{
	struct sk_buff *skb;
	int ret;

	while ((skb = skb_peek(&dir->queue))) {
		struct kproxy_skb_cb *cb = kproxy_cb(skb);

		ret = skb_send_sock_locked(dir->dst, skb, cb->offset, cb->len);
		WRITE_ONCE(dir->sends, dir->sends + 1);
		if (ret <= 0)
			return ret ? ret : -EAGAIN;

		cb->offset += ret;
		cb->len -= ret;
		WRITE_ONCE(dir->queued, dir->queued - ret);
		WRITE_ONCE(dir->bytes, dir->bytes + ret);
		if (cb->len)
			continue;
		__skb_unlink(skb, &dir->queue);
		consume_skb(skb);
	}
	return 0;
}

static enum kproxy_reason kproxy_err_reason(int err)
{
	switch (err) {
	case ECONNRESET:
	case EPIPE:
		return KPROXY_REASON_RESET;
	default:
		return KPROXY_REASON_ERROR;
	}
}

/* A socket error on either side ends the proxy; the other side is aborted. */
static bool kproxy_check_errors(struct kproxy_dir *dir)
{
	int err = READ_ONCE(dir->src->sk_err) ?: READ_ONCE(dir->dst->sk_err);

	if (!err)
		return false;
	kproxy_end_async(kproxy_of(dir), kproxy_err_reason(err));
	return true;
}

/* Forward the source's FIN once everything before it is sent. */
static void kproxy_forward_fin(struct kproxy_dir *dir)
{
	struct kproxy *kp = kproxy_of(dir);

	if (!dir->eof || dir->shut || !skb_queue_empty(&dir->queue))
		return;

	kernel_sock_shutdown(dir->dst->sk_socket, SHUT_WR);
	WRITE_ONCE(dir->shut, true);
	if (atomic_inc_return(&kp->shut_dirs) == 2)
		kproxy_end_async(kp, KPROXY_REASON_CLOSED);
}

void kproxy_dir_work(struct work_struct *work)
{
	struct kproxy_dir *dir = container_of(work, struct kproxy_dir, work);
	struct kproxy *kp = kproxy_of(dir);
	int budget = KPROXY_WORK_BUDGET;
	bool progress;
	int err;

	if (!test_bit(KPROXY_RUNNING, &kp->flags) ||
	    test_bit(KPROXY_DEAD, &kp->flags))
		return;
	WRITE_ONCE(dir->runs, dir->runs + 1);

	do {
		u32 before;

		progress = false;
		if (!dir->eof && dir->queued < KPROXY_QUEUE_MAX) {
			lock_sock(dir->src);
			err = kproxy_read(dir);
			if (err > 0)
				progress = true;
			if ((dir->src->sk_shutdown & RCV_SHUTDOWN) &&
			    skb_queue_empty(&dir->src->sk_receive_queue)) {
				/*
				 * Only a FIN (SOCK_DONE) is an end of stream
				 * to forward. A reset shuts the receive side
				 * too, and its error may already have been
				 * taken by the other direction's send: it
				 * must never reach the other peer as a FIN.
				 */
				if (sock_flag(dir->src, SOCK_DONE))
					dir->eof = true;
				else
					err = -ECONNRESET;
			}
			release_sock(dir->src);
			if (err == -ECONNRESET) {
				kproxy_end_async(kp, KPROXY_REASON_RESET);
				return;
			}
			if (err == -ENOMEM) {
				/* Memory is short: retry later, data stays in src. */
				queue_work(kproxy_wq, &dir->work);
				return;
			}
			if (err < 0) {
				/* The parser refused the stream. */
				kproxy_end_async(kp, KPROXY_REASON_ERROR);
				return;
			}
		}

		if (!skb_queue_empty(&dir->queue)) {
			before = dir->queued;	/* sending drains it */
			lock_sock(dir->dst);
			err = kproxy_send(dir);
			release_sock(dir->dst);
			if (dir->queued < before)
				progress = true;
			if (err && err != -EAGAIN) {
				kproxy_end_async(kp, kproxy_err_reason(-err));
				return;
			}
		}

		if (kproxy_check_errors(dir))
			return;
	} while (progress && --budget);

	kproxy_forward_fin(dir);

	/* Out of budget with work left: yield, then go on. */
	if (!budget)
		queue_work(kproxy_wq, &dir->work);
}

/*
 * Send what is still queued before the sockets are handed back: those
 * bytes have left the source's receive queue, so they must reach the
 * destination even when its send buffer is full (a stalled peer). The
 * send buffer is raised for the time of the send by what the queue may
 * cost (bounded by KPROXY_QUEUE_MAX), then put back; TCP sends the extra
 * as the peer reads, and the owner's own writes wait until it has.
 */
void kproxy_dir_drain(struct kproxy_dir *dir)
{
	struct sock *dst = dir->dst;
	int sndbuf;

	if (!skb_queue_empty(&dir->queue)) {
		lock_sock(dst);
		sndbuf = READ_ONCE(dst->sk_sndbuf);
		/* Twice the payload: the skbs' truesize is more than their bytes. */
		WRITE_ONCE(dst->sk_sndbuf, sndbuf + 2 * dir->queued + SKB_TRUESIZE(0));
		kproxy_send(dir);
		WRITE_ONCE(dst->sk_sndbuf, sndbuf);
		release_sock(dst);
	}
	__skb_queue_purge(&dir->queue);
	WRITE_ONCE(dir->queued, 0);
}

/*
 * Socket callbacks. They run in softirq with the socket's bh lock held,
 * so they only queue work. sock[0] is the source of A_TO_B.
 */
static struct kproxy *kproxy_from_sk(struct sock *sk, int *idx)
{
	struct kproxy *kp = sk->sk_user_data;

	if (kp)
		*idx = kp->sock[0]->sk == sk ? 0 : 1;
	return kp;
}

void kproxy_data_ready(struct sock *sk)
{
	struct kproxy *kp;
	int idx;

	read_lock_bh(&sk->sk_callback_lock);
	kp = kproxy_from_sk(sk, &idx);
	if (kp)
		queue_work(kproxy_wq, &kp->dir[idx].work);
	read_unlock_bh(&sk->sk_callback_lock);
}

void kproxy_write_space(struct sock *sk)
{
	struct kproxy *kp;
	int idx;

	read_lock_bh(&sk->sk_callback_lock);
	kp = kproxy_from_sk(sk, &idx);
	if (kp) {
		/* Clears SOCK_NOSPACE and wakes pollers, as TCP expects. */
		kp->saved[idx].write_space(sk);
		queue_work(kproxy_wq, &kp->dir[!idx].work);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

/* FIN, reset and errors: both directions touching this socket look. */
void kproxy_state_change(struct sock *sk)
{
	struct kproxy *kp;
	int idx;

	read_lock_bh(&sk->sk_callback_lock);
	kp = kproxy_from_sk(sk, &idx);
	if (kp) {
		queue_work(kproxy_wq, &kp->dir[0].work);
		queue_work(kproxy_wq, &kp->dir[1].work);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}
