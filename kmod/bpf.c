// SPDX-License-Identifier: GPL-2.0
/*
 * BPF on a direction: a parser program cuts the stream into messages
 * (driving a strparser in general mode, fed from our tcp_read_sock()
 * actor) and a verdict program passes or drops each whole message.
 *
 * Programs are BPF_PROG_TYPE_SOCKET_FILTER, held by reference. Netlink
 * sets the wanted programs (bpf->want[], under kproxy_lock and
 * bpf->lock) and raises bpf->changed; the direction's work adopts them
 * (bpf->run[], owned by the work) at the next message boundary, so a
 * message cut by a change is finished under the rules it started with,
 * and no byte is lost, duplicated or reordered. A plain stream has a
 * boundary before every byte: it adopts before reading the next one, so
 * a parser attached while the sender is quiet parses all that follows.
 * A direction's strparser (bpf->parser) is allocated by its first parser
 * attach and kept until teardown.
 *
 * Programs run under rcu_read_lock() with preemption off: map lookups
 * return RCU-protected elements, and a per-CPU map value is one run's
 * at a time (the http parser keeps its scanner there). They see
 * in skb->cb[0..3] (struct __sk_buff's cb) the proxy's id, the direction
 * (0 a-to-b, 1 b-to-a), flags (KPROXY_CB_TLS: the direction reads a kTLS
 * side; KPROXY_CB_VERDICT: a verdict judges this direction's messages;
 * KPROXY_CB_FRAMED: a parser of the proxy framed a message before) and
 * the proxy's stamp (the low 32 bits of its created_ns), so the two
 * directions of a proxy can share state keyed by its id, tell their
 * state from an earlier proxy's with the same id (ids start again at a
 * reload), and tell state they never made from state they lost (an LRU
 * map's eviction); cb[4] is zero, the program's scratch. The view's own
 * cb is saved and put back around the run.
 *
 * A verdict returning KPROXY_VERDICT_REPLY_FLAG | i ("reply and close",
 * see kproxy_deny()) stops the direction: the message and anything after
 * it are not forwarded, the destination gets a FIN once what was queued
 * before is sent, and reply i goes to the other direction, which sends it
 * to the message's sender at the end of its own stream, then its FIN.
 *
 * Small segments are copied into a page-sized gather buffer
 * (parser->gather) and given to the strparser lazily. The strparser keeps
 * one clone per strp_process() call in the message it assembles, so
 * feeding a large message one byte at a time would pin an skb per byte.
 * The buffer goes to the strparser when it is full, before a large
 * segment (bytes stay in order), and at the end of each read unless the
 * message in progress has a known length that its bytes do not reach.
 * A message in progress may hold at most KPROXY_MSG_PIECES skbs: a
 * parser that keeps asking for more bytes of a message trickled in tiny
 * segments ends the proxy (reason error) rather than pin memory.
 */
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/sched/mm.h>
#include <net/sock.h>
#include <net/strparser.h>

#include "kproxy.h"

/* Longest message a parser may announce: what the direction may hold
 * in the strparser while the message is incomplete.
 */
#define KPROXY_MSG_MAX		(1024 * 1024)

/* Skbs one message in progress may hold in the strparser. */
#define KPROXY_MSG_PIECES	1024

/* skb->cb[2] of a program's view: what the direction is. */
#define KPROXY_CB_TLS		BIT(0)
#define KPROXY_CB_VERDICT	BIT(1)
#define KPROXY_CB_FRAMED	BIT(2)

static struct kproxy_parser *kproxy_parser_of(struct strparser *strp)
{
	return container_of(strp, struct kproxy_parser, strp);
}

static struct kproxy_dir *kproxy_strp_dir(struct strparser *strp)
{
	return kproxy_parser_of(strp)->dir;
}

/*
 * Run @prog on [offset, offset + len) of @skb, seen from offset 0: the
 * program reads the message's first byte at offset 0 whatever the TCP
 * segment boundaries were. 0 and the program's value in @ret, or -ENOMEM.
 */
