/* ABI probes for Kestrel's matrix scenarios (built on the host, run in the
 * guest): what a kernel offers user space, printed as stable "key: value"
 * lines so that outputs of different kernel versions line up key by key.
 *
 *   abi syscalls   newer syscalls: ok, or the errno of a harmless call
 *   abi statx      the statx mask bits a kernel returns, per file system
 *   abi sizes      uapi struct sizes the kernel states (sched_attr,
 *                  perf_event_attr), learnt through E2BIG
 *   abi prctl      read-only prctl options: value or errno
 *   abi io_uring   io_uring feature bits and supported opcodes
 *
 * Nothing here depends on the CPU model (no shadow stacks, no speculation
 * controls), so a snapshot holds on any x86-64 host. Raw syscall numbers
 * keep the probe independent of the host's headers. No call changes guest
 * state beyond file descriptors it closes again. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __x86_64__
#error "syscall numbers below are x86_64"
#endif

static const char *err_name(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

/* "name: ok" or "name: ERRNO" for a call that returned ret. */
static void report(const char *name, long ret)
{
	if (ret >= 0)
		printf("%s: ok\n", name);
	else
		printf("%s: %s\n", name, err_name(errno));
}

static void close_if_fd(long r)
{
	if (r >= 0)
		close((int)r);
}

/* --- syscalls ---------------------------------------------------------- */

static int probe_syscalls(void)
{
	/* Each call has arguments that make it fail (or do nothing) when the
	 * syscall exists: ENOSYS alone says that it does not. */
	report("pidfd_send_signal", syscall(424, -1, 0, NULL, 0));
	report("pidfd_getfd", syscall(438, -1, 0, 0));
	report("process_madvise", syscall(440, -1, NULL, 0, 0, 0));
	report("epoll_pwait2", syscall(441, -1, NULL, 1, NULL, NULL, 0));
	report("mount_setattr", syscall(442, -1, "", 0, NULL, 0));
	report("quotactl_fd", syscall(443, -1, 0, 0, NULL));
	{
		long r = syscall(447, 0);
		report("memfd_secret", r);
		close_if_fd(r);
	}
	report("process_mrelease", syscall(448, -1, 0));
	report("futex_waitv", syscall(449, NULL, 0, 0, NULL, 0));
	report("set_mempolicy_home_node", syscall(450, 0, 0, 0, 1));
	report("cachestat", syscall(451, -1, NULL, NULL, 0));
	report("fchmodat2", syscall(452, AT_FDCWD, "/nonexistent-kestrel-probe", 0, 0));
	report("futex_wake", syscall(454, NULL, 0, 0, 0));
	report("futex_wait", syscall(455, NULL, 0, 0, 0, NULL, 0));
	report("futex_requeue", syscall(456, NULL, 0, 0, 0));
	report("statmount", syscall(457, NULL, NULL, 0, 0));
	report("listmount", syscall(458, NULL, NULL, 0, 0));
	report("lsm_get_self_attr", syscall(459, 0, NULL, NULL, 0));
	report("lsm_list_modules", syscall(461, NULL, NULL, 1));
	/* A zero-length seal of nothing: 0 when the call exists. */
	report("mseal", syscall(462, 0, 0, 0));
	report("getxattrat", syscall(464, AT_FDCWD, "/nonexistent-kestrel-probe", 0, "user.k", NULL, 0));
	report("file_getattr", syscall(468, AT_FDCWD, "/nonexistent-kestrel-probe", NULL, 0, 0));
	return 0;
}

/* --- statx ------------------------------------------------------------- */

struct statx_raw {
	uint32_t stx_mask;
	uint32_t stx_blksize;
	uint64_t stx_attributes;
	uint32_t stx_nlink;
	uint32_t stx_uid;
	uint32_t stx_gid;
	uint16_t stx_mode;
	uint16_t pad0;
	uint64_t stx_ino;
	uint64_t stx_size;
	uint64_t stx_blocks;
	uint64_t stx_attributes_mask;
	unsigned char rest[256 - 64];
};

static const struct {
	uint32_t bit;
	const char *name;
} statx_bits[] = {
	{ 0x7ff, "BASIC_STATS" },      { 0x800, "BTIME" },
	{ 0x1000, "MNT_ID" },          { 0x2000, "DIOALIGN" },
	{ 0x4000, "MNT_ID_UNIQUE" },   { 0x8000, "SUBVOL" },
	{ 0x10000, "WRITE_ATOMIC" },   { 0x20000, "DIO_READ_ALIGN" },
};

static void statx_one(const char *label, const char *path)
{
	struct statx_raw st;
	memset(&st, 0, sizeof st);
	/* Ask for every bit known today and some not yet defined. */
	long r = syscall(332, AT_FDCWD, path, 0, 0x000fffffu, &st);
	if (r < 0) {
		printf("%s: %s\n", label, err_name(errno));
		return;
	}
	printf("%s:", label);
	uint32_t left = st.stx_mask;
	for (size_t i = 0; i < sizeof statx_bits / sizeof statx_bits[0]; i++) {
		uint32_t b = statx_bits[i].bit;
		if ((left & b) == b) {
			printf(" %s", statx_bits[i].name);
			left &= ~b;
		}
	}
	if (left)
		printf(" +0x%x", left);
	printf("\n");
}

static int probe_statx(void)
{
	/* tmpfs, procfs and sysfs are the kernel's own; the shared root (FUSE)
	 * depends on the server as well. */
	statx_one("tmpfs (/tmp)", "/tmp");
	statx_one("procfs (/proc/self/status)", "/proc/self/status");
	statx_one("sysfs (/sys/kernel)", "/sys/kernel");
	statx_one("devtmpfs (/dev/null)", "/dev/null");
	return 0;
}

