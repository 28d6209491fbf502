// SPDX-License-Identifier: GPL-2.0
/*
 * The data path: each direction reads its source socket with
 * tcp_read_sock() into a bounded queue and sends it on the destination
 * with kproxy_send_skb() (compat.h), from a work item; a kTLS side is
 * read and written through the TLS layer instead (tls.c). The queue holds clones
 * of what TCP received (no copy), except for small segments: a clone
 * pins its whole skb, so segments that would pin more than twice their
 * bytes are copied into shared page-sized buffers instead, and the bound
 * (KPROXY_QUEUE_MAX) counts the memory held, not the payload. Memory is
 * charged to the proxy's creator. Locking rules are in kproxy.h.
 */
#include <linux/delay.h>
#include <linux/memcontrol.h>
#include <linux/sched/isolation.h>
#include <linux/sched/mm.h>
#include <linux/skbuff.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "compat.h"
#include "kproxy.h"

/* Loop passes one work run may make before yielding the worker. */
#define KPROXY_WORK_BUDGET	64

/* Segments shorter than this may be copied rather than cloned. */
#define KPROXY_COPY_MAX		2048

/* Payload of a copy buffer: its data and skb_shared_info fill a page. */
#define KPROXY_COPY_SIZE	SKB_WITH_OVERHEAD(PAGE_SIZE)

/* How long a direction short of memory waits before it tries again. */
#define KPROXY_NOMEM_WAIT_MS	20

/* Where a queued skb's unsent payload starts and how long it is. */
struct kproxy_skb_cb {
	u32 offset;
	u32 len;
	bool copy;		/* a copy buffer of ours: may be appended to */
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
	skb_queue_head_init(&dir->queue);
	INIT_WORK(&dir->work, kproxy_dir_work);
	kproxy_bpf_init(dir);
}

void kproxy_queue_skb(struct kproxy_dir *dir, struct sk_buff *skb,
		      u32 offset, u32 len)
{
	kproxy_cb(skb)->offset = offset;
	kproxy_cb(skb)->len = len;
	kproxy_cb(skb)->copy = false;
	__skb_queue_tail(&dir->queue, skb);
	WRITE_ONCE(dir->queued, dir->queued + len);
	WRITE_ONCE(dir->held, dir->held + skb->truesize);
}

static void kproxy_unqueue_skb(struct kproxy_dir *dir, struct sk_buff *skb)
{
	__skb_unlink(skb, &dir->queue);
	WRITE_ONCE(dir->held, dir->held - skb->truesize);
	consume_skb(skb);
}

bool kproxy_queue_full(const struct kproxy_dir *dir)
{
	return READ_ONCE(dir->held) >= KPROXY_QUEUE_MAX;
}

/* Whether a clone of @skb for @len of its bytes would pin over twice them. */
bool kproxy_copy_worthy(const struct sk_buff *skb, size_t len)
{
	return len < KPROXY_COPY_MAX && len * 2 < skb->truesize;
}

/*
 * A copy buffer with room: @tail when it is one, else a new one (NULL
 * when memory is short). Charged to the active memory cgroup.
 */
struct sk_buff *kproxy_copy_skb(struct kproxy_dir *dir, struct sk_buff *tail)
{
	struct sk_buff *skb;

