/*
 * vp-memcheck: a guest memory-integrity checker for live-migration tests (virtproof).
 *
 * A region of N MiB (a file in /dev/shm, mapped MAP_SHARED and mlocked, so that another
 * process can reach the very same pages) holds in every 4 KiB page a pattern derived from
 * (seed, page number, generation):
 *
 *   word 0      MAGIC ^ seed
 *   word 1      page << 32 | generation            (so a wrong page says what it holds)
 *   word 2..511 v + i * K, v = splitmix64(seed ^ page << 32 ^ generation), K odd
 *
 * The writer sweeps the pages in order at a requested rate (MiB/s; 0 = flat out), bumping
 * each page's generation. Before it rewrites a page it checks the page still holds the
 * previous generation (so every page is checked once per sweep for free). No per-page
 * state is kept: page p holds generation `pass` if p < cursor, else `pass - 1`; the only
 * state is (seed, pass, cursor), held in the process (its own memory is guest memory too:
 * corruption there shows up as every page "wrong", which is still a detection).
 * The first HOT pages (-H, default 16) are a hot set: checked and rewritten every chunk, all at
 * generation hot_pass. A lost dirty-page update needs a page written again soon after a
 * migration's dirty sync (the way kernel stacks, timers and per-CPU data are), which the slow
 * sweep alone never does.
 *
 * A bad page is counted once: the verify (or the sweep) that finds it rewrites it with what it
 * should hold, so a later check does not find the same damage again.
 *
 * Commands:
 *   vp-memcheck run [-m MIB] [-r MIBPS|idle] [-H HOT] [-f FILE] [-p PIDFILE] [-o REPORT] [-F]
 *       the workload (daemonizes once the region is filled and the pid file written, unless -F).
 *       -r 0 rewrites flat out; -r idle fills the region once and never rewrites it (a guest that
 *       dirties nothing, still verifiable).
 *       SIGUSR1: verify every page now and write the report (JSON, one object) to REPORT
 *       atomically; SIGTERM/SIGINT: stop, remove FILE and PIDFILE.
 *   vp-memcheck verify [-p PIDFILE] [-o REPORT] [-t TIMEOUT_S]
 *       send SIGUSR1 to the workload, wait for the new report, print it; exit 0 if no bad
 *       page was ever found (by any verify or sweep), 1 if one was, 2 on error.
 *   vp-memcheck stop [-p PIDFILE] [-t TIMEOUT_S]
 *       SIGTERM the workload and wait until it is gone.
 *   vp-memcheck corrupt [-f FILE] -P PAGE [-x flip|zero|stale|swap]
 *       damage one page behind the workload's back (through its /dev/shm file):
 *       flip one bit, zero the page, put back the previous generation (a lost dirty page),
 *       or copy the next page over it.
 *   vp-memcheck bench [-m MIB] [-n ROUNDS]
 *       fill an anonymous region and time fill and verify (s per GiB), no daemon.
 *
 * Report fields: seq, time (epoch s), mib, pages, bad_pages (this verify), sweep_bad_pages
 * (found by the sweeps since the previous verify), bad_pages_total (every bad page ever found),
 * verify_ms, s_per_gib, pass, cursor, pages_written (ever), rate_mibps, hot_pages, uptime_s, and
 * "bad" / "sweep_bad": the first 16 bad pages of this verify and of the sweeps since the last
 * one: page, offset in the region, gpa (guest-physical address, from /proc/self/pagemap; root
 * only), the first wrong word, expected and found values, and what the page holds instead
 * (holds_page/holds_gen for a pattern page, else "zeros" or "garbage").
 *
 * Defaults put every file in /dev/shm, which any user may write (a stock cloud image's login
 * user is not root). Build: a static binary, `musl-gcc -static -Os` (or `gcc -static`); POSIX only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define MAGIC 0x5650434b4d454d31ull /* "VPCKMEM1" */