/* --- sizes ------------------------------------------------------------- */

/* Calls `nr` with a buffer that claims `claimed` bytes, non-zero beyond
 * anything the kernel knows: a kernel that copies with
 * copy_struct_from_user() answers E2BIG and writes its own size into the
 * leading u32 `size` field at `size_off`. */
static void size_via_e2big(const char *name, long nr, size_t size_off, long a0, long a2, long a3)
{
	static unsigned char buf[4096];
	uint32_t claimed = sizeof buf;
	memset(buf, 0, sizeof buf);
	memcpy(buf + size_off, &claimed, sizeof claimed);
	buf[sizeof buf - 1] = 1;
	long r;
	if (nr == 298) /* perf_event_open(attr, pid, cpu, group_fd, flags) */
		r = syscall(nr, buf, a0, a2, a3, 0);
	else /* sched_setattr(pid, attr, flags) */
		r = syscall(nr, a0, buf, a2);
	if (r >= 0) {
		close_if_fd(r);
		printf("%s: accepted %u bytes (unexpected)\n", name, claimed);
		return;
	}
	if (errno != E2BIG) {
		printf("%s: %s\n", name, err_name(errno));
		return;
	}
	uint32_t size;
	memcpy(&size, buf + size_off, sizeof size);
	printf("%s: %u bytes\n", name, size);
}

static int probe_sizes(void)
{
	/* struct sched_attr starts with `u32 size`. */
	size_via_e2big("sched_attr", 314, 0, 0, 0, 0);
	/* struct perf_event_attr: `u32 type; u32 size; …`; pid 0, cpu -1. */
	size_via_e2big("perf_event_attr", 298, 4, 0, -1, -1);
	printf("statx: %zu bytes (fixed)\n", sizeof(struct statx_raw));
	return 0;
}

/* --- prctl ------------------------------------------------------------- */

static void prctl_get(const char *name, int option, unsigned long arg2)
{
	long r = prctl(option, arg2, 0, 0, 0);
	if (r < 0)
		printf("%s: %s\n", name, err_name(errno));
	else
		printf("%s: ok (%ld)\n", name, r);
}

static int probe_prctl(void)
{
	prctl_get("PR_GET_THP_DISABLE", 42, 0);
	prctl_get("PR_GET_IO_FLUSHER", 58, 0);
	prctl_get("PR_GET_MDWE", 66, 0);
	prctl_get("PR_GET_MEMORY_MERGE", 68, 0);
	{
		unsigned char auxv[1024];
		long r = prctl(0x41555856, (unsigned long)auxv, sizeof auxv, 0, 0);
		if (r < 0)
			printf("PR_GET_AUXV: %s\n", err_name(errno));
		else
			printf("PR_GET_AUXV: ok\n");
	}
	/* PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS */
	{
		long r = prctl(78, 2, 0, 0, 0);
		if (r < 0)
			printf("PR_FUTEX_HASH: %s\n", err_name(errno));
		else
			printf("PR_FUTEX_HASH: ok\n");
	}
	return 0;
}

/* --- io_uring ---------------------------------------------------------- */

struct io_uring_params_raw {
	uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
	uint32_t resv[3];
	unsigned char offsets[80];
};

struct probe_op {
	uint8_t op, resv;
	uint16_t flags;
	uint32_t resv2;
};

struct probe_hdr {
	uint8_t last_op, ops_len;
	uint16_t resv;
	uint32_t resv2[3];
	struct probe_op ops[256];
};

static int probe_io_uring(void)
{
	struct io_uring_params_raw p;
	memset(&p, 0, sizeof p);
	long fd = syscall(425, 1, &p);
	if (fd < 0) {
		printf("io_uring_setup: %s\n", err_name(errno));
		return 0;
	}
	/* Feature bits, named so a new one shows as a new line. */
	static const char *features[] = {
		"SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY",
		"FAST_POLL", "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS",
		"RSRC_TAGS", "CQE_SKIP", "LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE",
		"MIN_TIMEOUT", "RW_ATTR", "NO_IOWAIT",
	};
	for (unsigned i = 0; i < 32; i++) {
		if (p.features & (1u << i)) {
			if (i < sizeof features / sizeof features[0])
				printf("feature %s: yes\n", features[i]);
			else
				printf("feature bit %u: yes\n", i);
		}
	}
	static struct probe_hdr probe;
	memset(&probe, 0, sizeof probe);
	/* IORING_REGISTER_PROBE = 8 */
	long r = syscall(427, fd, 8, &probe, 256);
	if (r < 0) {
		printf("register_probe: %s\n", err_name(errno));
	} else {
		unsigned supported = 0;
		for (unsigned i = 0; i < probe.ops_len && i < 256; i++)
			if (probe.ops[i].flags & 1)
				supported++;
		printf("opcodes: last %u, %u supported\n", probe.last_op, supported);
	}
	close((int)fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: abi syscalls|statx|sizes|prctl|io_uring\n");
		return 2;
	}
	if (!strcmp(argv[1], "syscalls"))
		return probe_syscalls();
	if (!strcmp(argv[1], "statx"))
		return probe_statx();
	if (!strcmp(argv[1], "sizes"))
		return probe_sizes();
	if (!strcmp(argv[1], "prctl"))
		return probe_prctl();
	if (!strcmp(argv[1], "io_uring"))
		return probe_io_uring();
	fprintf(stderr, "abi: unknown probe %s\n", argv[1]);
	return 2;
}