	if (tail && kproxy_cb(tail)->copy && skb_tailroom(tail))
		return tail;
	skb = alloc_skb(KPROXY_COPY_SIZE, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (skb)
		kproxy_cb(skb)->copy = true;
	return skb;
}

/* Copy up to @len bytes at @offset of @skb to the queue's copy buffer. */
static int kproxy_queue_copy(struct kproxy_dir *dir, struct sk_buff *skb,
			     unsigned int offset, size_t len)
{
	struct sk_buff *tail = skb_peek_tail(&dir->queue);
	struct sk_buff *buf;
	size_t n;

	buf = kproxy_copy_skb(dir, tail);
	if (!buf)
		return -ENOMEM;
	if (buf != tail) {
		kproxy_queue_skb(dir, buf, 0, 0);
		kproxy_cb(buf)->copy = true;
	}
	n = min_t(size_t, len, skb_tailroom(buf));
	if (skb_copy_bits(skb, offset, skb_put(buf, n), n))
		return -EFAULT;
	kproxy_cb(buf)->len += n;
	WRITE_ONCE(dir->queued, dir->queued + n);
	return n;
}

/*
 * read_sock actor (TCP's or the TLS layer's): without a parser, queue a
 * clone of [offset, offset + len), or a copy of a small segment; with one,
 * feed the bytes to it. Consumes less when the queue is full (and stops
 * the read); the socket keeps the rest.
 */
int kproxy_recv_actor(read_descriptor_t *desc, struct sk_buff *skb,
		      unsigned int offset, size_t len)
{
	struct kproxy_dir *dir = desc->arg.data;
	struct sk_buff *clone;
	size_t done = 0;
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
			/* A verdict replied: nothing more is read. */
			if (dir->denied) {
				desc->count = 0;
				break;
			}
			if (dir->bpf.switching) {
				kproxy_bpf_adopt(dir);
				continue;
			}
			if (used)
				continue;
			/* Stopped without pausing: out of memory. */
			if (!dir->bpf.parser->strp.paused)
				desc->error = -ENOMEM;
			break;
		}

		if (kproxy_bpf_changed(dir)) {
			kproxy_bpf_adopt(dir);
			continue;
		}
		if (kproxy_queue_full(dir))
			break;
		if (kproxy_copy_worthy(skb, len - done)) {
			used = kproxy_queue_copy(dir, skb, offset + done,
						 len - done);
			if (used < 0) {
				desc->error = used;
				break;
			}
			done += used;
			continue;
		}
		/* A clone pins the whole skb: take it whole or not yet. */
		if (dir->held && dir->held + skb->truesize > KPROXY_QUEUE_MAX)
			break;
		clone = skb_clone(skb, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
		if (!clone) {
			desc->error = -ENOMEM;
			break;
		}
		kproxy_queue_skb(dir, clone, offset + done, len - done);
		WRITE_ONCE(dir->msgs, dir->msgs + 1);
		done = len;
	}
	/*
	 * Whatever stopped us short ends the read: the TLS layer's read_sock
	 * goes on to its next record while count is left, and the rest of
	 * this one would be lost (tcp_read_sock offers it again). A clone
	 * that would pass the bound stops us short of a full queue.
	 */
	if (done < len || kproxy_queue_full(dir))
		desc->count = 0;
	return done;
}

/*
 * tcp_read_sock() stops for good at the urgent mark (only tcp_recvmsg()
 * moves past it). The socket is SO_OOBINLINE while joined (sock.c), so
 * the urgent byte is an ordinary byte of the stream: clear the mark once
 * reading has reached it, as tcp_recvmsg() does, and read on.
 */
static bool kproxy_pass_urgent_mark(struct sock *sk)
{
	struct tcp_sock *tp = tcp_sk(sk);

	if (!(tp->urg_data & TCP_URG_VALID) || tp->urg_seq != tp->copied_seq)
		return false;
	WRITE_ONCE(tp->urg_data, 0);
	tcp_fast_path_check(sk);
	return true;
}

/* Before a read: with no message in progress, adopt the wanted programs. */
void kproxy_read_start(struct kproxy_dir *dir)
{
	if (!dir->bpf.in_msg && kproxy_bpf_changed(dir))
		kproxy_bpf_adopt(dir);
}

/* After a read that returned @ret: hand the parser what it gathered. */
int kproxy_read_finish(struct kproxy_dir *dir, int ret)
{
	int err = kproxy_bpf_flush(dir);

	return err < 0 ? err : ret;
}

/*
 * Read what the queue has room for with @read_sock (tcp_read_sock(), or a
 * kTLS socket's own); the socket lock of src is held.
 */