#define KSTEP 0x9e3779b97f4a7c15ull
#define MAX_BAD_LISTED 16
#define CHUNK_PAGES 64u /* the writer's unit of work between rate/sleep/signal checks */

static volatile sig_atomic_t want_verify, want_stop;

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static inline uint64_t page_base(uint64_t seed, uint64_t page, uint64_t gen)
{
	return splitmix64(seed ^ (page << 32) ^ gen);
}

static void fill_page(uint64_t *w, uint64_t seed, uint64_t page, uint64_t gen)
{
	uint64_t e = page_base(seed, page, gen) + 2 * KSTEP;
	w[0] = MAGIC ^ seed;
	w[1] = (page << 32) | (gen & 0xffffffffu);
	for (unsigned i = 2; i < WORDS; i++, e += KSTEP)
		w[i] = e;
}

/* 0 if page holds (page, gen); else 1 + index of the first wrong word. Hot path: OR-reduce. */
__attribute__((optimize("O3"))) static unsigned check_page(const uint64_t *w, uint64_t seed,
							   uint64_t page, uint64_t gen)
{
	uint64_t e = page_base(seed, page, gen) + 2 * KSTEP;
	uint64_t acc = (w[0] ^ (MAGIC ^ seed)) | (w[1] ^ ((page << 32) | (gen & 0xffffffffu)));
	uint64_t e0 = e, e1 = e + KSTEP, e2 = e + 2 * KSTEP, e3 = e + 3 * KSTEP;
	unsigned i;
	for (i = 2; i + 4 <= WORDS; i += 4) {
		acc |= (w[i] ^ e0) | (w[i + 1] ^ e1) | (w[i + 2] ^ e2) | (w[i + 3] ^ e3);
		e0 += 4 * KSTEP; e1 += 4 * KSTEP; e2 += 4 * KSTEP; e3 += 4 * KSTEP;
	}
	for (; i < WORDS; i++)
		acc |= w[i] ^ (e + (uint64_t)(i - 2) * KSTEP);
	if (!acc)
		return 0;
	/* slow path: find the first bad word */
	if (w[0] != (MAGIC ^ seed)) return 1;
	if (w[1] != ((page << 32) | (gen & 0xffffffffu))) return 2;
	for (i = 2; i < WORDS; i++)
		if (w[i] != e + (uint64_t)(i - 2) * KSTEP) return i + 1;
	return 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The guest-physical address of a mapped virtual address, 0 if unknown (not root: no PFNs). */
static uint64_t physical_address(const void *addr)
{
	uint64_t entry = 0, vpn = (uintptr_t)addr / PAGE;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = pread(fd, &entry, sizeof entry, (off_t)(vpn * sizeof entry));
	close(fd);
	if (n != sizeof entry || !(entry >> 63))
		return 0;
	uint64_t pfn = entry & ((1ull << 55) - 1);
	return pfn ? pfn * PAGE + (uintptr_t)addr % PAGE : 0;
}

/* ---------------------------------------------------------------------------------------- */

struct bad {
	uint64_t page, word, found, expected, found_hdr, found_magic, expected_gen, gpa;
	double when; /* epoch seconds */
	const char *where; /* "verify", "sweep" or "sweep-hot" */
};

struct state {
	uint64_t *mem;
	uint64_t pages, seed, pass, cursor;
	uint64_t hot, hot_pass; /* pages [0, hot) are all rewritten every chunk, at generation hot_pass */
	double rate_mibps;
	int idle; /* fill once, never rewrite */
	const char *file, *report, *pidfile;
	/* findings */
	uint64_t sweep_bad_total, sweep_bad_since, bad_total, verify_count, pages_written;
	struct bad listed[MAX_BAD_LISTED]; /* this verify's first bad pages */
	unsigned nlisted;
	struct bad swept[MAX_BAD_LISTED]; /* the first bad pages the sweeps found since the last verify */
	unsigned nswept;
	double started;
};

static uint64_t expected_gen(const struct state *s, uint64_t page)
{
	if (page < s->hot)
		return s->hot_pass;
	return page < s->cursor ? s->pass : s->pass - 1;
}

/* Record a bad page (before it is repaired), then repair it: each damage is counted once. */
static void note_bad(struct state *s, uint64_t page, unsigned where, uint64_t gen, const char *kind)
{
	int sweep = kind[0] == 's';
	unsigned *n = sweep ? &s->nswept : &s->nlisted;
	uint64_t *w = s->mem + page * WORDS;
	s->bad_total++;
	if (*n < MAX_BAD_LISTED) {
		struct bad *b = sweep ? &s->swept[(*n)++] : &s->listed[(*n)++];
		uint64_t word = where - 1;
		b->page = page;
		b->word = word;
		b->found = w[word];
		b->found_magic = w[0] == (MAGIC ^ s->seed);
		b->found_hdr = w[1];
		b->expected_gen = gen;
		b->gpa = physical_address(w);
		if (word == 0) b->expected = MAGIC ^ s->seed;
		else if (word == 1) b->expected = (page << 32) | (gen & 0xffffffffu);
		else b->expected = page_base(s->seed, page, gen) + word * KSTEP;
		b->when = wall_s();
		b->where = kind;
	}
	fill_page(w, s->seed, page, gen);
}

static void write_bad(FILE *f, const struct bad *b, int first)
{
	fprintf(f, "%s{\"where\": \"%s\", \"time\": %.3f, \"page\": %" PRIu64 ", \"offset\": \"0x%" PRIx64
		   "\", \"gpa\": \"0x%" PRIx64 "\", \"word\": %" PRIu64 ", \"expected_gen\": %" PRIu64
		   ", \"found\": \"0x%016" PRIx64 "\", \"expected\": \"0x%016" PRIx64 "\"",
		first ? "" : ", ", b->where, b->when, b->page, b->page * PAGE + b->word * 8,
		b->gpa ? b->gpa - b->gpa % PAGE + b->word * 8 : 0, b->word, b->expected_gen, b->found, b->expected);
	if (b->found_magic)
		fprintf(f, ", \"holds_page\": %" PRIu64 ", \"holds_gen\": %" PRIu64, b->found_hdr >> 32,
			b->found_hdr & 0xffffffffu);
	else
		fprintf(f, ", \"holds\": \"%s\"", b->found_hdr == 0 && b->found == 0 ? "zeros" : "garbage");
	fputc('}', f);
}

static int write_report(struct state *s, uint64_t bad, double ms)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", s->report);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -1;
	double gib = (double)s->pages * PAGE / (1024.0 * 1024 * 1024);
	fprintf(f, "{\"seq\": %" PRIu64 ", \"time\": %.3f, \"mib\": %" PRIu64 ", \"pages\": %" PRIu64
		   ", \"bad_pages\": %" PRIu64 ", \"sweep_bad_pages\": %" PRIu64 ", \"bad_pages_total\": %" PRIu64
		   ", \"verify_ms\": %.1f, \"s_per_gib\": %.3f, \"pass\": %" PRIu64 ", \"cursor\": %" PRIu64
		   ", \"pages_written\": %" PRIu64 ", \"rate_mibps\": %g, \"idle\": %s, \"hot_pages\": %" PRIu64
		   ", \"uptime_s\": %.1f, \"bad\": [",
		s->verify_count, wall_s(), s->pages * PAGE >> 20, s->pages, bad, s->sweep_bad_since, s->bad_total, ms,
		ms / 1000.0 / gib, s->pass, s->cursor, s->pages_written, s->rate_mibps, s->idle ? "true" : "false", s->hot,
		now_s() - s->started);
	for (unsigned i = 0; i < s->nlisted; i++)
		write_bad(f, &s->listed[i], i == 0);
	fprintf(f, "], \"sweep_bad\": [");
	for (unsigned i = 0; i < s->nswept; i++)
		write_bad(f, &s->swept[i], i == 0);
	fprintf(f, "]}\n");
	if (fflush(f) || fsync(fileno(f)) || fclose(f))
		return -1;
	return rename(tmp, s->report);
}

