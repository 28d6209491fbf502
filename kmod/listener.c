// SPDX-License-Identifier: GPL-2.0
/*
 * Listeners: accept on a listening TCP socket, connect each connection to
 * a target and join the two as a proxy, with no userspace per connection.
 *
 * Objects and their rules, stated once here (the proxy side is in
 * kproxy.h):
 *
 * A listener is in kproxy_listener_idr and its netns's list
 * (kproxy_net->listeners) from its creation until it is freed; both, the
 * KPROXY_LISTENER_RUNNING and _DEAD bits and l->active are changed under
 * kproxy_lock, and a listener found there under the lock stays allocated
 * until the lock is released. Deleting (listener-del, the pernet exit,
 * the unload) first sets DEAD under kproxy_lock, so that exactly one
 * caller owns the rest and lookups no longer find it; that owner then,
 * without the lock, unhooks the listening socket, cancels the accept
 * work, ends the connects in flight, waits for them, and unlinks and
 * frees the listener. The pernet exit and the unload also wait for
 * listeners others are deleting (kproxy_listener_end_all()).
 *
 * The listening socket is held by file reference (the caller may close
 * its fd). The listener learns of new connections as epoll and vhost do:
 * an entry of its own (l->wait) in the socket's wait queue, which the
 * socket wakes when a connection is ready (sock_def_readable, softirq);
 * the entry only queues the accept work. Nothing of the socket's is
 * replaced, so the children TCP clones from it carry nothing of ours, and
 * whoever else accepts on the fd meanwhile gets a plain socket. The entry
 * is added once the listener is published and removed first when it is
 * deleted; remove_wait_queue() takes the queue's lock, under which every
 * wakeup runs, so after it no wakeup reaches the listener.
 *
 * The accept work accepts in batches (kernel_accept(), O_NONBLOCK) and
 * gives each connection to a struct kproxy_conn, which owns the accepted
 * socket and the upstream socket it makes until they are joined (the
 * proxy then owns both) or reset. A conn is driven by one context at a
 * time. Its first step runs in the accept work: it creates, binds and
 * connects the upstream socket without blocking, and joins at once if
 * the connect is already done (a near target); otherwise it hooks the
 * socket's sk_state_change (which only requeues the conn's delayed work
 * at once) and arms that work for the connect timeout, and from then on
 * the conn is driven by its work alone, which never runs concurrently
 * with itself: a run finds the connect done (join), failed (reset the
 * client, count the cause) or timed out. Before the hook nothing can
 * queue that work (the deleter cancels the accept work first).
 * A conn is in its listener's conns list (l->lock) until it ends, and
 * the deleter may requeue it only while it is there. Ending, the work
 * unhooks the upstream socket and unlinks the conn, after which nobody
 * can queue it again, cancels any run still queued, and frees it (a work
 * may free itself).
 *
 * l->pending counts the conns; the deleter waits for it to reach 0 (on
 * kproxy_listener_wq), so a listener outlives its conns, and a conn
 * touches its listener no more once it has decremented pending.
 * Connects in flight count toward max-proxies: active + pending is
 * checked at accept, and a conn is counted active (when its proxy is
 * published) before it stops being pending, so the sum never undercounts.
 *
 * Counters are atomic64, written by the works, read by anyone.
 *
 * The listener, its conns and what accepting and connecting allocate are
 * charged to the listener's creator (l->memcg), as proxies are. The
 * listener holds no reference on its netns: the pernet exit deletes it.
 * An upstream socket holds none while it connects (the pernet exit resets
 * it) and one from the moment it is joined, as any socket does (compat.h).
 */
#include <linux/bpf.h>
#include <linux/file.h>
#include <linux/memcontrol.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include <net/ipv6.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "compat.h"
#include "kproxy.h"
#include "netlink-gen.h"

/* Connections one run of the accept work takes before it yields. */
#define KPROXY_ACCEPT_BATCH	64

/* kproxy_listener->flags bits */
enum {
	KPROXY_LISTENER_RUNNING,	/* published: the accept work may accept */
	KPROXY_LISTENER_DEAD,		/* claimed for deletion */
};

