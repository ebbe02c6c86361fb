/* Syscall availability probe for Kestrel scenarios (built on the host, run
 * in the guest). One line per syscall: "name: ok[ (detail)]" or
 * "name: ERRNO-NAME". Calls are made with raw syscall numbers so the probe
 * works whatever the host's headers know; none changes guest state beyond
 * file descriptors it closes again. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __x86_64__
#error "syscall numbers below are x86_64"
#endif

#define NR_statx 332
#define NR_pidfd_open 434
#define NR_clone3 435
#define NR_openat2 437
#define NR_io_uring_setup 425
#define NR_landlock_create_ruleset 444

struct open_how_v0 {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define RESOLVE_BENEATH_FLAG 0x08
#define LANDLOCK_CREATE_RULESET_VERSION_FLAG 1u

/* io_uring_params is 120 bytes; only its size and zeroing matter here. */
struct io_uring_params_raw {
	uint32_t words[30];
};

static const char *err_name(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "E?";
}

static void report(const char *name, long ret, const char *detail)
{
	if (ret >= 0)
		printf("%s: ok%s%s\n", name, detail ? " " : "", detail ? detail : "");
	else
		printf("%s: %s\n", name, err_name(errno));
}

int main(void)
{
	long r;
	char detail[64];

	{
		unsigned char buf[256];
		memset(buf, 0, sizeof buf);
		/* STATX_BASIC_STATS = 0x7ff */
		r = syscall(NR_statx, AT_FDCWD, "/", 0, 0x7ffu, buf);
		report("statx", r, NULL);
	}
	{
		struct open_how_v0 how = { .flags = O_RDONLY | O_DIRECTORY, .resolve = RESOLVE_BENEATH_FLAG };
		r = syscall(NR_openat2, AT_FDCWD, ".", &how, sizeof how);
		report("openat2", r, NULL);
		if (r >= 0)
			close((int)r);
	}
	{
		r = syscall(NR_pidfd_open, getpid(), 0);
		report("pidfd_open", r, NULL);
		if (r >= 0)
			close((int)r);
	}
	{
		/* An empty struct: EINVAL means the call exists, ENOSYS that it does not. */
		r = syscall(NR_clone3, NULL, 0);
		if (r < 0 && errno == EINVAL)
			report("clone3", 0, "(EINVAL for an empty argument, as expected)");
		else
			report("clone3", r < 0 ? r : -1, NULL);
	}
	{
		struct io_uring_params_raw p;
		memset(&p, 0, sizeof p);
		r = syscall(NR_io_uring_setup, 1, &p);
		report("io_uring_setup", r, NULL);
		if (r >= 0)
			close((int)r);
	}
	{
		r = syscall(NR_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION_FLAG);
		snprintf(detail, sizeof detail, "(ABI version %ld)", r);
		report("landlock_create_ruleset", r, r >= 0 ? detail : NULL);
	}
	return 0;
}