static int kproxy_bpf_run(struct kproxy_dir *dir, struct bpf_prog *prog,
			  struct sk_buff *skb, u32 offset, u32 len, u32 *ret)
{
	u32 *cb, saved[BPF_SKB_CB_LEN / sizeof(u32)];
	struct kproxy *kp = kproxy_of(dir);
	struct sk_buff *view = skb;

	if (offset || skb->len > offset + len) {
		view = skb_clone(skb, GFP_ATOMIC);
		if (!view)
			return -ENOMEM;
		if ((offset && !pskb_pull(view, offset)) ||
		    (view->len > len && pskb_trim(view, len))) {
			kfree_skb(view);
			return -ENOMEM;
		}
	}
	view->sk = kproxy_src(dir);
	cb = (u32 *)bpf_skb_cb(view);
	memcpy(saved, cb, sizeof(saved));
	memset(cb, 0, sizeof(saved));
	cb[0] = kp->id;
	cb[1] = dir->idx;
	cb[2] = (dir->tls_src ? KPROXY_CB_TLS : 0) |
		(dir->bpf.run[KPROXY_BPF_KIND_VERDICT] ? KPROXY_CB_VERDICT : 0) |
		(test_bit(KPROXY_FRAMED, &kp->flags) ? KPROXY_CB_FRAMED : 0);
	cb[3] = lower_32_bits(kp->created_ns);
	rcu_read_lock();
	preempt_disable();
	*ret = bpf_prog_run(prog, view);
	preempt_enable();
	rcu_read_unlock();
	memcpy(cb, saved, sizeof(saved));
	view->sk = NULL;
	if (view != skb)
		consume_skb(view);
	return 0;
}

static int kproxy_strp_parse(struct strparser *strp, struct sk_buff *skb)
{
	struct kproxy_dir *dir = kproxy_strp_dir(strp);
	struct kproxy_bpf *bpf = &dir->bpf;
	struct strp_msg *stm = strp_msg(skb);
	u32 len;

	/* A new message starts here: adopt changed programs first. */
	if (!bpf->in_msg && kproxy_bpf_changed(dir)) {
		bpf->switching = true;
		return -ESTRPIPE;
	}

	/* strparser drops a partial message on any error: ends the proxy. */
	if (kproxy_bpf_run(dir, bpf->run[KPROXY_BPF_KIND_PARSER], skb,
			   stm->offset, skb->len - stm->offset, &len))
		return -ENOBUFS;
	bpf->in_msg = (int)len >= 0;
	return len;
}

/*
 * The verdict answered a message with reply @idx and close: the direction
 * reads no more (kproxy_recv_actor() stops, kproxy_may_read() says no),
 * forwards its FIN once what it queued before is sent, and leaves the
 * reply for the other direction, which sends it after the rest of its
 * stream (kproxy_forward_fin()): the responses the sender is still owed
 * come first, and the destination, having got the FIN, ends that stream.
 * Without a reply @idx, or without memory for one, nothing is sent back.
 */
static void kproxy_deny(struct kproxy_dir *dir, u32 idx)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	struct kproxy_replies *replies = parser->run_replies;
	struct kproxy *kp = kproxy_of(dir);
	struct sk_buff *reply = NULL;

	WRITE_ONCE(parser->denied, parser->denied + 1);
	dir->denied = true;
	if (replies && idx < replies->count && replies->len[idx]) {
		reply = alloc_skb(replies->len[idx],
				  GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
		if (reply)
			skb_put_data(reply, replies->data + replies->off[idx],
				     replies->len[idx]);
	}
	/* The one reply of this direction: xchg() orders its bytes. */
	kfree_skb(xchg(&parser->reply, reply));
	set_bit(KPROXY_DENIED, &kp->flags);
	kproxy_dir_kick(&kp->dir[!dir->idx]);
}

