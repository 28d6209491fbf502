/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kproxy: join two connected TCP sockets inside the kernel.
 *
 * Objects and their rules, stated once here:
 *
 * kproxy_lock (mutex) protects kproxy_idr, every per-netns proxy list,
 * count and totals, the per-netns dump generation, kproxy_unloading, the
 * KPROXY_DEAD claim and each direction's wanted BPF programs. A proxy
 * found through the idr or a netns list under kproxy_lock stays allocated
 * until kproxy_lock is released: it is freed only by kproxy_destroy(),
 * after it has been unlinked under the lock.
 *
 * Ending a proxy has two steps. kproxy_claim() (under kproxy_lock) marks
 * it DEAD and records the reason, so exactly one caller owns the
 * teardown; lookups no longer find it, but it stays in the idr and its
 * netns list (ids are not reused, the netns exit waits for it). The owner
 * then calls kproxy_destroy() from process context, never from one of
 * the proxy's own work items: the data path claims from its work and
 * queues kp->end_work to destroy, under kproxy_lock, so that whoever
 * waits for a netns's proxies to be gone (kproxy_end_all()) also waits
 * for that destroy.
 *
 * A new proxy's works are first queued under kproxy_lock, in the same
 * critical section that publishes it: once the lock is released anyone
 * may claim and free it, and its creator touches it no more.
 *
 * Socket callbacks run in softirq under the socket's bh lock. They read
 * sk_user_data under sk_callback_lock (read side) and only queue work.
 * Unhooking restores the saved callbacks under the write side, after
 * which no callback can reach the proxy; then its work items are
 * cancelled synchronously.
 *
 * The two directions never hold both socket locks: a direction's work
 * reads the source under the source's socket lock into its own queue,
 * releases it, then sends from the queue under the destination's lock.
 * Each direction's queue and counters are written only by its work item
 * (a work item never runs concurrently with itself); readers use
 * READ_ONCE on the counters.
 *
 * References: a proxy made by proxy-new holds one file reference on each
 * socket (taken by sockfd_lookup() and kept), so the caller may close its
 * descriptors. A proxy made by a listener (KPROXY_KERNEL_SOCKS) owns two
 * file-less sockets instead, the accepted one and the upstream one the
 * listener made: nobody else has them, and kproxy_destroy() releases them
 * with sock_release(). Either way the proxy holds one reference on its
 * creator's memory cgroup (kp->memcg), which is charged for the proxy and
 * the data it holds. It holds no reference on its network namespace: the
 * pernet exit ends the namespace's proxies, and waits until the last is
 * destroyed, before the namespace goes away.
 *
 * Listeners (listener.c) have their own rules, stated there; between them
 * and proxies: a proxy knows its listener only by id (kp->listener_id);
 * the listener's count of active proxies is changed under kproxy_lock
 * when the proxy is published and when it is destroyed (which also adds
 * the proxy's final counters to the listener's ended counters), by
 * looking the id up in kproxy_listener_idr (a deleted listener is simply
 * not found).
 * Ending a netns or unloading ends listeners before proxies.
 */
#ifndef _KPROXY_H
#define _KPROXY_H

#include <linux/idr.h>
#include <linux/list.h>
#include <linux/memcontrol.h>
#include <linux/mutex.h>
#include <linux/net.h>
#include <linux/netlink.h>
#include <linux/refcount.h>
#include <linux/skbuff.h>
#include <linux/workqueue.h>
#include <net/net_namespace.h>
#include <net/strparser.h>

#include "uapi/kproxy.h"

/* Direction indices: dir[KPROXY_A_TO_B] reads sock[0] and sends on sock[1]. */
enum { KPROXY_A_TO_B, KPROXY_B_TO_A };

/* kproxy->flags bits */
enum {
	KPROXY_RUNNING,	/* both sockets hooked, works may forward */
	KPROXY_DEAD,	/* claimed for teardown, see kproxy_claim() */
	KPROXY_KERNEL_SOCKS,	/* owns file-less sockets, see above */
	KPROXY_SHUT_A_TO_B,	/* the direction forwarded its FIN ... */
	KPROXY_SHUT_B_TO_A,	/* ... this one too: the proxy ends */
	KPROXY_DENIED,		/* a verdict replied and closed: reason denied */
	KPROXY_FRAMED,		/* a parser framed a message (KPROXY_CB_FRAMED) */
};