int kproxy_read(struct kproxy_dir *dir,
		int (*read_sock)(struct sock *sk, read_descriptor_t *desc,
				 sk_read_actor_t actor))
{
	struct sock *src = kproxy_src(dir);
	read_descriptor_t desc;
	int ret, total = 0;

	kproxy_read_start(dir);
	do {
		desc = (read_descriptor_t){ .arg.data = dir, .count = 1 };
		ret = read_sock(src, &desc, kproxy_recv_actor);
		if (desc.error)
			return desc.error;
		if (ret < 0)
			break;		/* a kTLS socket's: see tls.c */
		total += ret;
	} while (kproxy_pass_urgent_mark(src));

	return kproxy_read_finish(dir, total ?: min(ret, 0));
}

/*
 * Whether @dst can take data. TCP's sendmsg on a socket that is shut or
 * failed raises SIGPIPE in the calling task, which may be the netlink
 * caller or rmmod (kproxy_dir_drain()): look first, under its lock, when
 * the socket's state cannot change.
 */
static bool kproxy_can_send(struct sock *dst)
{
	return !READ_ONCE(dst->sk_err) &&
	       !(READ_ONCE(dst->sk_shutdown) & SEND_SHUTDOWN) &&
	       ((1 << READ_ONCE(dst->sk_state)) &
		(TCPF_ESTABLISHED | TCPF_CLOSE_WAIT));
}

/*
 * Send the queue with @send: kproxy_send_skb() with the socket lock of
 * dst held, or kproxy_tls_send_skb() without it. 0 or -errno.
 */
static int kproxy_send(struct kproxy_dir *dir,
		       int (*send)(struct sock *sk, struct sk_buff *skb,
				   int offset, int len, bool more))
{
	struct sock *dst = kproxy_dst(dir);
	struct sk_buff *skb;
	int ret;

	while ((skb = skb_peek(&dir->queue))) {
		struct kproxy_skb_cb *cb = kproxy_cb(skb);

		if (!kproxy_can_send(dst))
			return -EPIPE;
		ret = send(dst, skb, cb->offset, cb->len,
			   !skb_queue_is_last(&dir->queue, skb));
		WRITE_ONCE(dir->sends, dir->sends + 1);
		if (ret <= 0)
			return ret ? ret : -EAGAIN;

		cb->offset += ret;
		cb->len -= ret;
		WRITE_ONCE(dir->queued, dir->queued - ret);
		WRITE_ONCE(dir->bytes, dir->bytes + ret);
		if (cb->len)
			continue;
		kproxy_unqueue_skb(dir, skb);
	}
	return 0;
}

static enum kproxy_reason kproxy_err_reason(int err)
{
	switch (err) {
	case ECONNRESET:
	case EPIPE:
		return KPROXY_REASON_RESET;
	case EREMOTEIO:		/* tls.c: a fatal alert */
		return KPROXY_REASON_TLS_ALERT;
	case EKEYEXPIRED:	/* tls.c: a KeyUpdate */
		return KPROXY_REASON_TLS_REKEY;
	default:
		return KPROXY_REASON_ERROR;
	}
}

/* A socket error on either side ends the proxy; the other side is aborted. */
static bool kproxy_check_errors(struct kproxy_dir *dir)
{
	int err = READ_ONCE(kproxy_src(dir)->sk_err) ?:
		  READ_ONCE(kproxy_dst(dir)->sk_err);

	if (!err)
		return false;
	kproxy_end_async(kproxy_of(dir), kproxy_err_reason(err));
	return true;
}

/*
 * Forward the source's FIN once everything before it is sent; a
 * direction whose verdict replied (dir->denied) forwards one there. A
 * reply the other direction's verdict left goes first, after the rest of
 * this stream: see kproxy_deny().
 */