static void verify_all(struct state *s)
{
	double t0 = now_s();
	uint64_t bad = 0;
	s->nlisted = 0;
	for (uint64_t p = 0; p < s->pages; p++) {
		uint64_t gen = expected_gen(s, p);
		unsigned where = check_page(s->mem + p * WORDS, s->seed, p, gen);
		if (where) {
			bad++;
			note_bad(s, p, where, gen, "verify");
		}
	}
	double ms = (now_s() - t0) * 1000;
	s->verify_count++;
	if (write_report(s, bad, ms) != 0)
		fprintf(stderr, "vp-memcheck: cannot write %s: %s\n", s->report, strerror(errno));
	s->nswept = 0; /* the next report lists what the sweeps find from now on */
	s->sweep_bad_since = 0;
}

static void on_usr1(int sig) { (void)sig; want_verify = 1; }
static void on_term(int sig) { (void)sig; want_stop = 1; }

static void sleep_until(double t)
{
	double d = t - now_s();
	if (d <= 0)
		return;
	struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
	nanosleep(&ts, NULL); /* a signal cuts it short: the loop re-checks */
}

static void initial_fill(struct state *s)
{
	/* every page at generation 1; then pass 2 starts after the hot set */
	for (uint64_t p = 0; p < s->pages; p++)
		fill_page(s->mem + p * WORDS, s->seed, p, 1);
	s->pass = 2;
	s->cursor = s->hot;
	s->hot_pass = 1;
}

