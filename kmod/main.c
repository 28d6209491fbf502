// SPDX-License-Identifier: GPL-2.0
/*
 * kproxy module: init and exit, per-netns state.
 */
#include <linux/debugfs.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/wait.h>
#include <net/net_namespace.h>
#include <net/netns/generic.h>

#include "compat.h"
#include "kproxy.h"

/* The rules of these objects are in kproxy.h. */
DEFINE_MUTEX(kproxy_lock);
DEFINE_IDR(kproxy_idr);
struct workqueue_struct *kproxy_wq;
struct workqueue_struct *kproxy_dir_wq;
bool kproxy_unloading;	/* no new proxy once set (kproxy_lock) */
atomic_t kproxy_objects = ATOMIC_INIT(0);
DECLARE_WAIT_QUEUE_HEAD(kproxy_destroyed_wq);

/*
 * Live proxies a network namespace may hold: each pins two sockets beyond
 * its creator's RLIMIT_NOFILE, and up to twice KPROXY_QUEUE_MAX of memory.
 */
unsigned int kproxy_max_proxies = 65536;
module_param_named(max_proxies, kproxy_max_proxies, uint, 0644);
MODULE_PARM_DESC(max_proxies, "Live proxies allowed per network namespace (default 65536)");

/*
 * Whether the root of a user namespace (CAP_NET_ADMIN over a network
 * namespace it owns, but not over the initial one) may manage proxies.
 * Off by default: Debian lets every user make such a namespace, and a
 * proxy pins sockets and memory beyond that user's limits.
 */
bool kproxy_userns_admin;
module_param_named(userns_admin, kproxy_userns_admin, bool, 0644);
MODULE_PARM_DESC(userns_admin, "Let a user namespace's root manage proxies in the network namespaces it owns (default N)");

static struct dentry *kproxy_debugfs;

static unsigned int kproxy_net_id __read_mostly;

struct kproxy_net *kproxy_pernet(struct net *net)
{
	return net_generic(net, kproxy_net_id);
}

static int __net_init kproxy_net_init(struct net *net)
{
	struct kproxy_net *kn = kproxy_pernet(net);

	INIT_LIST_HEAD(&kn->proxies);
	INIT_LIST_HEAD(&kn->listeners);
	return kproxy_proc_init(net);
}

static void __net_exit kproxy_net_exit(struct net *net)
{
	/* Listeners first: none makes a proxy once they are gone. */
	kproxy_listener_end_all(net);
	kproxy_end_all(net, KPROXY_REASON_NETNS_EXIT);
	kproxy_proc_exit(net);
}

static struct pernet_operations kproxy_net_ops = {
	.init = kproxy_net_init,
	.exit = kproxy_net_exit,
	.id = &kproxy_net_id,
	.size = sizeof(struct kproxy_net),
};

static int __init kproxy_init(void)
{
	int err;

	/* Ends and listeners: anywhere. */
	kproxy_wq = alloc_workqueue("kproxy", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!kproxy_wq)
		return -ENOMEM;
	/*
	 * The directions' works: per CPU, so that each wakeup chooses the CPU
	 * it runs on (kproxy_dir_wake_data()). Unbound, a request's wakeup
	 * crossed CPUs: 64 B request/response p50 was 2.8x direct TCP, 1.6x
	 * now. Normal priority: WQ_HIGHPRI workers preempted the senders, and
	 * 64 B streams over four connections fell to a fifth of direct's rate
	 * (make bench, 6.12 under TCG). Every queueing of a direction's work
	 * goes here: a work is non-reentrant only within one queue.
	 */
	kproxy_dir_wq = alloc_workqueue("kproxy_dir", WQ_PERCPU | WQ_MEM_RECLAIM, 0);
	if (!kproxy_dir_wq) {
		err = -ENOMEM;
		goto err_wq;
	}

	err = register_pernet_subsys(&kproxy_net_ops);
	if (err)
		goto err_dir_wq;

	err = kproxy_nl_init();
	if (err)
		goto err_pernet;

	/* Root-only and best effort: debugfs failures are not errors. */
	kproxy_debugfs = debugfs_create_dir("kproxy", NULL);
	debugfs_create_atomic_t("objects", 0400, kproxy_debugfs, &kproxy_objects);
	return 0;

err_pernet:
	unregister_pernet_subsys(&kproxy_net_ops);
err_dir_wq:
	destroy_workqueue(kproxy_dir_wq);
err_wq:
	destroy_workqueue(kproxy_wq);
	return err;
}

static void __exit kproxy_exit(void)
{
	/* End every proxy while the family can still tell the monitors. */
	mutex_lock(&kproxy_lock);
	kproxy_unloading = true;
	mutex_unlock(&kproxy_lock);
	kproxy_listener_end_all(NULL);
	kproxy_end_all(NULL, KPROXY_REASON_UNLOAD);
	debugfs_remove_recursive(kproxy_debugfs);

	kproxy_nl_exit();
	unregister_pernet_subsys(&kproxy_net_ops);
	destroy_workqueue(kproxy_dir_wq);
	destroy_workqueue(kproxy_wq);
	idr_destroy(&kproxy_idr);
	idr_destroy(&kproxy_listener_idr);
}

module_init(kproxy_init);
module_exit(kproxy_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Join two TCP sockets inside the kernel");
MODULE_AUTHOR("kproxy developers");
MODULE_VERSION("0.1.0");
