// SPDX-License-Identifier: GPL-2.0
/*
 * Proxy lifetime: join two sockets, look proxies up, end them.
 * Locking and reference rules are in kproxy.h.
 */
#include <linux/file.h>
#include <linux/memcontrol.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include <net/inet_connection_sock.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "compat.h"
#include "kproxy.h"
#include "netlink-gen.h"

static void kproxy_end_work(struct work_struct *work)
{
	kproxy_destroy(container_of(work, struct kproxy, end_work));
}

/* Give a proxy's sockets up: file references, or file-less sockets it owns. */
static void kproxy_put_socks(struct kproxy *kp)
{
	int i;

	for (i = 0; i < 2; i++) {
		if (test_bit(KPROXY_KERNEL_SOCKS, &kp->flags))
			sock_release(kp->sock[i]);
		else
			sockfd_put(kp->sock[i]);
	}
}

/*
 * Join two sockets the caller holds: by file reference (sockfd_lookup(),
 * @kernel_socks false) or file-less ones it owns (@kernel_socks true, a
 * listener's). On success the proxy has taken them over; on error they
 * are still the caller's. The proxy takes its own reference on @memcg.
 *
 * @published runs under kproxy_lock once the proxy has its id, just
 * before it is made visible: the one moment its creator may describe it,
 * since ending it takes kproxy_lock (kproxy_claim()) and it may end, and
 * be freed, as soon as the lock is released. An error from @published
 * undoes the creation, so an error always means no proxy was made; BPF
 * programs @published attached are released then.
 */
int kproxy_join(struct net *net, struct socket *sock_a, struct socket *sock_b,
		bool kernel_socks, struct mem_cgroup *memcg,
		int (*published)(struct kproxy *kp, void *arg), void *arg,
		struct netlink_ext_ack *extack)
{
	struct kproxy_net *kn = kproxy_pernet(net);
	struct kproxy *kp;
	int err, id, i;

	/* An idle proxy costs one kmalloc-512 object (lock debugging aside). */
	BUILD_BUG_ON(!IS_ENABLED(CONFIG_DEBUG_SPINLOCK) &&
		     !IS_ENABLED(CONFIG_LOCKDEP) && sizeof(*kp) > 512);
	if (sock_a == sock_b) {
		NL_SET_ERR_MSG(extack, "fd-a and fd-b are the same socket");
		return -EINVAL;
	}
	kp = kzalloc(sizeof(*kp), GFP_KERNEL_ACCOUNT);
	if (!kp)
		return -ENOMEM;
	atomic_inc(&kproxy_objects);
	kp->net = net;
	kp->memcg = kproxy_memcg_get(memcg);
	INIT_LIST_HEAD(&kp->net_node);
	INIT_WORK(&kp->end_work, kproxy_end_work);
	kp->created_ns = ktime_get_real_ns();
	kp->last_dir = U8_MAX;		/* none has run yet */
	kp->sock[0] = sock_a;
	kp->sock[1] = sock_b;
	if (kernel_socks)
		__set_bit(KPROXY_KERNEL_SOCKS, &kp->flags);

	for (i = 0; i < 2; i++)
		kproxy_dir_init(kp, i);

	err = kproxy_hook(kp, 0, extack);
	if (err)
		goto err_free;
	err = kproxy_hook(kp, 1, extack);
	if (err)
		goto err_unhook_a;

