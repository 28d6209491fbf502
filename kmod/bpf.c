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
 */
#include <linux/bpf.h>
#include <linux/filter.h>
#include <net/sock.h>
#include <net/strparser.h>

#include "kproxy.h"

/* Longest message a parser may announce: what the direction may hold
 * in the strparser while the message is incomplete.
 */
#define KPROXY_MSG_MAX		(1024 * 1024)

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
static int kproxy_bpf_run(struct bpf_prog *prog, struct sk_buff *skb,
			  u32 offset, u32 len, struct sock *sk, u32 *ret)
{
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
	view->sk = sk;
	*ret = bpf_prog_run_save_cb(prog, view);
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
	if (kproxy_bpf_run(bpf->run[KPROXY_BPF_KIND_PARSER], skb, stm->offset,
			   skb->len - stm->offset, dir->src, &len))
		return -ENOBUFS;
	bpf->in_msg = (int)len >= 0;
	return len;
}

static void kproxy_strp_rcv(struct strparser *strp, struct sk_buff *skb)
{
	struct kproxy_dir *dir = kproxy_strp_dir(strp);
	struct bpf_prog *verdict = dir->bpf.run[KPROXY_BPF_KIND_VERDICT];
	struct strp_msg *stm = strp_msg(skb);
	u32 ret;

	dir->bpf.in_msg = false;
	if (verdict) {
		if (kproxy_bpf_run(verdict, skb, stm->offset, stm->full_len,
				   dir->src, &ret)) {
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
	}
	kproxy_queue_skb(dir, skb, stm->offset, stm->full_len);
	WRITE_ONCE(dir->msgs, dir->msgs + 1);
	if (dir->queued >= KPROXY_QUEUE_MAX)
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
	lock_sock(kproxy_strp_dir(strp)->src);
}

static void kproxy_strp_unlock(struct strparser *strp)
{
	release_sock(kproxy_strp_dir(strp)->src);
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
	bpf->strp_on = false;
	bpf->in_msg = false;
}

/*
 * Work context, at a message boundary: run what is wanted. The work
 * takes its own references, so netlink may replace the wanted ones
 * at any time.
 */
void kproxy_bpf_adopt(struct kproxy_dir *dir)
{
	struct kproxy_bpf *bpf = &dir->bpf;
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
	spin_unlock_bh(&bpf->lock);

	for (k = 0; k < 2; k++)
		if (old[k])
			bpf_prog_put(old[k]);

	/* Each parser starts with a fresh strparser: no state crosses over. */
	kproxy_strp_stop(bpf);
	if (bpf->run[KPROXY_BPF_KIND_PARSER]) {
		/* Cannot fail: both callbacks and lock/unlock are set. */
		strp_init(&bpf->parser->strp, NULL, &kproxy_strp_cb);
		bpf->strp_on = true;
	}
	bpf->switching = false;
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
	int used;

	if (dir->queued >= KPROXY_QUEUE_MAX) {
		strp_pause(&parser->strp);
		return 0;
	}
	parser->strp.paused = 0;
	used = strp_process(&parser->strp, skb, offset, len, KPROXY_MSG_MAX,
			    LONG_MAX);
	if (parser->error) {
		int err = parser->error;

		parser->error = 0;
		return err;
	}
	return used;
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

	lockdep_assert_held(&kproxy_lock);
	if (kind != KPROXY_BPF_KIND_PARSER || dir->bpf.parser)
		return 0;
	parser = kzalloc(sizeof(*parser), GFP_KERNEL);
	if (!parser)
		return -ENOMEM;
	parser->dir = dir;
	dir->bpf.parser = parser;
	return 0;
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

/* Program id for dumps, 0 when none is wanted. Holds kproxy_lock. */
u32 kproxy_bpf_id(const struct kproxy_dir *dir, int kind)
{
	const struct bpf_prog *prog = dir->bpf.want[kind];

	return prog ? prog->aux->id : 0;
}

void kproxy_bpf_init(struct kproxy_dir *dir)
{
	spin_lock_init(&dir->bpf.lock);
}

/* Teardown, after the direction's work is cancelled. */
void kproxy_bpf_release(struct kproxy_dir *dir)
{
	struct kproxy_bpf *bpf = &dir->bpf;
	int k;

	kproxy_strp_stop(bpf);
	for (k = 0; k < 2; k++) {
		if (bpf->run[k])
			bpf_prog_put(bpf->run[k]);
		if (bpf->want[k])
			bpf_prog_put(bpf->want[k]);
		bpf->run[k] = NULL;
		bpf->want[k] = NULL;
	}
	kfree(bpf->parser);
	bpf->parser = NULL;
}