struct kproxy_listener {
	struct net *net;		/* owner netns, no reference */
	struct list_head net_node;	/* in kproxy_net->listeners */
	struct socket *sock;		/* listening; file reference */
	struct wait_queue_entry wait;	/* in the socket's wait queue */
	struct work_struct accept_work;
	spinlock_t lock;		/* conns */
	struct list_head conns;
	atomic_t pending;		/* conns alive */
	u32 active;			/* proxies alive (kproxy_lock) */
	u32 id;
	unsigned long flags;
	u32 max_proxies;
	u32 timeout_ms;
	u32 notify_portid;		/* given to each proxy, see kproxy.h */
	u64 created_ns;
	struct sockaddr_storage target;
	struct sockaddr_storage source;	/* ss_family 0: none */
	struct bpf_prog *prog[2];	/* by kind, our references */
	struct kproxy_replies *replies;	/* the verdict's; our reference */
	u32 verdict_dir;		/* KPROXY_DIRECTION_*: judged by the verdict */
	struct mem_cgroup *memcg;	/* the creator's, charged */
	atomic64_t counters[KPROXY_LC_MAX];
};

struct kproxy_conn {
	struct kproxy_listener *l;
	struct list_head node;		/* in l->conns */
	struct socket *client;		/* accepted, ours until joined */
	struct socket *upstream;	/* connecting, ours until joined */
	void (*saved_state_change)(struct sock *sk);
	struct delayed_work work;
	unsigned long deadline;		/* jiffies: the connect times out */
	int connect_err;		/* what kernel_connect() returned */
	bool hooked;			/* upstream's state_change is ours */
};

DEFINE_IDR(kproxy_listener_idr);
/* Listeners allocated and not yet freed, module-wide (kproxy_lock). */
static u32 kproxy_listener_count;
/* Wakes deleters waiting for conns, and end_all for listeners. */
static DECLARE_WAIT_QUEUE_HEAD(kproxy_listener_wq);

static void kproxy_count(struct kproxy_listener *l, int counter)
{
	atomic64_inc(&l->counters[counter]);
}

static int kproxy_addr_len(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) :
					   sizeof(struct sockaddr_in);
}

/* Reset a socket we own and let it go: close with SO_LINGER 0. */
static void kproxy_reset(struct socket *sock)
{
	sock_no_linger(sock->sk);
	sock_release(sock);
}

/* ---- the listening socket ---------------------------------------------- */

static int kproxy_listener_wake(struct wait_queue_entry *wait,
				unsigned int mode, int sync, void *key)
{
	struct kproxy_listener *l = container_of(wait, struct kproxy_listener,
						 wait);

	if (!key || (key_to_poll(key) & (EPOLLIN | EPOLLRDNORM)))
		queue_work(kproxy_wq, &l->accept_work);
	return 0;
}

/* Caller holds kproxy_lock: is @sk the socket of a listener already? */
static bool kproxy_listener_sock_taken(const struct sock *sk)
{
	struct kproxy_listener *l;
	int id;

	lockdep_assert_held(&kproxy_lock);
	idr_for_each_entry(&kproxy_listener_idr, l, id)
		if (l->sock->sk == sk)
			return true;
	return false;
}

/* Can the socket listen for us? 0 or -errno with an extack. */
static int kproxy_listener_check_sock(struct kproxy_listener *l,
				      struct netlink_ext_ack *extack)
{
	struct sock *sk = l->sock->sk;
	bool owned;
	int err = 0;

	lock_sock(sk);
	read_lock_bh(&sk->sk_callback_lock);
	owned = READ_ONCE(sk->sk_user_data);
	read_unlock_bh(&sk->sk_callback_lock);
	if (sk->sk_state != TCP_LISTEN) {
		NL_SET_ERR_MSG(extack,
			       "fd is not a listening socket (call listen() on it first)");
		err = -EINVAL;
	} else if (owned) {
		NL_SET_ERR_MSG(extack,
			       "fd is owned by another kernel user (sockmap or KCM)");
		err = -EBUSY;
	}
	release_sock(sk);
	return err;
}

/* ---- connections: accept, connect, join -------------------------------- */

static void kproxy_conn_state_change(struct sock *sk)
{
	struct kproxy_conn *c;

	read_lock_bh(&sk->sk_callback_lock);
	c = sk->sk_user_data;
	if (c)
		mod_delayed_work(kproxy_wq, &c->work, 0);
	read_unlock_bh(&sk->sk_callback_lock);
}

