// SPDX-License-Identifier: GPL-2.0
/*
 * /proc/net/kproxy: a header naming every column, then one line per
 * proxy of the reader's netns. /proc/net/kproxy_stat: that netns's totals.
 * /proc/net/kproxy_listeners: a header, then one line per listener.
 * The format is documented in README.md; columns are only ever appended.
 */
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <net/ipv6.h>
#include <net/sock.h>
#include <net/tls.h>

#include "kproxy.h"

static const char *const kproxy_state_name[] = {
	[KPROXY_STATE_ACTIVE] = "active",
	[KPROXY_STATE_HALF_CLOSED] = "half-closed",
	[KPROXY_STATE_CLOSING] = "closing",
};

static const char *const kproxy_reason_name[] = {
	[KPROXY_REASON_USER] = "user",
	[KPROXY_REASON_CLOSED] = "closed",
	[KPROXY_REASON_RESET] = "reset",
	[KPROXY_REASON_ERROR] = "error",
	[KPROXY_REASON_NETNS_EXIT] = "netns_exit",
	[KPROXY_REASON_UNLOAD] = "unload",
	[KPROXY_REASON_TLS_ALERT] = "tls_alert",
	[KPROXY_REASON_TLS_REKEY] = "tls_rekey",
};

/* linux/tls.h's ciphers, as IANA names them without the TLS_ prefix. */
static const char *kproxy_tls_cipher_name(u16 cipher)
{
	switch (cipher) {
	case TLS_CIPHER_AES_GCM_128:
		return "aes-128-gcm";
	case TLS_CIPHER_AES_GCM_256:
		return "aes-256-gcm";
	case TLS_CIPHER_AES_CCM_128:
		return "aes-128-ccm";
	case TLS_CIPHER_CHACHA20_POLY1305:
		return "chacha20-poly1305";
	default:
		return NULL;
	}
}

/* A side's kTLS column: "-" for plain TCP, else e.g. "1.3/aes-128-gcm". */
static void kproxy_seq_tls(struct seq_file *seq, const struct kproxy *kp,
			   int idx)
{
	const char *name;
	u16 version, cipher;

	if (!kp->dir[idx].tls_src) {
		seq_puts(seq, " -");
		return;
	}
	kproxy_tls_info(kp->sock[idx]->sk, &version, &cipher);
	seq_printf(seq, " %u.%u/", TLS_VERSION_MAJOR(version) - 2,
		   TLS_VERSION_MINOR(version) - 1);
	name = kproxy_tls_cipher_name(cipher);
	if (name)
		seq_puts(seq, name);
	else
		seq_printf(seq, "cipher-%u", cipher);
}

static void *kproxy_seq_start(struct seq_file *seq, loff_t *pos)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_net(seq));

	mutex_lock(&kproxy_lock);
	return seq_list_start_head(&kn->proxies, *pos);
}

static void *kproxy_seq_next(struct seq_file *seq, void *v, loff_t *pos)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_net(seq));

	return seq_list_next(v, &kn->proxies, pos);
}

static void kproxy_seq_stop(struct seq_file *seq, void *v)
{
	mutex_unlock(&kproxy_lock);
}

static void kproxy_seq_addr(struct seq_file *seq, int family, __be32 v4,
			    const struct in6_addr *v6, __be16 port)
{
	if (family == AF_INET)
		seq_printf(seq, " %pI4:%u", &v4, ntohs(port));
	else
		seq_printf(seq, " [%pI6c]:%u", v6, ntohs(port));
}

static void kproxy_seq_sock(struct seq_file *seq, struct sock *sk)
{
	const struct inet_sock *inet = inet_sk(sk);
	const struct in6_addr *saddr6 = NULL, *daddr6 = NULL;

#if IS_ENABLED(CONFIG_IPV6)
	saddr6 = &sk->sk_v6_rcv_saddr;
	daddr6 = &sk->sk_v6_daddr;
#endif
	kproxy_seq_addr(seq, sk->sk_family, inet->inet_rcv_saddr, saddr6,
			inet->inet_sport);
	kproxy_seq_addr(seq, sk->sk_family, inet->inet_daddr, daddr6,
			inet->inet_dport);
}