static void sweep_bad(struct state *s, uint64_t page, unsigned where, uint64_t gen, const char *kind)
{
	s->sweep_bad_total++;
	s->sweep_bad_since++;
	note_bad(s, page, where, gen, kind);
}

/* The hot set: every chunk, check then rewrite pages [0, hot) at the next generation (kernel-like
 * hot data: a page written again and again within one TLB lifetime is what a lost dirty bit
 * breaks; a page the sweep rewrites once a pass is not). */
static void rewrite_hot(struct state *s)
{
	for (uint64_t p = 0; p < s->hot; p++) {
		unsigned where = check_page(s->mem + p * WORDS, s->seed, p, s->hot_pass);
		if (where)
			sweep_bad(s, p, where, s->hot_pass, "sweep-hot");
	}
	s->hot_pass++;
	for (uint64_t p = 0; p < s->hot; p++)
		fill_page(s->mem + p * WORDS, s->seed, p, s->hot_pass);
	s->pages_written += s->hot;
}

/* Before anyone can learn the pid: SIGUSR1's default action would kill the workload. */
static void install_handlers(void)
{
	struct sigaction sa = {0};
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

static int run_loop(struct state *s)
{
	double chunk_s = s->rate_mibps > 0 ? (CHUNK_PAGES * (double)PAGE / (1 << 20)) / s->rate_mibps : 0;
	double next = now_s();
	while (!want_stop) {
		if (want_verify) {
			want_verify = 0;
			verify_all(s);
		}
		if (s->idle) { /* a signal (verify, stop) cuts the nap short; at worst it is seen 50 ms late */
			sleep_until(now_s() + 0.05);
			continue;
		}
		if (s->hot)
			rewrite_hot(s);
		for (unsigned k = 0; k < CHUNK_PAGES && s->hot < s->pages; k++) {
			uint64_t p = s->cursor;
			uint64_t *w = s->mem + p * WORDS;
			unsigned where = check_page(w, s->seed, p, s->pass - 1);
			if (where)
				sweep_bad(s, p, where, s->pass - 1, "sweep");
			fill_page(w, s->seed, p, s->pass);
			s->pages_written++;
			if (++s->cursor == s->pages) {
				s->cursor = s->hot;
				s->pass++;
			}
		}
		if (chunk_s > 0) {
			next += chunk_s;
			double t = now_s();
			if (next < t - 1.0) /* starved (a paused or stolen vCPU): do not burst to catch up */
				next = t;
			sleep_until(next);
		}
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */

static const char *opt_file = "/dev/shm/vp-memcheck", *opt_pid = "/dev/shm/vp-memcheck.pid",
		  *opt_report = "/dev/shm/vp-memcheck.json";

static uint64_t *map_file(const char *path, uint64_t bytes, int create)
{
	int fd = open(path, create ? O_RDWR | O_CREAT | O_TRUNC : O_RDWR, 0600);
	if (fd < 0) {
		fprintf(stderr, "vp-memcheck: open %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if (create && ftruncate(fd, (off_t)bytes) != 0) {
		fprintf(stderr, "vp-memcheck: ftruncate %s: %s\n", path, strerror(errno));
		close(fd);
		return NULL;
	}
	void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | (create ? MAP_POPULATE : 0), fd, 0);
	close(fd);
	if (m == MAP_FAILED) {
		fprintf(stderr, "vp-memcheck: mmap %s: %s\n", path, strerror(errno));
		return NULL;
	}
	return m;
}

static int usage(void)
{
	fputs("usage: vp-memcheck run [-m MIB] [-r MIBPS|idle] [-H HOTPAGES] [-f FILE] [-p PIDFILE] [-o REPORT] [-F]\n"
	      "       vp-memcheck verify [-p PIDFILE] [-o REPORT] [-t TIMEOUT_S]\n"
	      "       vp-memcheck stop [-p PIDFILE] [-t TIMEOUT_S]\n"
	      "       vp-memcheck corrupt [-f FILE] -P PAGE [-x flip|zero|stale|swap]\n"
	      "       vp-memcheck bench [-m MIB] [-n ROUNDS]\n",
	      stderr);
	return 2;
}

static int cmd_run(int argc, char **argv)
{
	uint64_t mib = 64;
	double rate = 0;
	int fg = 0, idle = 0, c;
	uint64_t hot = 16;
	while ((c = getopt(argc, argv, "m:r:f:p:o:FH:")) != -1) {
		switch (c) {
		case 'H': hot = strtoull(optarg, NULL, 10); break;
		case 'm': mib = strtoull(optarg, NULL, 10); break;
		case 'r':
			if (!strcmp(optarg, "idle")) idle = 1;
			else rate = strtod(optarg, NULL);
			break;
		case 'f': opt_file = optarg; break;
		case 'p': opt_pid = optarg; break;
		case 'o': opt_report = optarg; break;
		case 'F': fg = 1; break;
		default: return usage();
		}
	}
	if (!mib || rate < 0)
		return usage();
	struct state s = {0};
	s.idle = idle;
	s.pages = mib * (1 << 20) / PAGE;
	s.hot = hot < s.pages ? hot : s.pages;
	s.rate_mibps = rate;
	s.file = opt_file;
	s.report = opt_report;
	s.pidfile = opt_pid;
	s.mem = map_file(opt_file, s.pages * PAGE, 1);
	if (!s.mem)
		return 2;
	{
		int fd = open("/dev/urandom", O_RDONLY);
		if (fd < 0 || read(fd, &s.seed, sizeof s.seed) != sizeof s.seed)
			s.seed = splitmix64((uint64_t)wall_s() ^ (uint64_t)getpid());
		if (fd >= 0) close(fd);
	}
	s.seed &= 0xffffffff00000000ull; /* keeps word 1's encoding independent of the seed */
	int ready[2] = {-1, -1};
	if (!fg) { /* the parent returns once the region is filled and the pid file written */
		if (pipe(ready) != 0) return 2;
		pid_t pid = fork();
		if (pid < 0) return 2;
		if (pid > 0) {
			char ok = 0;
			close(ready[1]);
			return read(ready[0], &ok, 1) == 1 && ok == '1' ? 0 : 2;
		}
		close(ready[0]);
		setsid();
	}
	install_handlers();
	int locked = mlock(s.mem, s.pages * PAGE) == 0; /* after fork: locks are not inherited */
	fprintf(stderr, "vp-memcheck: %" PRIu64 " MiB at %s, rate %g MiB/s%s, %" PRIu64 " hot pages, mlock %s\n", mib,
		opt_file, rate, idle ? " (idle: no rewriting)" : "", s.hot, locked ? "ok" : "failed");
	unlink(opt_report);
	initial_fill(&s);
	FILE *pf = fopen(opt_pid, "w");
	if (!pf) {
		fprintf(stderr, "vp-memcheck: cannot write %s: %s\n", opt_pid, strerror(errno));
		unlink(opt_file);
		return 2;
	}
	fprintf(pf, "%d\n", (int)getpid());
	fclose(pf);
	s.started = now_s();
	if (!fg) {
		int nul = open("/dev/null", O_RDWR);
		if (nul >= 0) { dup2(nul, 0); dup2(nul, 1); dup2(nul, 2); if (nul > 2) close(nul); }
		if (write(ready[1], "1", 1) != 1) return 2;
		close(ready[1]);
	}
	run_loop(&s);
	unlink(opt_file);
	unlink(opt_pid);
	return 0;
}

static int read_pid(void)
{
	FILE *pf = fopen(opt_pid, "r");
	int pid = 0;
	if (!pf || fscanf(pf, "%d", &pid) != 1 || pid <= 0) {
		fprintf(stderr, "vp-memcheck: no workload pid in %s\n", opt_pid);
		if (pf) fclose(pf);
		return -1;
	}
	fclose(pf);
	return pid;
}

static int read_seq(const char *path, long *seq)
{
	char buf[256] = {0};
	int fd = open(path, O_RDONLY);
	if (fd < 0) return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return -1;
	char *p = strstr(buf, "\"seq\": ");
	if (!p) return -1;
	*seq = strtol(p + 7, NULL, 10);
	return 0;
}

static int cmd_verify(int argc, char **argv)
{
	double timeout = 60;
	int c;
	while ((c = getopt(argc, argv, "p:o:t:")) != -1) {
		switch (c) {
		case 'p': opt_pid = optarg; break;
		case 'o': opt_report = optarg; break;
		case 't': timeout = strtod(optarg, NULL); break;
		default: return usage();
		}
	}
	int pid = read_pid();
	if (pid < 0)
		return 2;
	long before = -1, seq;
	read_seq(opt_report, &before);
	if (kill(pid, SIGUSR1) != 0) {
		fprintf(stderr, "vp-memcheck: workload %d: %s\n", pid, strerror(errno));
		return 2;
	}
	double end = now_s() + timeout;
	while (now_s() < end) {
		if (read_seq(opt_report, &seq) == 0 && seq > before) {
			FILE *f = fopen(opt_report, "r");
			static char buf[1 << 16];
			size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
			if (f) fclose(f);
			buf[n] = 0;
			fputs(buf, stdout);
			return strstr(buf, "\"bad_pages_total\": 0,") ? 0 : 1;
		}
		usleep(20000);
	}
	fprintf(stderr, "vp-memcheck: no report from %d within %g s\n", pid, timeout);
	return 2;
}

static int cmd_stop(int argc, char **argv)
{
	double timeout = 30;
	int c;
	while ((c = getopt(argc, argv, "p:t:")) != -1) {
		switch (c) {
		case 'p': opt_pid = optarg; break;
		case 't': timeout = strtod(optarg, NULL); break;
		default: return usage();
		}
	}
	int pid = read_pid();
	if (pid < 0)
		return 0; /* nothing runs */
	if (kill(pid, SIGTERM) != 0)
		return errno == ESRCH ? 0 : 2;
	double end = now_s() + timeout;
	while (now_s() < end) {
		if (kill(pid, 0) != 0 && errno == ESRCH)
			return 0;
		usleep(20000);
	}
	fprintf(stderr, "vp-memcheck: workload %d still runs after %g s\n", pid, timeout);
	return 2;
}

static int cmd_corrupt(int argc, char **argv)
{
	long long page = -1;
	const char *how = "flip";
	int c;
	while ((c = getopt(argc, argv, "f:P:x:")) != -1) {
		switch (c) {
		case 'f': opt_file = optarg; break;
		case 'P': page = strtoll(optarg, NULL, 10); break;
		case 'x': how = optarg; break;
		default: return usage();
		}
	}
	struct stat st;
	if (page < 0 || stat(opt_file, &st) != 0 || (uint64_t)(page + 1) * PAGE > (uint64_t)st.st_size) {
		fprintf(stderr, "vp-memcheck: page %lld is not inside %s\n", page, opt_file);
		return 2;
	}
	uint64_t *m = map_file(opt_file, st.st_size, 0);
	if (!m) return 2;
	uint64_t pages = st.st_size / PAGE;
	uint64_t *w = m + (uint64_t)page * WORDS;
	uint64_t seed = w[0] ^ MAGIC, hdr = w[1];
	if (!strcmp(how, "flip")) {
		w[WORDS / 2] ^= 1ull << 17;
	} else if (!strcmp(how, "zero")) {
		memset(w, 0, PAGE);
	} else if (!strcmp(how, "stale")) { /* the previous generation: what a lost dirty page looks like */
		uint64_t gen = hdr & 0xffffffffu;
		fill_page(w, seed, (uint64_t)page, gen > 1 ? gen - 1 : gen + 1);
	} else if (!strcmp(how, "swap")) {
		memcpy(w, m + ((uint64_t)page + 1) % pages * WORDS, PAGE);
	} else {
		return usage();
	}
	msync(w, PAGE, MS_SYNC);
	printf("corrupted page %lld (offset 0x%llx) of %s: %s\n", page, page * (long long)PAGE, opt_file, how);
	return 0;
}

static int cmd_bench(int argc, char **argv)
{
	uint64_t mib = 64;
	int rounds = 3, c;
	while ((c = getopt(argc, argv, "m:n:")) != -1) {
		switch (c) {
		case 'm': mib = strtoull(optarg, NULL, 10); break;
		case 'n': rounds = atoi(optarg); break;
		default: return usage();
		}
	}
	uint64_t pages = mib * (1 << 20) / PAGE;
	uint64_t *m = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	uint64_t seed = 0x1234567800000000ull;
	double gib = (double)pages * PAGE / (1024.0 * 1024 * 1024);
	for (int r = 0; r < rounds; r++) {
		double t0 = now_s();
		for (uint64_t p = 0; p < pages; p++)
			fill_page(m + p * WORDS, seed, p, r + 1);
		double t1 = now_s();
		uint64_t bad = 0;
		for (uint64_t p = 0; p < pages; p++)
			bad += check_page(m + p * WORDS, seed, p, r + 1) != 0;
		double t2 = now_s();
		printf("{\"mib\": %" PRIu64 ", \"round\": %d, \"fill_ms\": %.1f, \"verify_ms\": %.1f, \"fill_s_per_gib\": %.3f"
		       ", \"verify_s_per_gib\": %.3f, \"bad\": %" PRIu64 "}\n",
		       mib, r, (t1 - t0) * 1000, (t2 - t1) * 1000, (t1 - t0) / gib, (t2 - t1) / gib, bad);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	const char *cmd = argv[1];
	argc--;
	argv++;
	if (!strcmp(cmd, "run")) return cmd_run(argc, argv);
	if (!strcmp(cmd, "verify")) return cmd_verify(argc, argv);
	if (!strcmp(cmd, "stop")) return cmd_stop(argc, argv);
	if (!strcmp(cmd, "corrupt")) return cmd_corrupt(argc, argv);
	if (!strcmp(cmd, "bench")) return cmd_bench(argc, argv);
	return usage();
}