static void kproxy_strp_rcv(struct strparser *strp, struct sk_buff *skb)
{
	struct kproxy_dir *dir = kproxy_strp_dir(strp);
	struct bpf_prog *verdict = dir->bpf.run[KPROXY_BPF_KIND_VERDICT];
	struct strp_msg *stm = strp_msg(skb);
	u32 ret;

	dir->bpf.in_msg = false;
	kproxy_parser_of(strp)->pieces = 0;
	if (!test_bit(KPROXY_FRAMED, &kproxy_of(dir)->flags))
		set_bit(KPROXY_FRAMED, &kproxy_of(dir)->flags);
	if (verdict) {
		if (kproxy_bpf_run(dir, verdict, skb, stm->offset,
				   stm->full_len, &ret)) {
			/* Unjudged, the message may neither pass nor vanish. */
			kproxy_parser_of(strp)->error = -ENOBUFS;
			strp_pause(strp);
			kfree_skb(skb);
			return;
		}
		if (!ret) {
			WRITE_ONCE(dir->drops, dir->drops + 1);
			consume_skb(skb);
			return;
		}
		if (ret & KPROXY_VERDICT_REPLY_FLAG) {
			kproxy_deny(dir, ret & ~KPROXY_VERDICT_REPLY_FLAG);
			strp_pause(strp);
			consume_skb(skb);
			return;
		}
	}
	kproxy_queue_skb(dir, skb, stm->offset, stm->full_len);
	WRITE_ONCE(dir->msgs, dir->msgs + 1);
	if (kproxy_queue_full(dir))
		strp_pause(strp);
}

static void kproxy_strp_abort(struct strparser *strp, int err)
{
	struct kproxy_dir *dir = kproxy_strp_dir(strp);

	if (dir->bpf.switching && err == -ESTRPIPE)
		return;
	kproxy_parser_of(strp)->error = err ?: -EPROTO;
}

/* General mode strparsers are only locked by their timer and work,
 * which we never start (no timeout): these are required, not used.
 */
static void kproxy_strp_lock(struct strparser *strp)
{
	lock_sock(kproxy_src(kproxy_strp_dir(strp)));
}

static void kproxy_strp_unlock(struct strparser *strp)
{
	release_sock(kproxy_src(kproxy_strp_dir(strp)));
}

static const struct strp_callbacks kproxy_strp_cb = {
	.parse_msg = kproxy_strp_parse,
	.rcv_msg = kproxy_strp_rcv,
	.abort_parser = kproxy_strp_abort,
	.lock = kproxy_strp_lock,
	.unlock = kproxy_strp_unlock,
};

/* Work context: were the wanted programs changed since last adopted? */
bool kproxy_bpf_changed(struct kproxy_dir *dir)
{
	return READ_ONCE(dir->bpf.changed);
}

/*
 * strp_done() locks strp->sk, which a general mode strparser has not:
 * its timer and work never run here (no timeout, never unpaused through
 * strp_unpause()), so only a partial message is left to free.
 */
static void kproxy_strp_stop(struct kproxy_bpf *bpf)
{
	if (!bpf->strp_on)
		return;
	strp_stop(&bpf->parser->strp);
	kfree_skb(bpf->parser->strp.skb_head);
	bpf->parser->strp.skb_head = NULL;
	bpf->parser->pieces = 0;
	bpf->strp_on = false;
	bpf->in_msg = false;
}

/* Drop the gather buffer and what it holds. */
static void kproxy_gather_drop(struct kproxy_parser *parser)
{
	kfree_skb(parser->gather);
	parser->gather = NULL;
	parser->gather_fed = 0;
}

/*
 * At a message boundary with no parser to follow: the gather buffer's
 * bytes not yet parsed go to the queue as plain stream, before anything
 * read after them.
 */
