/* escprobe: the escape attempts of tests/test_escapes.py, as one static program that runs
 * wherever a hostile scriptlet or hook would (chrooted into a busybox root, no libc there).
 *
 *   escprobe PLAN OUT
 *
 * PLAN has one attempt per line: `NAME OP [ARG...]` (words separated by spaces; `#` comments).
 * Each attempt runs in its own forked child (a chroot escape or a crash stays there) and one
 * line `NAME<TAB>OK detail` or `NAME<TAB>ERR ERRNONAME step detail` is appended to OUT.
 * Every attempt is harmless when it succeeds unconfined: it targets the throwaway root, a
 * file the test made, a listener or process the test started, or it is a call whose
 * capability check comes before anything it would change (reboot with a bad magic number,
 * settimeofday(NULL, NULL), sethostname to the current name, init_module of garbage...).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/bpf.h>
#include <unistd.h>

static char result[512];

static const char *ename(int e) {
    switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES)
    E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL)
    E(ENOSPC) E(EROFS) E(EMLINK) E(ENOSYS) E(ENOEXEC) E(ENOTSOCK) E(EADDRINUSE)
    E(EADDRNOTAVAIL) E(ENETDOWN) E(ENETUNREACH) E(ECONNREFUSED) E(ECONNRESET)
    E(EHOSTUNREACH) E(ETIMEDOUT) E(EAFNOSUPPORT) E(EOPNOTSUPP) E(EPROTONOSUPPORT)
    E(ENOTCONN) E(ELOOP) E(ENAMETOOLONG) E(ENOTEMPTY) E(ETXTBSY) E(EFBIG) E(E2BIG)
#undef E
    default: return "E?";
    }
}

static int fail(const char *step) {
    int e = errno;
    snprintf(result, sizeof result, "ERR %s %s", ename(e), step);
    return 1;
}

static int ok(const char *detail) {
    snprintf(result, sizeof result, "OK %s", detail);
    return 0;
}

static void clean(char *s) {
    for (; *s; s++)
        if (*s == '\n' || *s == '\t' || *s == '\r') *s = ' ';
}

static int do_write(const char *path, int flags) {
    int fd = open(path, O_WRONLY | O_CLOEXEC | flags, 0644);
    if (fd < 0) return fail("open");
    static const char text[] = "# pwned\n";     /* a comment in a conf, YAML or shell file */
    if (write(fd, text, sizeof text - 1) != (ssize_t)(sizeof text - 1)) return fail("write");
    close(fd);
    return ok("written");
}

static int do_read(const char *path) {
    char buf[128] = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail("open");
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n < 0) return fail("read");
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    clean(buf);
    return ok(buf);
}

static int mkparents(const char *path) {
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    }
    return 0;
}

static int inet_addr_of(const char *ip, const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(port));
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

static int unix_connect(const char *name, int abstract, const char *token) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    socklen_t len;
    if (abstract) {
        snprintf(sa.sun_path + 1, sizeof sa.sun_path - 1, "%s", name);
        len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
    } else {
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", name);
        len = sizeof sa;
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&sa, len) != 0) return fail("connect");
    if (send(s, token, strlen(token), 0) < 0) return fail("send");
    close(s);
    return ok("connected, token sent");
}

/* The classic escape: chroot into a subdirectory while the working directory stays above it,
 * walk up past the old root, chroot there. Then the real root's paths are reachable. */
static int escape_chroot(void) {
    if (mkdir("/tmp/.escape", 0755) != 0 && errno != EEXIST) return fail("mkdir");
    if (chdir("/") != 0) return fail("chdir");
    if (chroot("/tmp/.escape") != 0) return fail("chroot");
    for (int i = 0; i < 64; i++)
        if (chdir("..") != 0) return fail("chdir..");
    if (chroot(".") != 0) return fail("chroot.");
    return 0;
}