/* The counter of a connect that failed with @err. */
static int kproxy_conn_cause(int err)
{
	switch (err) {
	case ECONNREFUSED:
		return KPROXY_LC_FAILED_REFUSED;
	case EHOSTUNREACH:
	case ENETUNREACH:
	case EHOSTDOWN:
	case ENETDOWN:
		return KPROXY_LC_FAILED_UNREACHABLE;
	case ETIMEDOUT:
		return KPROXY_LC_FAILED_TIMEOUT;
	default:
		return KPROXY_LC_FAILED_OTHER;
	}
}

/* How the connect went, or -EINPROGRESS (the work requeued). */
static int kproxy_conn_outcome(struct kproxy_conn *c)
{
	struct sock *sk = c->upstream->sk;

	switch (READ_ONCE(sk->sk_state)) {
	case TCP_ESTABLISHED:
	case TCP_CLOSE_WAIT:
		return KPROXY_LC_CREATED;
	case TCP_SYN_SENT:
		if (time_before(jiffies, c->deadline)) {
			queue_delayed_work(kproxy_wq, &c->work,
					   c->deadline - jiffies);
			return -EINPROGRESS;
		}
		return KPROXY_LC_FAILED_TIMEOUT;
	case TCP_CLOSE:
		return kproxy_conn_cause(READ_ONCE(sk->sk_err));
	default:
		return KPROXY_LC_FAILED_OTHER;
	}
}

/*
 * The first step: make the upstream socket and start its connect. Returns
 * -EINPROGRESS while the connect is in flight, else the outcome.
 */
static int kproxy_conn_start(struct kproxy_conn *c)
{
	struct kproxy_listener *l = c->l;
	unsigned long timeout = msecs_to_jiffies(l->timeout_ms);
	struct sock *sk;
	int err;

	err = sock_create_kern(l->net, l->target.ss_family, SOCK_STREAM,
			       IPPROTO_TCP, &c->upstream);
	if (err) {
		c->upstream = NULL;
		return KPROXY_LC_FAILED_OTHER;
	}
	sk = c->upstream->sk;
	/*
	 * A parser sends each message on its own: without Nagle, else a body
	 * framed apart from its header block waits for the backend's delayed
	 * ACK of the header (40 ms a request). The client's side inherits the
	 * listening socket's TCP_NODELAY, its owner's choice (serve sets it).
	 */
	if (l->prog[KPROXY_BPF_KIND_PARSER])
		tcp_sock_set_nodelay(sk);
	if (l->source.ss_family) {
		err = kernel_bind(c->upstream, KPROXY_SOCKADDR(&l->source),
				  kproxy_addr_len(&l->source));
		if (err)
			return KPROXY_LC_FAILED_OTHER;
	}
	c->deadline = jiffies + timeout;
	err = kernel_connect(c->upstream, KPROXY_SOCKADDR(&l->target),
			     kproxy_addr_len(&l->target), O_NONBLOCK);
	if (err && err != -EINPROGRESS)
		return kproxy_conn_cause(-err);
	/*
	 * A near target (loopback, a local container) has often answered
	 * by the time connect() returns, its SYN-ACK processed at
	 * release_sock(): join now, without a trip through the work.
	 */
	if (READ_ONCE(sk->sk_state) != TCP_SYN_SENT)
		return kproxy_conn_outcome(c);

	write_lock_bh(&sk->sk_callback_lock);
	c->saved_state_change = sk->sk_state_change;
	sk->sk_user_data = c;
	WRITE_ONCE(sk->sk_state_change, kproxy_conn_state_change);
	write_unlock_bh(&sk->sk_callback_lock);
	c->hooked = true;
	/* It may have completed before the hook: then look at once. */
	if (READ_ONCE(sk->sk_state) != TCP_SYN_SENT)
		mod_delayed_work(kproxy_wq, &c->work, 0);
	else
		queue_delayed_work(kproxy_wq, &c->work, timeout);
	return -EINPROGRESS;
}

/*
 * kproxy_join()'s @published for a listener's proxy, under kproxy_lock:
 * the proxy carries the listener's id and programs, and is counted
 * active before its conn stops being pending.
 */