static void kproxy_gather_to_queue(struct kproxy_dir *dir)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	struct sk_buff *gather = parser ? parser->gather : NULL;

	if (!gather)
		return;
	if (gather->len > parser->gather_fed) {
		kproxy_queue_skb(dir, gather, parser->gather_fed,
				 gather->len - parser->gather_fed);
		WRITE_ONCE(dir->msgs, dir->msgs + 1);
		parser->gather = NULL;
		parser->gather_fed = 0;
	} else {
		kproxy_gather_drop(parser);
	}
}

/*
 * Work context, at a message boundary: run what is wanted. The work
 * takes its own references, so netlink may replace the wanted ones
 * at any time.
 */
void kproxy_bpf_adopt(struct kproxy_dir *dir)
{
	struct kproxy_bpf *bpf = &dir->bpf;
	struct kproxy_replies *old_replies = NULL;
	struct bpf_prog *old[2];
	int k;

	spin_lock_bh(&bpf->lock);
	WRITE_ONCE(bpf->changed, false);
	for (k = 0; k < 2; k++) {
		old[k] = bpf->run[k];
		bpf->run[k] = bpf->want[k];
		if (bpf->run[k])
			bpf_prog_inc(bpf->run[k]);
	}
	if (bpf->parser) {
		old_replies = bpf->parser->run_replies;
		bpf->parser->run_replies =
			kproxy_replies_get(bpf->parser->want_replies);
	}
	spin_unlock_bh(&bpf->lock);

	for (k = 0; k < 2; k++)
		if (old[k])
			bpf_prog_put(old[k]);
	kproxy_replies_put(old_replies);

	/* Each parser starts with a fresh strparser: no state crosses over. */
	kproxy_strp_stop(bpf);
	if (!bpf->run[KPROXY_BPF_KIND_PARSER])
		kproxy_gather_to_queue(dir);
	if (bpf->run[KPROXY_BPF_KIND_PARSER]) {
		/* Cannot fail: both callbacks and lock/unlock are set. */
		strp_init(&bpf->parser->strp, NULL, &kproxy_strp_cb);
		bpf->strp_on = true;
	}
	bpf->switching = false;
}

/*
 * strp_process() on [offset, offset + len) of @skb, within the bound on
 * the pieces of a message. Returns the bytes consumed or -errno.
 */
static int kproxy_strp_process(struct kproxy_dir *dir, struct sk_buff *skb,
			       unsigned int offset, size_t len)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	struct sk_buff *trimmed = NULL;
	int used;

	if (parser->strp.skb_head && parser->pieces >= KPROXY_MSG_PIECES)
		return -E2BIG;
	/*
	 * The strparser chains a message's later skbs whole from @offset
	 * on, to their end: a kTLS record's skb goes on past @len (its
	 * content type, its padding), bytes that would land inside the
	 * message. Such an skb is fed trimmed to @len.
	 */
	if (offset + len < skb->len) {
		trimmed = skb_clone(skb, GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
		if (!trimmed)
			return -ENOMEM;
		if (pskb_trim(trimmed, offset + len)) {
			kfree_skb(trimmed);
			return -ENOMEM;
		}
		skb = trimmed;
	}
	used = strp_process(&parser->strp, skb, offset, len, KPROXY_MSG_MAX,
			    LONG_MAX);
	consume_skb(trimmed);
	/* A message still in progress holds one more piece. */
	if (parser->strp.skb_head)
		parser->pieces++;
	if (parser->error) {
		int err = parser->error;

		parser->error = 0;
		return err;
	}
	return used;
}

/* Give the strparser the gather buffer's bytes it has not had. */
static int kproxy_gather_feed(struct kproxy_dir *dir)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	struct sk_buff *gather = parser->gather;
	int used;

	if (!gather || gather->len == parser->gather_fed)
		return 0;
	used = kproxy_strp_process(dir, gather, parser->gather_fed,
				   gather->len - parser->gather_fed);
	if (used < 0)
		return used;
	parser->gather_fed += used;
	/* Fed whole and full: the strparser's clones hold what it needs. */
	if (parser->gather_fed == gather->len && !skb_tailroom(gather))
		kproxy_gather_drop(parser);
	return 0;
}