/*
 * Memory (truesize, not payload) a direction may hold between reading and
 * sending: the only memory a proxy adds beyond its two sockets' buffers.
 * An skb that would cross it waits in the socket, unless the queue is
 * empty (a single skb larger than the bound passes alone). Once it is
 * reached the direction stops reading, bytes wait in the source's receive
 * queue, and TCP closes the window. Small segments are copied into shared
 * buffers (stream.c), so a peer sending one byte per segment cannot make
 * each byte pin an skb.
 */
#define KPROXY_QUEUE_MAX	(512 * 1024)

struct kproxy;
struct genl_info;

/*
 * The replies of a verdict (verdict-replies), shared by reference: the
 * netlink request, each direction that wants them and each that runs
 * them hold one. Immutable once made.
 */
struct kproxy_replies {
	refcount_t ref;
	u32 count;
	u16 off[KPROXY_REPLIES_MAX];	/* of reply i in data */
	u16 len[KPROXY_REPLIES_MAX];
	u8 data[];
};

/*
 * A direction's strparser, allocated by the first parser attach (most
 * proxies never have one: it would double an idle proxy's size).
 */
struct kproxy_parser {
	struct strparser strp;		/* general mode, while a parser runs */
	struct kproxy_dir *dir;
	struct sk_buff *gather;		/* small segments, copied, see bpf.c */
	u32 gather_fed;			/* bytes of gather given to strp */
	u32 pieces;			/* skbs the message in strp holds */
	int error;			/* from the parser, ends the proxy */
	/* The verdict's replies: wanted (bpf->lock) and adopted (the work). */
	struct kproxy_replies *want_replies;
	struct kproxy_replies *run_replies;
	/*
	 * A reply this direction's verdict chose, for the other direction to
	 * send (taken with xchg(), see kproxy_bpf_take_reply()).
	 */
	struct sk_buff *reply;
	u64 denied;			/* messages answered by a reply */
};

/* BPF programs of one direction; the rules are in bpf.c. */
struct kproxy_bpf {
	spinlock_t lock;		/* want[] vs the work reading it */
	bool strp_on;			/* parser->strp is initialised */
	bool in_msg;			/* the parser is inside a message */
	bool switching;			/* parser stopped to adopt want[] */
	bool changed;			/* want[] changed since adopted */
	struct bpf_prog *want[2];	/* by kind: set by netlink */
	struct bpf_prog *run[2];	/* by kind: in use by the work */
	struct kproxy_parser *parser;	/* set before a parser is wanted */
};

struct kproxy_dir {
	struct sk_buff_head queue;	/* read from src, not yet sent */
	struct work_struct work;
	u32 queued;			/* payload bytes in queue */
	u32 held;			/* truesize of queue, see KPROXY_QUEUE_MAX */
	u8 idx;				/* its index in kproxy->dir, see kproxy_of() */
	bool eof;			/* src's FIN has been read */
	bool shut;			/* FIN forwarded to dst */
	bool tls_src;			/* src is kTLS: read through tls.c */
	bool tls_dst;			/* dst is kTLS: send through tls.c */
	bool denied;			/* a verdict replied: reads no more */
	/*
	 * Where the work runs (kproxy_dir_wake_data()): hints, written by the
	 * work and the wakers without a lock (as kproxy->last_dir); a stale
	 * value only costs one wakeup on a worse CPU. They fill padding.
	 */
	bool running;			/* the work is running */
	bool fed;			/* data came while it last ran */
	u64 bytes;			/* sent on dst */
	u64 skbs;			/* read from src */
	u64 msgs;
	u64 drops;
	u64 sends;			/* kproxy_send_skb() calls */
	u64 runs;			/* work item runs */
	struct kproxy_bpf bpf;
};

/* What joining changed on a socket, put back when it is handed back. */
struct kproxy_saved_cb {
	void (*data_ready)(struct sock *sk);
	void (*write_space)(struct sock *sk);
	void (*state_change)(struct sock *sk);
	int rcvlowat;
	bool urginline;
};