static int kproxy_listener_published(struct kproxy *kp, void *arg)
{
	struct kproxy_listener *l = arg;
	int err;

	if (test_bit(KPROXY_LISTENER_DEAD, &l->flags))
		return -ESHUTDOWN;
	err = kproxy_bpf_attach_new(kp, l->prog, l->verdict_dir, l->replies);
	if (err)
		return err;
	kp->listener_id = l->id;
	kp->notify_portid = l->notify_portid;
	l->active++;
	kproxy_count(l, KPROXY_LC_CREATED);
	kproxy_nl_notify_new(kp);
	return 0;
}

/* The conn is done: join or reset, count, and free it. */
static void kproxy_conn_end(struct kproxy_conn *c, int outcome)
{
	struct kproxy_listener *l = c->l;
	struct sock *sk;

	if (c->hooked) {
		sk = c->upstream->sk;
		write_lock_bh(&sk->sk_callback_lock);
		if (sk->sk_state_change == kproxy_conn_state_change)
			WRITE_ONCE(sk->sk_state_change, c->saved_state_change);
		if (sk->sk_user_data == c)
			sk->sk_user_data = NULL;
		write_unlock_bh(&sk->sk_callback_lock);
	}
	spin_lock(&l->lock);
	list_del(&c->node);
	spin_unlock(&l->lock);
	/* Nobody can queue it any more: drop a run still queued. */
	cancel_delayed_work(&c->work);

	/*
	 * Joined, the upstream socket may outlive the proxy in TCP (FIN_WAIT,
	 * LAST_ACK): from now on it holds its netns as any socket does. Until
	 * then it holds none, so that connects in flight do not keep a netns
	 * from being deleted: its exit resets them (SO_LINGER 0 closes a
	 * connecting socket at once, leaving nothing behind).
	 */
	if (outcome == KPROXY_LC_CREATED &&
	    !kproxy_sock_hold_net(c->upstream->sk))
		outcome = KPROXY_LC_FAILED_OTHER;
	if (outcome == KPROXY_LC_CREATED) {
		if (!kproxy_join(l->net, c->client, c->upstream, true,
				 l->memcg, kproxy_listener_published, l, NULL)) {
			c->client = NULL;
			c->upstream = NULL;
		} else {
			outcome = KPROXY_LC_FAILED_OTHER;
		}
	}
	if (c->client)
		kproxy_reset(c->client);
	if (c->upstream)
		kproxy_reset(c->upstream);
	if (outcome != KPROXY_LC_CREATED)
		kproxy_count(l, outcome);

	/* The last touch of the listener: its deleter may free it now. */
	atomic_dec(&l->pending);
	wake_up_all(&kproxy_listener_wq);
	kfree(c);
}

static void kproxy_conn_work(struct work_struct *work)
{
	struct kproxy_conn *c = container_of(to_delayed_work(work),
					     struct kproxy_conn, work);
	struct kproxy_listener *l = c->l;
	struct mem_cgroup *old;
	int outcome;

	old = set_active_memcg(l->memcg);
	if (test_bit(KPROXY_LISTENER_DEAD, &l->flags))
		outcome = KPROXY_LC_FAILED_OTHER;
	else if (!c->upstream)
		outcome = kproxy_conn_start(c);
	else
		outcome = kproxy_conn_outcome(c);
	if (outcome != -EINPROGRESS)
		kproxy_conn_end(c, outcome);
	set_active_memcg(old);
}

/* A connection accepted: reset it at the limit, else start its connect. */
static void kproxy_listener_take(struct kproxy_listener *l,
				 struct socket *client)
{
	u32 max = l->max_proxies;
	struct kproxy_conn *c;

	if (max && READ_ONCE(l->active) + atomic_read(&l->pending) >= max) {
		kproxy_count(l, KPROXY_LC_REFUSED_LIMIT);
		kproxy_reset(client);
		return;
	}
	c = kzalloc(sizeof(*c), GFP_KERNEL_ACCOUNT);
	if (!c) {
		kproxy_count(l, KPROXY_LC_FAILED_OTHER);
		kproxy_reset(client);
		return;
	}
	c->l = l;
	c->client = client;
	INIT_DELAYED_WORK(&c->work, kproxy_conn_work);
	atomic_inc(&l->pending);
	spin_lock(&l->lock);
	list_add_tail(&c->node, &l->conns);
	spin_unlock(&l->lock);
	/*
	 * The first step runs here, in the accept work: the connect does not
	 * block, and a connect that completes at once is joined at once. No
	 * one else can queue the conn's work before kproxy_conn_start() hooks
	 * the upstream socket (the deleter cancels this accept work before
	 * it requeues conns), so the conn is still driven by one context at
	 * a time.
	 */
	kproxy_conn_work(&c->work.work);
}