/* Whether the strparser is stopped for now: queue full or a switch. */
static bool kproxy_strp_held(struct kproxy_dir *dir)
{
	return dir->bpf.parser->strp.paused || dir->bpf.switching;
}

/* Copy up to @len bytes at @offset of @skb to the gather buffer. */
static int kproxy_gather(struct kproxy_dir *dir, struct sk_buff *skb,
			 unsigned int offset, size_t len)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	struct sk_buff *gather = parser->gather;
	size_t n;
	int err;

	if (gather && !skb_tailroom(gather)) {
		err = kproxy_gather_feed(dir);
		if (err)
			return err;
		if (kproxy_strp_held(dir))
			return 0;
		gather = parser->gather;
		if (gather && !skb_tailroom(gather))
			return -ENOMEM;	/* the strparser could not clone */
	}
	if (!gather) {
		gather = kproxy_copy_skb(dir, NULL);
		if (!gather)
			return -ENOMEM;
		parser->gather = gather;
		parser->gather_fed = 0;
	}
	n = min_t(size_t, len, skb_tailroom(gather));
	if (skb_copy_bits(skb, offset, skb_put(gather, n), n))
		return -EFAULT;
	return n;
}

/*
 * Feed [offset, offset + len) of @skb to the parser. Returns the bytes
 * consumed (fewer when the queue is full or the programs change), or a
 * negative error that ends the proxy.
 */
int kproxy_bpf_feed(struct kproxy_dir *dir, struct sk_buff *skb,
		    unsigned int offset, size_t len)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	int err;

	if (kproxy_queue_full(dir)) {
		strp_pause(&parser->strp);
		return 0;
	}
	parser->strp.paused = 0;
	if (kproxy_copy_worthy(skb, len))
		return kproxy_gather(dir, skb, offset, len);

	err = kproxy_gather_feed(dir);
	if (err)
		return err;
	if (kproxy_strp_held(dir))
		return 0;
	if (parser->gather && parser->gather_fed < parser->gather->len)
		return -ENOMEM;		/* the strparser could not clone */
	return kproxy_strp_process(dir, skb, offset, len);
}

/*
 * Whether the message in progress has a known length that its bytes and
 * @more do not reach: then more bytes are needed before it can complete.
 */
static bool kproxy_msg_short(struct kproxy_parser *parser, u32 more)
{
	struct sk_buff *head = parser->strp.skb_head;
	struct strp_msg *stm;

	if (!head)
		return false;
	stm = strp_msg(head);
	/* head->len counts at least the bytes accumulated, so this never
	 * waits for bytes the message does not need.
	 */
	return stm->full_len &&
	       stm->full_len > (int)(head->len - stm->offset) + (int)more;
}

/*
 * End of a read: give the strparser what the gather buffer holds, unless
 * the message in progress cannot complete with it yet. 0 or -errno.
 */
int kproxy_bpf_flush(struct kproxy_dir *dir)
{
	struct kproxy_parser *parser = dir->bpf.parser;
	int err;

	while (dir->bpf.strp_on && !dir->denied && parser->gather &&
	       parser->gather->len > parser->gather_fed) {
		if (kproxy_queue_full(dir) ||
		    (!dir->eof && skb_tailroom(parser->gather) &&
		     kproxy_msg_short(parser, parser->gather->len -
						parser->gather_fed)))
			return 0;
		parser->strp.paused = 0;
		err = kproxy_gather_feed(dir);
		if (err)
			return err;
		if (!dir->bpf.switching)
			return 0;
		kproxy_bpf_adopt(dir);
	}
	/* A parser detached at this boundary: the bytes are plain again. */
	if (!dir->bpf.strp_on)
		kproxy_gather_to_queue(dir);
	return 0;
}