static void kproxy_forward_fin(struct kproxy_dir *dir)
{
	struct kproxy *kp = kproxy_of(dir);
	struct sk_buff *reply;

	if (!(dir->eof || dir->denied) || dir->shut ||
	    !skb_queue_empty(&dir->queue) || kproxy_bpf_pending(dir))
		return;
	reply = kproxy_bpf_take_reply(&kp->dir[!dir->idx]);
	if (reply) {
		kproxy_queue_skb(dir, reply, 0, reply->len);
		kproxy_dir_kick(dir);
		return;
	}
	/* Full: write_space runs the work again. */
	if (dir->tls_dst && kproxy_tls_close_notify(kproxy_dst(dir)) == -EAGAIN)
		return;

	kernel_sock_shutdown(kproxy_dst(dir)->sk_socket, SHUT_WR);
	WRITE_ONCE(dir->shut, true);
	/*
	 * Both directions may see the other's bit (the bitops are fully
	 * ordered, so at least one does): the claim picks one.
	 */
	test_and_set_bit(KPROXY_SHUT_A_TO_B + dir->idx, &kp->flags);
	if (test_bit(KPROXY_SHUT_A_TO_B + !dir->idx, &kp->flags)) {
		/* KPROXY_DENIED was set before the other's shut bit. */
		smp_rmb();
		kproxy_end_async(kp, test_bit(KPROXY_DENIED, &kp->flags) ?
				 KPROXY_REASON_DENIED : KPROXY_REASON_CLOSED);
	}
}

/* Whether a direction should read: not at its end, room in its queue. */
static bool kproxy_may_read(struct kproxy_dir *dir)
{
	return (!dir->eof || kproxy_bpf_pending(dir)) && !dir->denied &&
	       !kproxy_queue_full(dir);
}

/*
 * All of the source has been read and its receive side is shut. Only a FIN
 * (SOCK_DONE) is an end of stream to forward (dir->eof, 0). A reset shuts
 * the receive side too, and its error may already have been taken by the
 * other direction's send: it must never reach the other peer as a FIN
 * (-ECONNRESET).
 */
int kproxy_read_shut(struct kproxy_dir *dir)
{
	if (!sock_flag(kproxy_src(dir), SOCK_DONE))
		return -ECONNRESET;
	dir->eof = true;
	return 0;
}

/*
 * Read a plain TCP source under its lock. Bytes read or -errno; sets
 * dir->eof at a FIN, and gives -ECONNRESET for a reset.
 */
static int kproxy_read_plain(struct kproxy_dir *dir)
{
	struct sock *src = kproxy_src(dir);
	int err;

	lock_sock(src);
	err = kproxy_read(dir, tcp_read_sock);
	if ((src->sk_shutdown & RCV_SHUTDOWN) &&
	    skb_queue_empty(&src->sk_receive_queue))
		err = kproxy_read_shut(dir);
	release_sock(src);
	return err;
}

static void kproxy_dir_run(struct kproxy_dir *dir)
{
	struct sock *dst = kproxy_dst(dir);
	struct kproxy *kp = kproxy_of(dir);
	int budget = KPROXY_WORK_BUDGET;
	bool progress;
	int err;

	do {
		u32 before;

		progress = false;
		if (kproxy_may_read(dir)) {
			err = dir->tls_src ? kproxy_tls_read(dir) :
					     kproxy_read_plain(dir);
			if (err > 0)
				progress = true;
			if (err == -ENOMEM) {
				/* Data stays in src: wait for memory, not spin. */
				msleep(KPROXY_NOMEM_WAIT_MS);
				kproxy_dir_kick(dir);
				return;
			}
			/* -EAGAIN: a kTLS record is not complete yet. */
			if (err < 0 && err != -EAGAIN) {
				kproxy_end_async(kp, kproxy_err_reason(-err));
				return;
			}
		}

		if (!skb_queue_empty(&dir->queue)) {
			before = dir->queued;	/* sending drains it */
			if (dir->tls_dst) {
				err = kproxy_send(dir, kproxy_tls_send_skb);
			} else {
				lock_sock(dst);
				err = kproxy_send(dir, kproxy_send_skb);
				release_sock(dst);
			}
			if (dir->queued < before)
				progress = true;
			if (err && err != -EAGAIN) {
				kproxy_end_async(kp, kproxy_err_reason(-err));
				return;
			}
		}

		if (kproxy_check_errors(dir))
			return;
		/* Ended by someone else: its destroy waits for this work. */
		if (test_bit(KPROXY_DEAD, &kp->flags))
			return;
	} while (progress && --budget);

	kproxy_forward_fin(dir);

	/* Out of budget with work left: yield, then go on. */
	if (!budget)
		kproxy_dir_kick(dir);
}