static void kproxy_accept_work(struct work_struct *work)
{
	struct kproxy_listener *l = container_of(work, struct kproxy_listener,
						 accept_work);
	struct socket *client;
	struct mem_cgroup *old;
	int n;

	if (!test_bit(KPROXY_LISTENER_RUNNING, &l->flags))
		return;
	old = set_active_memcg(l->memcg);
	for (n = 0; n < KPROXY_ACCEPT_BATCH; n++) {
		if (test_bit(KPROXY_LISTENER_DEAD, &l->flags))
			break;
		/*
		 * Any error ends the batch: EAGAIN (none left), or one that
		 * the next data_ready retries (ENOMEM) or that no retry
		 * cures (the owner shut the socket down).
		 */
		if (kernel_accept(l->sock, &client, O_NONBLOCK))
			break;
		kproxy_count(l, KPROXY_LC_ACCEPTED);
		kproxy_listener_take(l, client);
	}
	set_active_memcg(old);
	/* Out of budget: yield, then go on. */
	if (n == KPROXY_ACCEPT_BATCH)
		queue_work(kproxy_wq, &l->accept_work);
}

/* ---- lifetime ------------------------------------------------------------ */

/*
 * Make a listener of @args (whose socket and program references it takes
 * over on success; on error they are still the caller's). @published
 * runs under kproxy_lock once it has its id, as for proxies.
 */
int kproxy_listener_create(struct net *net, struct kproxy_listener_new *args,
			   int (*published)(struct kproxy_listener *l, void *arg),
			   void *arg, struct netlink_ext_ack *extack)
{
	struct kproxy_net *kn = kproxy_pernet(net);
	struct kproxy_listener *l;
	int err, id, i;

	l = kzalloc(sizeof(*l), GFP_KERNEL_ACCOUNT);
	if (!l)
		return -ENOMEM;
	l->net = net;
	l->sock = args->sock;
	l->target = args->target;
	l->source = args->source;
	l->max_proxies = args->max_proxies;
	l->timeout_ms = args->timeout_ms;
	l->notify_portid = args->notify_portid;
	l->memcg = get_mem_cgroup_from_mm(current->mm);
	l->created_ns = ktime_get_real_ns();
	INIT_LIST_HEAD(&l->net_node);
	INIT_LIST_HEAD(&l->conns);
	INIT_WORK(&l->accept_work, kproxy_accept_work);
	spin_lock_init(&l->lock);
	for (i = 0; i < KPROXY_LC_MAX; i++)
		atomic64_set(&l->counters[i], 0);
	for (i = 0; i < 2; i++)
		l->prog[i] = args->prog[i];
	l->replies = kproxy_replies_get(args->replies);
	l->verdict_dir = args->verdict_dir;

	init_waitqueue_func_entry(&l->wait, kproxy_listener_wake);

	err = kproxy_listener_check_sock(l, extack);
	if (err)
		goto err_free;

	mutex_lock(&kproxy_lock);
	if (kproxy_unloading) {
		NL_SET_ERR_MSG(extack, "kproxy is being unloaded");
		err = -ESHUTDOWN;
		goto err_unlock;
	}
	if (kproxy_listener_sock_taken(l->sock->sk)) {
		NL_SET_ERR_MSG(extack, "fd is already the socket of a listener");
		err = -EBUSY;
		goto err_unlock;
	}
	id = idr_alloc_cyclic(&kproxy_listener_idr, l, 1, INT_MAX, GFP_KERNEL);
	if (id < 0) {
		err = id;
		goto err_unlock;
	}
	l->id = id;
	err = published(l, arg);
	if (err) {
		idr_remove(&kproxy_listener_idr, id);
		goto err_unlock;
	}
	list_add_tail(&l->net_node, &kn->listeners);
	kn->listener_count++;
	kproxy_listener_count++;
	kn->gen++;
	set_bit(KPROXY_LISTENER_RUNNING, &l->flags);
	add_wait_queue(&l->sock->wq.wait, &l->wait);
	/* Connections may be waiting already. */
	queue_work(kproxy_wq, &l->accept_work);
	mutex_unlock(&kproxy_lock);
	return 0;

err_unlock:
	mutex_unlock(&kproxy_lock);
err_free:
	kproxy_replies_put(l->replies);
	mem_cgroup_put(l->memcg);
	kfree(l);
	return err;
}