/* Whether the gather buffer holds bytes the parser has not had. */
bool kproxy_bpf_pending(const struct kproxy_dir *dir)
{
	const struct kproxy_parser *parser = dir->bpf.parser;

	return parser && !dir->denied && parser->gather &&
	       parser->gather->len > parser->gather_fed;
}

/*
 * Netlink side, before a parser is wanted: give the direction its
 * strparser. The work reads bpf->parser only once it has adopted a
 * parser, under bpf->lock after this store; it is freed at release.
 * Holds kproxy_lock.
 */
int kproxy_bpf_prepare(struct kproxy_dir *dir, int kind)
{
	struct kproxy_parser *parser;
	struct mem_cgroup *old;

	lockdep_assert_held(&kproxy_lock);
	if (kind != KPROXY_BPF_KIND_PARSER || dir->bpf.parser)
		return 0;
	/* Charged, like the rest of the proxy, to its creator. */
	old = set_active_memcg(kproxy_of(dir)->memcg);
	parser = kzalloc(sizeof(*parser), GFP_KERNEL_ACCOUNT);
	set_active_memcg(old);
	if (!parser)
		return -ENOMEM;
	parser->dir = dir;
	dir->bpf.parser = parser;
	return 0;
}

/*
 * Netlink side: set or clear the wanted verdict and the replies it may
 * answer with (a reference is taken; NULL: none), together, so the work
 * never adopts one without the other. The direction has a parser, so
 * bpf->parser is there. Holds kproxy_lock.
 */
struct bpf_prog *kproxy_bpf_want_verdict(struct kproxy_dir *dir,
					 struct bpf_prog *prog,
					 struct kproxy_replies *replies)
{
	struct kproxy_bpf *bpf = &dir->bpf;
	struct kproxy_replies *old_replies;
	struct bpf_prog *old;

	lockdep_assert_held(&kproxy_lock);
	spin_lock_bh(&bpf->lock);
	old = bpf->want[KPROXY_BPF_KIND_VERDICT];
	bpf->want[KPROXY_BPF_KIND_VERDICT] = prog;
	old_replies = bpf->parser->want_replies;
	bpf->parser->want_replies = kproxy_replies_get(replies);
	WRITE_ONCE(bpf->changed, true);
	spin_unlock_bh(&bpf->lock);
	kproxy_replies_put(old_replies);
	return old;
}

/* Netlink side: set or clear the wanted program. Holds kproxy_lock. */
struct bpf_prog *kproxy_bpf_want(struct kproxy_dir *dir, int kind,
				 struct bpf_prog *prog)
{
	struct kproxy_bpf *bpf = &dir->bpf;
	struct bpf_prog *old;

	lockdep_assert_held(&kproxy_lock);
	spin_lock_bh(&bpf->lock);
	old = bpf->want[kind];
	bpf->want[kind] = prog;
	WRITE_ONCE(bpf->changed, true);
	spin_unlock_bh(&bpf->lock);
	return old;
}

/* Does a verdict given for @verdict_dir (KPROXY_DIRECTION_*) judge @d? */
static bool kproxy_bpf_judges(u32 verdict_dir, int d)
{
	return verdict_dir == KPROXY_DIRECTION_BOTH ||
	       verdict_dir == (d == KPROXY_A_TO_B ? KPROXY_DIRECTION_A_TO_B :
						  KPROXY_DIRECTION_B_TO_A);
}

/*
 * Programs given with a proxy (proxy-new, a listener's), attached under
 * kproxy_lock before it runs, so none of its bytes passes unparsed or
 * unjudged: @prog[kind] (NULL: none) on both directions, the verdict on
 * those @verdict_dir names, answering with @replies. Each direction takes
 * its own program reference; on error kproxy_join() releases what was
 * attached.
 */