static void kproxy_seq_dir(struct seq_file *seq, const struct kproxy_dir *dir)
{
	seq_printf(seq, " %llu %llu %llu %llu %u",
		   READ_ONCE(dir->bytes), READ_ONCE(dir->skbs),
		   READ_ONCE(dir->msgs), READ_ONCE(dir->drops),
		   READ_ONCE(dir->queued));
}

static int kproxy_seq_show(struct seq_file *seq, void *v)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_net(seq));
	struct kproxy *kp;
	int d;

	if (v == &kn->proxies) {
		seq_puts(seq,
			 "id state a_local a_remote b_local b_remote ab_bytes ab_skbs ab_msgs ab_drops ab_queued ba_bytes ba_skbs ba_msgs ba_drops ba_queued created ab_parser ab_verdict ba_parser ba_verdict a_tls b_tls listener\n");
		return 0;
	}

	kp = list_entry(v, struct kproxy, net_node);
	seq_printf(seq, "%u %s", kp->id, kproxy_state_name[kproxy_state(kp)]);
	kproxy_seq_sock(seq, kp->sock[0]->sk);
	kproxy_seq_sock(seq, kp->sock[1]->sk);
	kproxy_seq_dir(seq, &kp->dir[KPROXY_A_TO_B]);
	kproxy_seq_dir(seq, &kp->dir[KPROXY_B_TO_A]);
	seq_printf(seq, " %llu", kp->created_ns);
	for (d = 0; d < 2; d++)
		seq_printf(seq, " %u %u",
			   kproxy_bpf_id(&kp->dir[d], KPROXY_BPF_KIND_PARSER),
			   kproxy_bpf_id(&kp->dir[d], KPROXY_BPF_KIND_VERDICT));
	kproxy_seq_tls(seq, kp, 0);
	kproxy_seq_tls(seq, kp, 1);
	if (kp->listener_id)
		seq_printf(seq, " %u\n", kp->listener_id);
	else
		seq_puts(seq, " -\n");
	return 0;
}

static const struct seq_operations kproxy_seq_ops = {
	.start = kproxy_seq_start,
	.next = kproxy_seq_next,
	.stop = kproxy_seq_stop,
	.show = kproxy_seq_show,
};

/* /proc/net/kproxy_listeners: one line per live listener of the netns. */
static void *kproxy_lseq_start(struct seq_file *seq, loff_t *pos)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_net(seq));

	mutex_lock(&kproxy_lock);
	return seq_list_start_head(&kn->listeners, *pos);
}

static void *kproxy_lseq_next(struct seq_file *seq, void *v, loff_t *pos)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_net(seq));

	return seq_list_next(v, &kn->listeners, pos);
}

static void kproxy_seq_sockaddr(struct seq_file *seq,
				const struct sockaddr_storage *ss)
{
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
	const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

	if (ss->ss_family == AF_INET6)
		kproxy_seq_addr(seq, AF_INET6, 0, &sin6->sin6_addr,
				sin6->sin6_port);
	else if (ss->ss_family == AF_INET)
		kproxy_seq_addr(seq, AF_INET, sin->sin_addr.s_addr, NULL,
				sin->sin_port);
	else
		seq_puts(seq, " -");
}