/* Caller holds kproxy_lock. */
struct kproxy_listener *kproxy_listener_find(struct net *net, u32 id)
{
	struct kproxy_listener *l;

	if (id > INT_MAX)
		return NULL;
	l = idr_find(&kproxy_listener_idr, id);
	if (!l || !net_eq(l->net, net) ||
	    test_bit(KPROXY_LISTENER_DEAD, &l->flags))
		return NULL;
	return l;
}

/* Caller holds kproxy_lock; true if the caller now owns the deletion. */
static bool kproxy_listener_claim(struct kproxy_listener *l)
{
	lockdep_assert_held(&kproxy_lock);
	if (test_and_set_bit(KPROXY_LISTENER_DEAD, &l->flags))
		return false;
	kproxy_pernet(l->net)->gen++;
	return true;
}

/* Under kproxy_lock, from kproxy_destroy(): one proxy fewer. */
void kproxy_listener_proxy_ended(struct kproxy *kp)
{
	struct kproxy_listener *l;

	lockdep_assert_held(&kproxy_lock);
	l = idr_find(&kproxy_listener_idr, kp->listener_id);
	if (!l)
		return;
	if (l->active)
		l->active--;
	/* Its final counters: the proxy's works are done. */
	kproxy_count(l, KPROXY_LC_ENDED);
	atomic64_add(READ_ONCE(kp->dir[KPROXY_A_TO_B].bytes),
		     &l->counters[KPROXY_LC_ENDED_BYTES_A_TO_B]);
	atomic64_add(READ_ONCE(kp->dir[KPROXY_B_TO_A].bytes),
		     &l->counters[KPROXY_LC_ENDED_BYTES_B_TO_A]);
}

/* End the live proxies listener @id made, with reason user. */
static void kproxy_listener_end_proxies(struct net *net, u32 id)
{
	struct kproxy *kp;
	LIST_HEAD(mine);
	int pid;

	mutex_lock(&kproxy_lock);
	idr_for_each_entry(&kproxy_idr, kp, pid) {
		if (kp->listener_id == id && net_eq(kp->net, net) &&
		    kproxy_claim(kp, KPROXY_REASON_USER))
			list_move_tail(&kp->net_node, &mine);
	}
	mutex_unlock(&kproxy_lock);

	/* kproxy_destroy() unlinks net_node from our list, then frees. */
	while (!list_empty(&mine)) {
		kp = list_first_entry(&mine, struct kproxy, net_node);
		kproxy_destroy(kp);
	}
}

/* The owner of a claimed listener deletes it; process context. */
static void kproxy_listener_destroy(struct kproxy_listener *l, bool end_proxies)
{
	struct kproxy_listener_info info;
	struct kproxy_conn *c;
	int i;

	/* No wakeup reaches the listener after this, and no accept runs. */
	remove_wait_queue(&l->sock->wq.wait, &l->wait);
	cancel_work_sync(&l->accept_work);

	spin_lock(&l->lock);
	list_for_each_entry(c, &l->conns, node)
		mod_delayed_work(kproxy_wq, &c->work, 0);
	spin_unlock(&l->lock);
	wait_event(kproxy_listener_wq, !atomic_read(&l->pending));

	if (end_proxies)
		kproxy_listener_end_proxies(l->net, l->id);

	mutex_lock(&kproxy_lock);
	kproxy_listener_info(l, &info);
	mutex_unlock(&kproxy_lock);
	kproxy_nl_notify_listener(l->net, &info, KPROXY_CMD_LISTENER_DEL_NTF);

	mutex_lock(&kproxy_lock);
	idr_remove(&kproxy_listener_idr, l->id);
	list_del(&l->net_node);
	kproxy_pernet(l->net)->listener_count--;
	kproxy_pernet(l->net)->gen++;
	kproxy_listener_count--;
	mutex_unlock(&kproxy_lock);
	/* From here on l->net may be gone: kproxy_listener_end_all() returns. */
	wake_up_all(&kproxy_listener_wq);

	sockfd_put(l->sock);
	for (i = 0; i < 2; i++)
		if (l->prog[i])
			bpf_prog_put(l->prog[i]);
	kproxy_replies_put(l->replies);
	mem_cgroup_put(l->memcg);
	kfree(l);
}

