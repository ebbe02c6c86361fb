/* A KTAP-emitting test program for Kestrel's KTAP scenario: real checks,
 * nested subtests (two levels), one skip. Exit status 0 when nothing
 * failed, 1 otherwise. */
#define _GNU_SOURCE
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

static void result(int indent, int ok, int n, const char *name, const char *directive)
{
	if (!ok)
		failures++;
	printf("%*s%s %d %s%s%s\n", indent, "", ok ? "ok" : "not ok", n, name,
	       directive ? " # " : "", directive ? directive : "");
}

static void header(int indent, const char *name, int plan)
{
	printf("%*sKTAP version 1\n", indent, "");
	printf("%*s# Subtest: %s\n", indent, "", name);
	printf("%*s1..%d\n", indent, "", plan);
}

int main(void)
{
	struct stat st;
	unsigned int wrap = UINT_MAX;
	int before;

	printf("KTAP version 1\n1..2\n");

	before = failures;
	header(2, "arithmetic", 2);
	result(2, 2 + 2 == 4, 1, "addition", NULL);
	wrap += 1u;
	result(2, wrap == 0, 2, "unsigned_overflow_wraps", NULL);
	result(0, failures == before, 1, "arithmetic", NULL);

	before = failures;
	header(2, "environment", 3);
	result(2, getpid() > 0, 1, "pid_is_positive", NULL);
	result(2, stat("/proc/self/status", &st) == 0, 2, "proc_is_mounted", NULL);
	{
		int sub_before = failures;
		long page = sysconf(_SC_PAGESIZE);
		header(4, "page_sizes", 2);
		result(4, page == 4096, 1, "base_page_is_4k", NULL);
		printf("    # hugetlbfs is not mounted in Kestrel guests\n");
		result(4, 1, 2, "huge_pages", "SKIP hugetlbfs not mounted");
		result(2, failures == sub_before, 3, "page_sizes", NULL);
	}
	result(0, failures == before, 2, "environment", NULL);
	return failures ? 1 : 0;
}