	mutex_lock(&kproxy_lock);
	if (kproxy_unloading) {
		NL_SET_ERR_MSG(extack, "kproxy is being unloaded");
		err = -ESHUTDOWN;
		goto err_unlock;
	}
	if (kn->count >= READ_ONCE(kproxy_max_proxies)) {
		NL_SET_ERR_MSG(extack,
			       "this network namespace has reached its limit of proxies (module parameter max_proxies)");
		err = -ENOSPC;
		goto err_unlock;
	}
	id = idr_alloc_cyclic(&kproxy_idr, kp, 1, INT_MAX, GFP_KERNEL);
	if (id < 0) {
		err = id;
		goto err_unlock;
	}
	kp->id = id;
	err = published(kp, arg);
	if (err) {
		idr_remove(&kproxy_idr, id);
		goto err_unlock;
	}
	list_add_tail(&kp->net_node, &kn->proxies);
	WRITE_ONCE(kn->count, kn->count + 1);
	kn->totals.created++;
	kn->gen++;
	set_bit(KPROXY_RUNNING, &kp->flags);
	/* Bytes may be queued already, and a FIN with them. */
	kproxy_dir_kick(&kp->dir[0]);
	kproxy_dir_kick(&kp->dir[1]);
	mutex_unlock(&kproxy_lock);
	return 0;

err_unlock:
	mutex_unlock(&kproxy_lock);
	kproxy_unhook(kp, 1);
err_unhook_a:
	kproxy_unhook(kp, 0);
	/* Callbacks may have queued works; they return at once (not RUNNING). */
	cancel_work_sync(&kp->dir[0].work);
	cancel_work_sync(&kp->dir[1].work);
	kproxy_bpf_release(&kp->dir[0]);
	kproxy_bpf_release(&kp->dir[1]);
	kproxy_bpf_free(&kp->dir[0]);
	kproxy_bpf_free(&kp->dir[1]);
err_free:
	mem_cgroup_put(kp->memcg);
	kfree(kp);
	atomic_dec(&kproxy_objects);
	wake_up_all(&kproxy_destroyed_wq);	/* an unload may be waiting */
	return err;
}

/* proxy-new: join two sockets of the caller's fd table; see kproxy_join(). */
int kproxy_create(struct net *net, int fd_a, int fd_b,
		  int (*published)(struct kproxy *kp, void *arg), void *arg,
		  struct netlink_ext_ack *extack)
{
	struct socket *sock_a, *sock_b;
	struct mem_cgroup *memcg;
	int err;

	sock_a = kproxy_get_socket(fd_a, 0, extack);
	if (IS_ERR(sock_a))
		return PTR_ERR(sock_a);
	sock_b = kproxy_get_socket(fd_b, 1, extack);
	if (IS_ERR(sock_b)) {
		err = PTR_ERR(sock_b);
		goto out_put_a;
	}
	memcg = get_mem_cgroup_from_mm(current->mm);
	err = kproxy_join(net, sock_a, sock_b, false, memcg, published, arg,
			  extack);
	mem_cgroup_put(memcg);
	if (!err)
		return 0;
	sockfd_put(sock_b);
out_put_a:
	sockfd_put(sock_a);
	return err;
}

/* Caller holds kproxy_lock. */
struct kproxy *kproxy_find(struct net *net, u32 id)
{
	struct kproxy *kp;

	if (id > INT_MAX)
		return NULL;
	kp = idr_find(&kproxy_idr, id);
	if (!kp || !net_eq(kp->net, net) || test_bit(KPROXY_DEAD, &kp->flags))
		return NULL;
	return kp;
}

enum kproxy_state kproxy_state(const struct kproxy *kp)
{
	if (test_bit(KPROXY_DEAD, &kp->flags))
		return KPROXY_STATE_CLOSING;
	if (test_bit(KPROXY_SHUT_A_TO_B, &kp->flags) ||
	    test_bit(KPROXY_SHUT_B_TO_A, &kp->flags))
		return KPROXY_STATE_HALF_CLOSED;
	return KPROXY_STATE_ACTIVE;
}

/*
 * Caller holds kproxy_lock. Returns true if the caller now owns the
 * teardown. The proxy stays in the idr (so ids are not reused while it
 * ends) and counted in its netns, but is no longer found by lookups;
 * kproxy_destroy() unlinks it.
 */
bool kproxy_claim(struct kproxy *kp, enum kproxy_reason reason)
{
	lockdep_assert_held(&kproxy_lock);

	if (test_and_set_bit(KPROXY_DEAD, &kp->flags))
		return false;
	kp->reason = reason;
	kproxy_pernet(kp->net)->gen++;
	return true;
}

/*
 * From the data path: end the proxy from a work item of its own. The
 * destroy is queued under the lock that claims: once it is released, a
 * netns exit or an unload may wait for the proxy, never miss it.
 */
void kproxy_end_async(struct kproxy *kp, enum kproxy_reason reason)
{
	mutex_lock(&kproxy_lock);
	if (kproxy_claim(kp, reason))
		queue_work(kproxy_wq, &kp->end_work);
	mutex_unlock(&kproxy_lock);
}