int kproxy_listener_delete(struct net *net, u32 id, bool end_proxies)
{
	struct kproxy_listener *l;

	/* A listener found under the lock is not DEAD: the claim succeeds. */
	mutex_lock(&kproxy_lock);
	l = kproxy_listener_find(net, id);
	if (l)
		kproxy_listener_claim(l);
	mutex_unlock(&kproxy_lock);
	if (!l)
		return -ENOENT;
	kproxy_listener_destroy(l, end_proxies);
	return 0;
}

static bool kproxy_listeners_gone(struct net *net)
{
	bool gone;

	mutex_lock(&kproxy_lock);
	/* Counts, not lists: another deleter may hold some on its own list. */
	gone = net ? !kproxy_pernet(net)->listener_count :
		     !kproxy_listener_count;
	mutex_unlock(&kproxy_lock);
	return gone;
}

/*
 * Delete every listener of @net, or of every netns when @net is NULL
 * (unload), and wait until all are freed, those others were deleting
 * too. Their proxies are left to the caller, which ends them next.
 */
void kproxy_listener_end_all(struct net *net)
{
	struct kproxy_listener *l;
	LIST_HEAD(mine);
	int id;

	mutex_lock(&kproxy_lock);
	idr_for_each_entry(&kproxy_listener_idr, l, id) {
		if (net && !net_eq(l->net, net))
			continue;
		if (kproxy_listener_claim(l))
			list_move_tail(&l->net_node, &mine);
	}
	mutex_unlock(&kproxy_lock);

	/* kproxy_listener_destroy() unlinks net_node from our list. */
	while (!list_empty(&mine)) {
		l = list_first_entry(&mine, struct kproxy_listener, net_node);
		kproxy_listener_destroy(l, false);
	}
	wait_event(kproxy_listener_wq, kproxy_listeners_gone(net));
}

/* ---- what it shows -------------------------------------------------------- */

static void kproxy_sk_local(struct sock *sk, struct sockaddr_storage *ss)
{
	const struct inet_sock *inet = inet_sk(sk);

	memset(ss, 0, sizeof(*ss));
#if IS_ENABLED(CONFIG_IPV6)
	if (sk->sk_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_addr = sk->sk_v6_rcv_saddr;
		sin6->sin6_port = inet->inet_sport;
		return;
	}
#endif
	((struct sockaddr_in *)ss)->sin_family = AF_INET;
	((struct sockaddr_in *)ss)->sin_addr.s_addr = inet->inet_rcv_saddr;
	((struct sockaddr_in *)ss)->sin_port = inet->inet_sport;
}

/* A snapshot of @l; caller holds kproxy_lock. */
void kproxy_listener_info(const struct kproxy_listener *l,
			  struct kproxy_listener_info *info)
{
	int i;

	lockdep_assert_held(&kproxy_lock);
	info->id = l->id;
	kproxy_sk_local(l->sock->sk, &info->listen);
	info->target = l->target;
	info->source = l->source;
	info->max_proxies = l->max_proxies;
	info->timeout_ms = l->timeout_ms;
	for (i = 0; i < 2; i++)
		info->prog_id[i] = l->prog[i] ? l->prog[i]->aux->id : 0;
	info->verdict_dir = l->verdict_dir;
	info->created_ns = l->created_ns;
	for (i = 0; i < KPROXY_LC_MAX; i++)
		info->counters[i] = atomic64_read(&l->counters[i]);
	info->active = l->active;
	info->pending = atomic_read(&l->pending);
}

/* For /proc: the live listeners of a netns list, skipping deleted ones. */
bool kproxy_listener_live(const struct kproxy_listener *l)
{
	return !test_bit(KPROXY_LISTENER_DEAD, &l->flags);
}

struct kproxy_listener *kproxy_listener_of(struct list_head *node)
{
	return list_entry(node, struct kproxy_listener, net_node);
}