void kproxy_dir_work(struct work_struct *work)
{
	struct kproxy_dir *dir = container_of(work, struct kproxy_dir, work);
	struct kproxy *kp = kproxy_of(dir);
	struct mem_cgroup *old;

	if (!test_bit(KPROXY_RUNNING, &kp->flags) ||
	    test_bit(KPROXY_DEAD, &kp->flags))
		return;
	WRITE_ONCE(dir->runs, dir->runs + 1);
	WRITE_ONCE(dir->fed, false);
	WRITE_ONCE(dir->running, true);
	WRITE_ONCE(kp->last_dir, dir->idx);

	/* What the direction allocates is charged to the proxy's creator. */
	old = set_active_memcg(kp->memcg);
	kproxy_dir_run(dir);
	set_active_memcg(old);

	WRITE_ONCE(dir->running, false);
}

/* Drop what is queued, e.g. when the proxy is aborted. */
void kproxy_dir_purge(struct kproxy_dir *dir)
{
	__skb_queue_purge(&dir->queue);
	WRITE_ONCE(dir->queued, 0);
	WRITE_ONCE(dir->held, 0);
}

/*
 * Send what is still queued before the sockets are handed back: those
 * bytes have left the source's receive queue, so they must reach the
 * destination even when its send buffer is full (a stalled peer) or its
 * owner asked TCP to hold little unsent data (TCP_NOTSENT_LOWAT). Both
 * limits are lifted for the time of the send, the buffer by what the
 * queue holds (at most KPROXY_QUEUE_MAX and one skb), then put back; TCP
 * sends the extra as the peer reads, and the owner's own writes wait
 * until it has. A FIN the source had sent follows the bytes: the proxy
 * took it in, so it delivers it.
 */