/* Fields ordered so that the whole stays within kmalloc-1k. */
struct kproxy {
	struct net *net;		/* owner netns, no reference (see above) */
	struct list_head net_node;	/* in kproxy_net->proxies */
	struct socket *sock[2];
	struct kproxy_saved_cb saved[2];
	struct kproxy_dir dir[2];
	unsigned long flags;
	u64 created_ns;
	struct mem_cgroup *memcg;	/* the creator's, charged; may be NULL */
	struct work_struct end_work;
	u32 id;
	u8 reason;			/* enum kproxy_reason, by kproxy_claim() */
	/*
	 * The fatal alert a kTLS side received: written by the direction's
	 * work before it claims with reason tls-alert, read by the owner of
	 * the teardown (ordered by kproxy_lock).
	 */
	u8 tls_alert;
	u8 last_dir;			/* whose work ran last, a hint (see fed) */
	/*
	 * Netlink portid, in kp->net, of the socket that sent proxy-new with
	 * the notify flag (0: none; the kernel's portid is never a creator).
	 * Written once, under kproxy_lock before the proxy is published, and
	 * read only by the owner of the teardown: it needs no lock. It holds
	 * no reference: a socket gone by the end is skipped (ECONNREFUSED),
	 * and one that reused the portid gets a del ntf that the monitor
	 * group shows to anyone anyway.
	 */
	u32 notify_portid;
	u32 listener_id;		/* its listener, 0 for proxy-new; fixed */
};

static inline struct kproxy *kproxy_of(struct kproxy_dir *dir)
{
	return container_of(dir - dir->idx, struct kproxy, dir[0]);
}

/* The socket a direction reads. */
static inline struct sock *kproxy_src(struct kproxy_dir *dir)
{
	return kproxy_of(dir)->sock[dir->idx]->sk;
}

/* The socket a direction sends on. */
static inline struct sock *kproxy_dst(struct kproxy_dir *dir)
{
	return kproxy_of(dir)->sock[!dir->idx]->sk;
}

/* Totals of one netns since the module was loaded (kproxy_lock). */
struct kproxy_totals {
	u64 created;
	u64 ended[KPROXY_REASON_DENIED + 1];
	u64 bytes;
	u64 skbs;
	u64 msgs;
	u64 drops;
	u64 sends;
	u64 runs;
	u64 tls_records_in;
	u64 tls_records_out;
};

struct kproxy_net {
	struct list_head proxies;	/* live and claimed, until destroyed */
	struct list_head listeners;	/* see listener.c */
	u32 listener_count;		/* allocated, until freed (kproxy_lock) */
	u32 count;			/* entries of proxies */
	struct kproxy_totals totals;	/* of ended proxies; live ones add theirs */
	u32 gen;			/* bumped on every change, for dumps */
	/* Control records kTLS sides consumed (tickets): no lock. */
	atomic64_t tls_control;
};

extern struct mutex kproxy_lock;
extern struct idr kproxy_idr;
extern struct workqueue_struct *kproxy_wq;
/*
 * Every wakeup of a direction's work goes to this one queue, through
 * kproxy_dir_kick() or data_ready's choice of CPU (stream.c).
 */
extern struct workqueue_struct *kproxy_dir_wq;
extern bool kproxy_unloading;
/* Wakes kproxy_end_all() when a proxy has been destroyed. */
extern wait_queue_head_t kproxy_destroyed_wq;
/* Module parameters, see main.c. */
extern unsigned int kproxy_max_proxies;
extern bool kproxy_userns_admin;
/*
 * struct kproxy objects allocated and not yet freed, module-wide; read by
 * tests through debugfs (kproxy/objects) to prove nothing is leaked.
 */
extern atomic_t kproxy_objects;

struct kproxy_net *kproxy_pernet(struct net *net);

/* Another reference on @memcg, which may be NULL (memcg disabled). */
static inline struct mem_cgroup *kproxy_memcg_get(struct mem_cgroup *memcg)
{
#ifdef CONFIG_MEMCG
	if (memcg)
		css_get(&memcg->css);
#endif
	return memcg;
}

/* proxy.c */
int kproxy_create(struct net *net, int fd_a, int fd_b,
		  int (*published)(struct kproxy *kp, void *arg), void *arg,
		  struct netlink_ext_ack *extack);