static int bpf_call(int cmd, union bpf_attr *attr) {
    return (int)syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

static int run(int argc, char **argv) {
    const char *op = argv[0];
    const char *a1 = argc > 1 ? argv[1] : "", *a2 = argc > 2 ? argv[2] : "";
    const char *a3 = argc > 3 ? argv[3] : "";

    if (!strcmp(op, "write")) return do_write(a1, O_CREAT | O_TRUNC);
    if (!strcmp(op, "mkdirs-write")) {
        if (mkparents(a1) != 0) return fail("mkdir");
        return do_write(a1, O_CREAT | O_TRUNC);
    }
    if (!strcmp(op, "append")) return do_write(a1, O_APPEND);
    if (!strcmp(op, "plant-hook")) {     /* a valid alpm hook that never matches: inert */
        static const char hook[] = "# pwned\n[Trigger]\nOperation = Remove\nType = Package\n"
            "Target = no-such-package-pwned\n\n[Action]\nWhen = PostTransaction\n"
            "Exec = /usr/bin/true\n";
        int fd = open(a1, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) return fail("open");
        if (write(fd, hook, sizeof hook - 1) != (ssize_t)(sizeof hook - 1)) return fail("write");
        close(fd);
        return ok("hook planted");
    }
    if (!strcmp(op, "read")) return do_read(a1);
    if (!strcmp(op, "truncate")) {
        if (truncate(a1, 0) != 0) return fail("truncate");
        return ok("truncated");
    }
    if (!strcmp(op, "rename")) {
        if (rename(a1, a2) != 0) return fail("rename");
        return ok("renamed");
    }
    if (!strcmp(op, "link-write")) {      /* a second name in a writable place, then write */
        if (link(a1, a2) != 0) return fail("link");
        return do_write(a2, O_APPEND);
    }
    if (!strcmp(op, "link-read")) {
        if (link(a1, a2) != 0) return fail("link");
        return do_read(a2);
    }
    if (!strcmp(op, "symlink-read")) {
        unlink(a2);
        if (symlink(a1, a2) != 0) return fail("symlink");
        return do_read(a2);
    }
    if (!strcmp(op, "tcp-connect")) {
        struct sockaddr_in sa;
        inet_addr_of(a1, a2, &sa);
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) return fail("socket");
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) return fail("connect");
        if (send(s, a3, strlen(a3), 0) < 0) return fail("send");
        close(s);
        return ok("connected, token sent");
    }
    if (!strcmp(op, "tcp-listen")) {      /* bind, listen, wait A3 ms for the host to connect */
        struct sockaddr_in sa;
        inet_addr_of(a1, a2, &sa);
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) return fail("socket");
        if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0) return fail("bind");
        if (listen(s, 4) != 0) return fail("listen");
        struct pollfd p = {.fd = s, .events = POLLIN};
        int r = poll(&p, 1, atoi(a3));
        if (r < 0) return fail("poll");
        if (r == 0) { errno = ETIMEDOUT; return fail("bound-but-no-connection-reached-it"); }
        int c = accept(s, NULL, NULL);
        if (c < 0) return fail("accept");
        close(c);
        close(s);
        return ok("bound; a connection from the host arrived");
    }
    if (!strcmp(op, "udp-send")) {
        struct sockaddr_in sa;
        inet_addr_of(a1, a2, &sa);
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0) return fail("socket");
        if (sendto(s, a3, strlen(a3), 0, (struct sockaddr *)&sa, sizeof sa) < 0)
            return fail("sendto");
        close(s);
        return ok("datagram sent");
    }
    if (!strcmp(op, "raw-socket")) {
        int s = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
        if (s < 0) return fail("socket");
        close(s);
        return ok("raw socket");
    }
    if (!strcmp(op, "unix-connect")) return unix_connect(a1, 0, a2);
    if (!strcmp(op, "abstract-connect")) return unix_connect(a1, 1, a2);
    if (!strcmp(op, "kill")) {
        if (kill(atoi(a1), atoi(a2)) != 0) return fail("kill");
        return ok("signal delivered");
    }
    if (!strcmp(op, "ptrace")) {
        pid_t pid = atoi(a1);
        if (ptrace(PTRACE_ATTACH, pid, 0, 0) != 0) return fail("attach");
        int st;
        waitpid(pid, &st, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
        return ok("attached and detached");
    }
    if (!strcmp(op, "mknod")) {
        unlink(a1);
        if (mknod(a1, S_IFCHR | 0600, makedev(1, 3)) != 0) return fail("mknod");
        unlink(a1);
        return ok("char device made (and removed)");
    }
    if (!strcmp(op, "capbset")) {         /* is capability N in the bounding set? */
        int r = prctl(PR_CAPBSET_READ, atoi(a1), 0, 0, 0);
        if (r < 0) return fail("prctl");
        if (r == 0) { errno = EPERM; return fail("not-in-bounding-set"); }
        return ok("in the bounding set");
    }
    if (!strcmp(op, "init-module")) {     /* 64 bytes of zeros: never a loadable module */
        static char image[64];
        if (syscall(SYS_init_module, image, sizeof image, "") != 0) return fail("init_module");
        return ok("loaded?!");
    }
    if (!strcmp(op, "finit-module")) {    /* an empty file: never a loadable module */
        int fd = open(a1, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return fail("open");
        if (syscall(SYS_finit_module, fd, "", 0) != 0) return fail("finit_module");
        return ok("loaded?!");
    }
    if (!strcmp(op, "bpf-map")) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_QUEUE;        /* needs CAP_BPF whatever the sysctl */
        attr.key_size = 0;
        attr.value_size = 4;
        attr.max_entries = 1;
        int fd = bpf_call(BPF_MAP_CREATE, &attr);
        if (fd < 0) return fail("BPF_MAP_CREATE");
        close(fd);
        return ok("map created (and closed)");
    }
    if (!strcmp(op, "bpf-prog")) {       /* r0 = 0; exit: a socket filter that drops all */
        struct bpf_insn insns[2];
        memset(insns, 0, sizeof insns);
        insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
        insns[0].dst_reg = BPF_REG_0;
        insns[1].code = BPF_JMP | BPF_EXIT;
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.prog_type = BPF_PROG_TYPE_KPROBE;     /* needs CAP_BPF + CAP_PERFMON/SYS_ADMIN */
        attr.insn_cnt = 2;
        attr.insns = (uintptr_t)insns;
        attr.license = (uintptr_t)"GPL";
        int fd = bpf_call(BPF_PROG_LOAD, &attr);
        if (fd < 0) return fail("BPF_PROG_LOAD");
        close(fd);
        return ok("program loaded (and closed)");
    }
    if (!strcmp(op, "mount")) {
        if (mount("none", a1, "tmpfs", MS_NOSUID | MS_NODEV, "size=16k") != 0)
            return fail("mount");
        umount2(a1, MNT_DETACH);
        return ok("mounted (and unmounted)");
    }
    if (!strcmp(op, "unshare-mnt")) {
        if (unshare(CLONE_NEWNS) != 0) return fail("unshare");
        return ok("new mount namespace");
    }
    if (!strcmp(op, "unshare-user-mount")) {  /* a user namespace's root mounting tmpfs */
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) return fail("unshare");
        if (mount("none", a1, "tmpfs", 0, "size=16k") != 0) return fail("mount");
        umount2(a1, MNT_DETACH);
        return ok("mounted in a user namespace");
    }
    if (!strcmp(op, "reboot-badmagic")) { /* capability check first, then the magic: EINVAL */
        if (syscall(SYS_reboot, 0, 0, 0, NULL) != 0) return fail("reboot");
        return ok("?!");
    }
    if (!strcmp(op, "settime-null")) {    /* CAP_SYS_TIME check, then nothing to set */
        if (syscall(SYS_settimeofday, NULL, NULL) != 0) return fail("settimeofday");
        return ok("allowed (nothing set)");
    }
    if (!strcmp(op, "sethostname-same")) {
        char name[256] = {0};
        if (gethostname(name, sizeof name - 1) != 0) return fail("gethostname");
        if (sethostname(name, strlen(name)) != 0) return fail("sethostname");
        return ok("hostname set to itself");
    }
    if (!strncmp(op, "escape-", 7)) {
        if (escape_chroot() != 0) return 1;
        const char *what = op + 7;
        if (!strcmp(what, "read")) return do_read(a1);
        if (!strcmp(what, "append")) return do_write(a1, O_APPEND);
        if (!strcmp(what, "open-write")) {
            int fd = open(a1, O_WRONLY | O_CLOEXEC);
            if (fd < 0) return fail("open");
            close(fd);
            return ok("opened for writing (nothing written)");
        }
        if (!strcmp(what, "rewrite")) {   /* read the value, write the same value back */
            char buf[256] = {0};
            int fd = open(a1, O_RDONLY | O_CLOEXEC);
            if (fd < 0) return fail("open-read");
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n <= 0) return fail("read");
            fd = open(a1, O_WRONLY | O_CLOEXEC);
            if (fd < 0) return fail("open");
            if (write(fd, buf, n) != n) return fail("write");
            close(fd);
            clean(buf);
            return ok(buf);
        }
    }
    errno = EINVAL;
    return fail("unknown-op");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: escprobe PLAN OUT\n");
        return 2;
    }
    FILE *plan = fopen(argv[1], "r");
    if (!plan) { perror(argv[1]); return 2; }
    int out = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out < 0) { perror(argv[2]); return 2; }
    char line[1024];
    while (fgets(line, sizeof line, plan)) {
        char *words[16];
        int n = 0;
        for (char *w = strtok(line, " \n"); w && n < 16; w = strtok(NULL, " \n")) words[n++] = w;
        if (n < 2 || words[0][0] == '#') continue;
        int pipefd[2];
        if (pipe(pipefd) != 0) return 2;
        pid_t pid = fork();
        if (pid == 0) {
            close(pipefd[0]);
            run(n - 1, words + 1);
            ssize_t unused = write(pipefd[1], result, strlen(result));
            (void)unused;
            _exit(0);
        }
        close(pipefd[1]);
        char buf[600] = {0};
        ssize_t got = 0, r;
        while (got < (ssize_t)sizeof buf - 1 &&
               (r = read(pipefd[0], buf + got, sizeof buf - 1 - got)) > 0) got += r;
        close(pipefd[0]);
        int st;
        waitpid(pid, &st, 0);
        if (got == 0) snprintf(buf, sizeof buf, "ERR E? crashed (status %d)", st);
        dprintf(out, "%s\t%s\n", words[0], buf);
    }
    return 0;
}