int kproxy_bpf_attach_new(struct kproxy *kp, struct bpf_prog *const prog[2],
			  u32 verdict_dir, struct kproxy_replies *replies)
{
	int kind, d, err;

	for (kind = 0; kind < 2; kind++) {
		if (!prog[kind])
			continue;
		for (d = 0; d < 2; d++) {
			err = kproxy_bpf_prepare(&kp->dir[d], kind);
			if (err)
				return err;
		}
	}
	for (kind = 0; kind < 2; kind++) {
		if (!prog[kind])
			continue;
		for (d = 0; d < 2; d++) {
			if (kind != KPROXY_BPF_KIND_VERDICT) {
				bpf_prog_inc(prog[kind]);
				kproxy_bpf_want(&kp->dir[d], kind, prog[kind]);
			} else if (kproxy_bpf_judges(verdict_dir, d)) {
				bpf_prog_inc(prog[kind]);
				kproxy_bpf_want_verdict(&kp->dir[d], prog[kind],
							replies);
			}
		}
	}
	return 0;
}

/*
 * Program id for dumps and /proc, 0 when none is wanted. Holds
 * kproxy_lock, under which kproxy_bpf_release() takes want[] away, or
 * owns the teardown.
 */
u32 kproxy_bpf_id(const struct kproxy_dir *dir, int kind)
{
	const struct bpf_prog *prog = dir->bpf.want[kind];

	return prog ? prog->aux->id : 0;
}

/*
 * Messages the direction's verdict answered with a reply. Holds
 * kproxy_lock or owns the teardown: the parser is freed only after the
 * proxy has left its netns list (kproxy_bpf_free()).
 */
u64 kproxy_bpf_denied(const struct kproxy_dir *dir)
{
	const struct kproxy_parser *parser = READ_ONCE(dir->bpf.parser);

	return parser ? READ_ONCE(parser->denied) : 0;
}

/*
 * The other direction's work, at the end of its stream: the reply @from's
 * verdict left for it, which it now owns, or NULL.
 */
struct sk_buff *kproxy_bpf_take_reply(struct kproxy_dir *from)
{
	struct kproxy_parser *parser = READ_ONCE(from->bpf.parser);

	return parser ? xchg(&parser->reply, NULL) : NULL;
}

struct kproxy_replies *kproxy_replies_get(struct kproxy_replies *replies)
{
	if (replies)
		refcount_inc(&replies->ref);
	return replies;
}

void kproxy_replies_put(struct kproxy_replies *replies)
{
	if (replies && refcount_dec_and_test(&replies->ref))
		kfree(replies);
}

void kproxy_bpf_init(struct kproxy_dir *dir)
{
	spin_lock_init(&dir->bpf.lock);
}

/* Teardown, after the direction's work is cancelled. */
void kproxy_bpf_release(struct kproxy_dir *dir)
{
	struct kproxy_bpf *bpf = &dir->bpf;
	struct bpf_prog *want[2];
	int k;

	kproxy_strp_stop(bpf);
	if (bpf->parser)
		kproxy_gather_drop(bpf->parser);

	/* Dumps and /proc read want[] under kproxy_lock. */
	mutex_lock(&kproxy_lock);
	for (k = 0; k < 2; k++) {
		want[k] = bpf->want[k];
		bpf->want[k] = NULL;
	}
	mutex_unlock(&kproxy_lock);

	for (k = 0; k < 2; k++) {
		if (bpf->run[k])
			bpf_prog_put(bpf->run[k]);
		if (want[k])
			bpf_prog_put(want[k]);
		bpf->run[k] = NULL;
	}
}

/*
 * After the proxy has left its netns list and its end was notified
 * (dumps, /proc and the final counters read the parser's denied count).
 */
void kproxy_bpf_free(struct kproxy_dir *dir)
{
	struct kproxy_parser *parser = dir->bpf.parser;

	if (!parser)
		return;
	kproxy_replies_put(parser->want_replies);
	kproxy_replies_put(parser->run_replies);
	kfree_skb(parser->reply);
	kfree(parser);
	dir->bpf.parser = NULL;
}