int kproxy_join(struct net *net, struct socket *sock_a, struct socket *sock_b,
		bool kernel_socks, struct mem_cgroup *memcg,
		int (*published)(struct kproxy *kp, void *arg), void *arg,
		struct netlink_ext_ack *extack);
struct kproxy *kproxy_find(struct net *net, u32 id);
bool kproxy_claim(struct kproxy *kp, enum kproxy_reason reason);
void kproxy_destroy(struct kproxy *kp);
void kproxy_end_async(struct kproxy *kp, enum kproxy_reason reason);
void kproxy_end_all(struct net *net, enum kproxy_reason reason);
enum kproxy_state kproxy_state(const struct kproxy *kp);
void kproxy_add_totals(struct kproxy_totals *t, const struct kproxy *kp);

/* Extack messages must be string literals on 6.1: one per socket. */
#define KPROXY_FD_ERR(extack, idx, msg_a, msg_b)			\
	do {								\
		struct netlink_ext_ack *__kp_extack = (extack);		\
									\
		if (idx)						\
			NL_SET_ERR_MSG(__kp_extack, msg_b);		\
		else							\
			NL_SET_ERR_MSG(__kp_extack, msg_a);		\
	} while (0)

/* sock.c */
struct socket *kproxy_get_socket(int fd, int idx,
				 struct netlink_ext_ack *extack);
int kproxy_hook(struct kproxy *kp, int idx, struct netlink_ext_ack *extack);
void kproxy_unhook(struct kproxy *kp, int idx);
void kproxy_hand_back(struct kproxy *kp, int idx);

/* stream.c */
void kproxy_dir_init(struct kproxy *kp, int d);
void kproxy_dir_work(struct work_struct *work);
void kproxy_dir_kick(struct kproxy_dir *dir);
void kproxy_dir_drain(struct kproxy_dir *dir);
void kproxy_dir_purge(struct kproxy_dir *dir);
void kproxy_data_ready(struct sock *sk);
void kproxy_write_space(struct sock *sk);
void kproxy_state_change(struct sock *sk);

void kproxy_read_start(struct kproxy_dir *dir);
int kproxy_read_shut(struct kproxy_dir *dir);
int kproxy_read_finish(struct kproxy_dir *dir, int ret);
int kproxy_read(struct kproxy_dir *dir,
		int (*read_sock)(struct sock *sk, read_descriptor_t *desc,
				 sk_read_actor_t actor));
int kproxy_recv_actor(read_descriptor_t *desc, struct sk_buff *skb,
		      unsigned int offset, size_t len);
void kproxy_queue_skb(struct kproxy_dir *dir, struct sk_buff *skb,
		      u32 offset, u32 len);
bool kproxy_queue_full(const struct kproxy_dir *dir);
bool kproxy_copy_worthy(const struct sk_buff *skb, size_t len);
struct sk_buff *kproxy_copy_skb(struct kproxy_dir *dir, struct sk_buff *tail);

/* bpf.c */
void kproxy_bpf_init(struct kproxy_dir *dir);
void kproxy_bpf_release(struct kproxy_dir *dir);
void kproxy_bpf_free(struct kproxy_dir *dir);
bool kproxy_bpf_changed(struct kproxy_dir *dir);
void kproxy_bpf_adopt(struct kproxy_dir *dir);
int kproxy_bpf_feed(struct kproxy_dir *dir, struct sk_buff *skb,
		    unsigned int offset, size_t len);
int kproxy_bpf_flush(struct kproxy_dir *dir);
bool kproxy_bpf_pending(const struct kproxy_dir *dir);
int kproxy_bpf_prepare(struct kproxy_dir *dir, int kind);
struct bpf_prog *kproxy_bpf_want(struct kproxy_dir *dir, int kind,
				 struct bpf_prog *prog);
u32 kproxy_bpf_id(const struct kproxy_dir *dir, int kind);
struct bpf_prog *kproxy_bpf_want_verdict(struct kproxy_dir *dir,
					 struct bpf_prog *prog,
					 struct kproxy_replies *replies);