/* Add a proxy's counters to @t; the data path may still be counting. */
void kproxy_add_totals(struct kproxy_totals *t, const struct kproxy *kp)
{
	int i;

	for (i = 0; i < 2; i++) {
		t->bytes += READ_ONCE(kp->dir[i].bytes);
		t->skbs += READ_ONCE(kp->dir[i].skbs);
		t->msgs += READ_ONCE(kp->dir[i].msgs);
		t->drops += READ_ONCE(kp->dir[i].drops);
		t->sends += READ_ONCE(kp->dir[i].sends);
		t->runs += READ_ONCE(kp->dir[i].runs);
		if (kp->dir[i].tls_src)
			t->tls_records_in +=
				kproxy_tls_records(kp->sock[i]->sk, false);
		if (kp->dir[i].tls_dst)
			t->tls_records_out +=
				kproxy_tls_records(kp->sock[!i]->sk, true);
	}
}

/* The owner of a claimed proxy ends it; process context. */
void kproxy_destroy(struct kproxy *kp)
{
	bool abort = kp->reason == KPROXY_REASON_RESET ||
		     kp->reason == KPROXY_REASON_ERROR ||
		     kp->reason == KPROXY_REASON_TLS_ALERT ||
		     kp->reason == KPROXY_REASON_TLS_REKEY;
	struct kproxy_net *kn;
	int i;

	kproxy_unhook(kp, 0);
	kproxy_unhook(kp, 1);
	cancel_work_sync(&kp->dir[0].work);
	cancel_work_sync(&kp->dir[1].work);

	for (i = 0; i < 2; i++) {
		if (abort)
			kproxy_dir_purge(&kp->dir[i]);
		else
			kproxy_dir_drain(&kp->dir[i]);
		kproxy_bpf_release(&kp->dir[i]);
	}
	for (i = 0; i < 2; i++) {
		if (abort)
			tcp_abort(kp->sock[i]->sk, ECONNRESET);
		else
			kproxy_hand_back(kp, i);
	}

	kproxy_nl_notify_end(kp);

	mutex_lock(&kproxy_lock);
	kn = kproxy_pernet(kp->net);
	list_del(&kp->net_node);
	WRITE_ONCE(kn->count, kn->count - 1);
	idr_remove(&kproxy_idr, kp->id);
	kn->totals.ended[kp->reason]++;
	kproxy_add_totals(&kn->totals, kp);
	kn->gen++;
	if (kp->listener_id)
		kproxy_listener_proxy_ended(kp);
	mutex_unlock(&kproxy_lock);
	/* From here on kp->net may be gone: kproxy_end_all() may return. */

	for (i = 0; i < 2; i++)
		kproxy_bpf_free(&kp->dir[i]);
	kproxy_put_socks(kp);
	mem_cgroup_put(kp->memcg);
	kfree(kp);
	atomic_dec(&kproxy_objects);
	wake_up_all(&kproxy_destroyed_wq);
}

/* Whether every proxy of @net (of all, when NULL) has been destroyed. */
static bool kproxy_none_left(struct net *net)
{
	if (!net)
		return !atomic_read(&kproxy_objects);
	return !READ_ONCE(kproxy_pernet(net)->count);
}

/*
 * End every proxy of @net, or of every netns when @net is NULL (unload),
 * and wait until all have ended, including those the data path claimed.
 */
void kproxy_end_all(struct net *net, enum kproxy_reason reason)
{
	struct kproxy *kp;
	LIST_HEAD(mine);
	int id;

	mutex_lock(&kproxy_lock);
	idr_for_each_entry(&kproxy_idr, kp, id) {
		if (net && !net_eq(kp->net, net))
			continue;
		if (kproxy_claim(kp, reason))
			list_move_tail(&kp->net_node, &mine);
	}
	mutex_unlock(&kproxy_lock);

	/* kproxy_destroy() unlinks net_node from our list, then frees. */
	while (!list_empty(&mine)) {
		kp = list_first_entry(&mine, struct kproxy, net_node);
		kproxy_destroy(kp);
	}
	/* Those claimed by others, by the data path or by proxy-del. */
	wait_event(kproxy_destroyed_wq, kproxy_none_left(net));
}