static int kproxy_lseq_show(struct seq_file *seq, void *v)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_net(seq));
	struct kproxy_listener_info info;
	struct kproxy_listener *l;
	int i;

	if (v == &kn->listeners) {
		seq_puts(seq,
			 "id listen target source max_proxies connect_timeout_ms parser verdict accepted created failed_refused failed_unreachable failed_timeout failed_other refused_limit active pending created_ns ended ended_bytes_a_to_b ended_bytes_b_to_a\n");
		return 0;
	}
	l = kproxy_listener_of(v);
	if (!kproxy_listener_live(l))
		return 0;
	kproxy_listener_info(l, &info);
	seq_printf(seq, "%u", info.id);
	kproxy_seq_sockaddr(seq, &info.listen);
	kproxy_seq_sockaddr(seq, &info.target);
	kproxy_seq_sockaddr(seq, &info.source);
	seq_printf(seq, " %u %u %u %u", info.max_proxies, info.timeout_ms,
		   info.prog_id[KPROXY_BPF_KIND_PARSER],
		   info.prog_id[KPROXY_BPF_KIND_VERDICT]);
	for (i = 0; i < KPROXY_LC_ENDED; i++)
		seq_printf(seq, " %llu", info.counters[i]);
	seq_printf(seq, " %u %u %llu", info.active, info.pending,
		   info.created_ns);
	/* Columns added later go last, so older readers keep their places. */
	for (i = KPROXY_LC_ENDED; i < KPROXY_LC_MAX; i++)
		seq_printf(seq, " %llu", info.counters[i]);
	seq_putc(seq, '\n');
	return 0;
}

static const struct seq_operations kproxy_lseq_ops = {
	.start = kproxy_lseq_start,
	.next = kproxy_lseq_next,
	.stop = kproxy_seq_stop,
	.show = kproxy_lseq_show,
};

static int kproxy_stat_show(struct seq_file *seq, void *v)
{
	struct kproxy_net *kn = kproxy_pernet(seq_file_single_net(seq));
	struct kproxy_totals t;
	struct kproxy *kp;
	u64 active = 0;
	int r;

	mutex_lock(&kproxy_lock);
	t = kn->totals;
	list_for_each_entry(kp, &kn->proxies, net_node) {
		active++;
		kproxy_add_totals(&t, kp);
	}
	mutex_unlock(&kproxy_lock);

	seq_printf(seq, "active %llu\ncreated %llu\n", active, t.created);
	for (r = 0; r < ARRAY_SIZE(kproxy_reason_name); r++)
		seq_printf(seq, "ended_%s %llu\n", kproxy_reason_name[r],
			   t.ended[r]);
	seq_printf(seq, "bytes %llu\nskbs %llu\nmsgs %llu\ndrops %llu\n",
		   t.bytes, t.skbs, t.msgs, t.drops);
	/* How the data path works for its bytes: calls and wakeups. */
	seq_printf(seq, "sends %llu\nwork_runs %llu\n", t.sends, t.runs);
	/* kTLS sides: records received and sent, control records consumed. */
	seq_printf(seq, "tls_records_in %llu\ntls_records_out %llu\ntls_control %llu\n",
		   t.tls_records_in, t.tls_records_out,
		   (u64)atomic64_read(&kn->tls_control));
	return 0;
}

int kproxy_proc_init(struct net *net)
{
	if (!proc_create_net("kproxy", 0444, net->proc_net, &kproxy_seq_ops,
			     sizeof(struct seq_net_private)))
		return -ENOMEM;
	if (!proc_create_net_single("kproxy_stat", 0444, net->proc_net,
				    kproxy_stat_show, NULL))
		goto err_proxies;
	if (!proc_create_net("kproxy_listeners", 0444, net->proc_net,
			     &kproxy_lseq_ops, sizeof(struct seq_net_private)))
		goto err_stat;
	return 0;

err_stat:
	remove_proc_entry("kproxy_stat", net->proc_net);
err_proxies:
	remove_proc_entry("kproxy", net->proc_net);
	return -ENOMEM;
}

void kproxy_proc_exit(struct net *net)
{
	remove_proc_entry("kproxy_listeners", net->proc_net);
	remove_proc_entry("kproxy_stat", net->proc_net);
	remove_proc_entry("kproxy", net->proc_net);
}