void kproxy_dir_drain(struct kproxy_dir *dir)
{
	struct sock *dst = kproxy_dst(dir);
	struct tcp_sock *tp = tcp_sk(dst);
	int sndbuf, err = 0;
	u32 lowat;

	if (!skb_queue_empty(&dir->queue)) {
		lock_sock(dst);
		sndbuf = READ_ONCE(dst->sk_sndbuf);
		lowat = READ_ONCE(tp->notsent_lowat);
		WRITE_ONCE(dst->sk_sndbuf,
			   min_t(s64, (s64)sndbuf + 2 * (s64)dir->held, INT_MAX));
		WRITE_ONCE(tp->notsent_lowat, UINT_MAX);
		if (dir->tls_dst) {
			/* The TLS layer takes the lock itself. */
			release_sock(dst);
			err = kproxy_send(dir, kproxy_tls_send_skb);
			lock_sock(dst);
		} else {
			err = kproxy_send(dir, kproxy_send_skb);
		}
		WRITE_ONCE(tp->notsent_lowat, lowat);
		WRITE_ONCE(dst->sk_sndbuf, sndbuf);
		release_sock(dst);
	}
	if (!err && (dir->eof || dir->denied) && !dir->shut) {
		if (dir->tls_dst)
			kproxy_tls_close_notify(dst);
		kernel_sock_shutdown(dst->sk_socket, SHUT_WR);
		WRITE_ONCE(dir->shut, true);
	}
	kproxy_dir_purge(dir);
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

/*
 * Whether the directions' works may run on @cpu: the CPUs an unbound work
 * may use, i.e. not isolated from kernel work by isolcpus= or nohz_full=
 * (workqueue's own unbound mask is made the same way).
 */
static bool kproxy_cpu_allowed(int cpu)
{
	return housekeeping_test_cpu(cpu, HK_TYPE_WQ) &&
	       housekeeping_test_cpu(cpu, HK_TYPE_DOMAIN);
}

/*
 * The CPU for a wakeup made on @cpu: @cpu itself unless @other is asked
 * or @cpu is isolated, else the next online CPU that is allowed (wrapping),
 * else @cpu after all. The answer is a hint: queue_work_on() copes with a
 * CPU that goes offline meanwhile.
 */
static int kproxy_pick_cpu(int cpu, bool other)
{
	int next;

	if (!other && kproxy_cpu_allowed(cpu))
		return cpu;
	for_each_cpu_wrap(next, cpu_online_mask, cpu) {
		if (next != cpu && kproxy_cpu_allowed(next))
			return next;
	}
	return cpu;
}

/*
 * Every queueing of a direction's work but data_ready's: here, where the
 * news (room to write, a state change, a program, a reply) came from.
 */
void kproxy_dir_kick(struct kproxy_dir *dir)
{
	int cpu = kproxy_pick_cpu(raw_smp_processor_id(), false);

	queue_work_on(cpu, kproxy_dir_wq, &dir->work);
}

/*
 * Whether @dir is streaming: data came while its work last ran, or its
 * work ran last of the two directions, so that data keeps coming with no
 * answer in between. A request and its reply alternate the directions.
 */
static bool kproxy_dir_streaming(struct kproxy_dir *dir)
{
	return READ_ONCE(dir->fed) ||
	       READ_ONCE(kproxy_of(dir)->last_dir) == dir->idx;
}

/*
 * Data arrived for @dir, on this CPU (softirq, or release_sock() with
 * bottom halves off under sk_callback_lock). An idle direction (a request,
 * a reply) runs here, where the bytes are warm and with no cross-CPU
 * wakeup. A streaming one runs on another CPU than the sender's softirq,
 * so that the two do not take turns on one. The queue's non-reentrancy
 * holds across CPUs: a work still running somewhere is queued there
 * whatever CPU is asked.
 */
static void kproxy_dir_wake_data(struct kproxy_dir *dir)
{
	bool other = false;

	if (READ_ONCE(dir->running))
		WRITE_ONCE(dir->fed, true);
	else
		other = kproxy_dir_streaming(dir);
	queue_work_on(kproxy_pick_cpu(smp_processor_id(), other),
		      kproxy_dir_wq, &dir->work);
}

void kproxy_data_ready(struct sock *sk)
{
	struct kproxy *kp;
	int idx;

	read_lock_bh(&sk->sk_callback_lock);
	kp = kproxy_from_sk(sk, &idx);
	if (kp)
		kproxy_dir_wake_data(&kp->dir[idx]);
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
		kproxy_dir_kick(&kp->dir[!idx]);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

/*
 * Whether a state change is news to a direction. A FIN that arrives
 * (CLOSE_WAIT, CLOSING, TIME_WAIT) comes with a data_ready, which wakes
 * the direction reading the socket; the steps of a close a direction
 * began itself (FIN_WAIT1, FIN_WAIT2, LAST_ACK) change nothing for either.
 * Errors (a reset, a timeout), the end (CLOSE) and anything else, such as
 * a co-owner's shutdown, wake both.
 */
static bool kproxy_state_news(const struct sock *sk)
{
	return READ_ONCE(sk->sk_err) ||
	       !((1 << READ_ONCE(sk->sk_state)) &
		 (TCPF_CLOSE_WAIT | TCPF_CLOSING | TCPF_TIME_WAIT |
		  TCPF_FIN_WAIT1 | TCPF_FIN_WAIT2 | TCPF_LAST_ACK));
}

/* Resets, errors and ends: both directions touching this socket look. */
void kproxy_state_change(struct sock *sk)
{
	struct kproxy *kp;
	int idx;

	read_lock_bh(&sk->sk_callback_lock);
	kp = kproxy_from_sk(sk, &idx);
	if (kp && kproxy_state_news(sk)) {
		kproxy_dir_kick(&kp->dir[0]);
		kproxy_dir_kick(&kp->dir[1]);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}