int kproxy_bpf_attach_new(struct kproxy *kp, struct bpf_prog *const prog[2],
			  u32 verdict_dir, struct kproxy_replies *replies);
u64 kproxy_bpf_denied(const struct kproxy_dir *dir);
struct sk_buff *kproxy_bpf_take_reply(struct kproxy_dir *from);
struct kproxy_replies *kproxy_replies_get(struct kproxy_replies *replies);
void kproxy_replies_put(struct kproxy_replies *replies);

/* tls.c */
int kproxy_tls_check(struct sock *sk, int idx, struct netlink_ext_ack *extack);
void kproxy_tls_info(struct sock *sk, u16 *version, u16 *cipher);
u64 kproxy_tls_records(struct sock *sk, bool tx);
int kproxy_tls_read(struct kproxy_dir *dir);
int kproxy_tls_send_skb(struct sock *sk, struct sk_buff *skb, int offset,
			int len, bool more);
int kproxy_tls_close_notify(struct sock *sk);

/* listener.c */
struct kproxy_listener;

struct kproxy_listener_new {
	struct socket *sock;		/* listening, with its file reference */
	struct sockaddr_storage target;
	struct sockaddr_storage source;	/* ss_family 0: none */
	struct bpf_prog *prog[2];	/* by kind, references; may be NULL */
	u32 max_proxies;		/* 0: no limit of its own */
	u32 timeout_ms;
	u32 notify_portid;		/* 0: none, see the notify attribute */
	/* verdict-replies, the request's reference (NULL: none) */
	struct kproxy_replies *replies;
	u32 verdict_dir;		/* KPROXY_DIRECTION_* */
};

extern struct idr kproxy_listener_idr;
int kproxy_listener_create(struct net *net, struct kproxy_listener_new *args,
			   int (*published)(struct kproxy_listener *l, void *arg),
			   void *arg, struct netlink_ext_ack *extack);
struct kproxy_listener *kproxy_listener_find(struct net *net, u32 id);
int kproxy_listener_delete(struct net *net, u32 id, bool end_proxies);
void kproxy_listener_end_all(struct net *net);
void kproxy_listener_proxy_ended(struct kproxy *kp);

/* What a listener shows (netlink, /proc); read under kproxy_lock. */
enum {
	KPROXY_LC_ACCEPTED,
	KPROXY_LC_CREATED,
	KPROXY_LC_FAILED_REFUSED,
	KPROXY_LC_FAILED_UNREACHABLE,
	KPROXY_LC_FAILED_TIMEOUT,
	KPROXY_LC_FAILED_OTHER,
	KPROXY_LC_REFUSED_LIMIT,
	KPROXY_LC_ENDED,		/* of its proxies, with their bytes: */
	KPROXY_LC_ENDED_BYTES_A_TO_B,
	KPROXY_LC_ENDED_BYTES_B_TO_A,
	KPROXY_LC_MAX,
};

struct kproxy_listener_info {
	u32 id;
	struct sockaddr_storage listen;
	struct sockaddr_storage target;
	struct sockaddr_storage source;
	u32 max_proxies;
	u32 timeout_ms;
	u32 prog_id[2];
	u32 verdict_dir;		/* KPROXY_DIRECTION_* */
	u64 created_ns;
	u64 counters[KPROXY_LC_MAX];
	u32 active;
	u32 pending;
};

void kproxy_listener_info(const struct kproxy_listener *l,
			  struct kproxy_listener_info *info);
bool kproxy_listener_live(const struct kproxy_listener *l);
struct kproxy_listener *kproxy_listener_of(struct list_head *node);

/* netlink.c */
int kproxy_nl_init(void);
int kproxy_nl_replies(struct genl_info *info, int type,
		      struct kproxy_replies **replies);
void kproxy_nl_exit(void);
void kproxy_nl_notify(struct kproxy *kp, u8 cmd);
void kproxy_nl_notify_new(struct kproxy *kp);
void kproxy_nl_notify_end(struct kproxy *kp);
void kproxy_nl_notify_listener(struct net *net,
			       const struct kproxy_listener_info *info, u8 cmd);

/* proc.c */
int kproxy_proc_init(struct net *net);
void kproxy_proc_exit(struct net *net);

#endif /* _KPROXY_H */
