/* pkgsandbox._native: enter a sandbox without running Python in the child.
 *
 * spawn() starts a program the way pkgsandbox's phases need it: vfork(), then in the child,
 * with nothing but system calls (no allocation, no Python): signal dispositions reset, stdio
 * wired, every other descriptor close-on-exec, new session, private network namespace,
 * copy-on-write overlays (detached mounts the parent made, moved into a private mount
 * namespace), chroot, working directory, umask, user switch (verified), capability sets,
 * no_new_privs, the seccomp filter, landlock_restrict_self; then execve. A failure at any step
 * is written to a close-on-exec pipe as two ints (step, errno) and the child exits 255.
 *
 * apply() runs the same layer sequence in the calling process (a forked worker), minus
 * stdio, descriptors and exec. detached_overlay() builds an overlay mount with the new mount
 * API and returns its descriptor, not attached anywhere: the parent adds Landlock rules on
 * its inodes, the child attaches it.
 *
 * This module decides nothing. pkgsandbox/enforce.py and runner.py compute every mask and
 * program; hardening.py builds the seccomp program.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#define FSOPEN_CLOEXEC_ 0x1
#define FSCONFIG_SET_STRING_ 1
#define FSCONFIG_CMD_CREATE_ 6
#define FSMOUNT_CLOEXEC_ 0x1
#define MOVE_MOUNT_F_EMPTY_PATH_ 0x4

/* The steps, in order; their names are exported as STEPS (index = step number). */
enum {
    S_SIGNALS, S_STDIO, S_FDS, S_SETSID, S_NETNS, S_MOUNTNS, S_MOUNT, S_CHROOT, S_CWD,
    S_GROUPS, S_GID, S_UID, S_VERIFY, S_REGAIN, S_BOUNDING, S_CAPS, S_NNP, S_SECCOMP,
    S_LANDLOCK, S_EXEC, S_COUNT
};
static const char *const step_names[S_COUNT] = {
    "reset signals", "connect stdio", "close inherited descriptors", "new session",
    "create a private network namespace", "create a private mount namespace",
    "attach a copy-on-write overlay", "chroot", "chdir", "set groups", "set gid", "set uid",
    "identity not as requested after the switch", "root could be regained after the switch",
    "drop capabilities from the bounding set", "limit capabilities", "set no_new_privs",
    "install the seccomp filter", "enter the Landlock domain", "exec",
};

struct spec {
    /* exec (spawn only) */
    char *const *executables;     /* NULL-terminated candidate paths */
    char *const *argv;
    char *const *envp;
    int stdio[3];                 /* -1: inherit */
    const int *keep;              /* sorted, inherited by the program */
    Py_ssize_t nkeep;
    int errpipe;
    /* layers */
    int setsid;
    int netns;
    int netns_fd;                 /* >= 0: join this fresh namespace instead of creating one */
    const int *mount_fds;
    char *const *mount_targets;
    Py_ssize_t nmounts;
    const char *chroot;
    const char *cwd;
    int umask;                    /* -1: unchanged */
    int switch_user;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    Py_ssize_t ngroups;
    int limit_caps;
    uint64_t caps_keep;
    int last_cap;
    const struct sock_filter *seccomp;
    unsigned short seccomp_len;
    int ruleset_fd;               /* -1: no Landlock domain */
    unsigned int restrict_flags;
};

/* The layers, in the order DESIGN 2 gives them. Returns 0, or -1 with errno set and *step. */
static int apply_layers(const struct spec *s, int *step)
{
    Py_ssize_t i;
    if (s->setsid && setsid() < 0) { *step = S_SETSID; return -1; }
    if (s->netns_fd >= 0) {
        if (setns(s->netns_fd, CLONE_NEWNET) < 0) { *step = S_NETNS; return -1; }
    } else if (s->netns && unshare(CLONE_NEWNET) < 0) {
        *step = S_NETNS;
        return -1;
    }
    if (s->nmounts > 0) {
        *step = S_MOUNTNS;
        if (unshare(CLONE_NEWNS) < 0) return -1;
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return -1;
        *step = S_MOUNT;
        for (i = 0; i < s->nmounts; i++)
            if (syscall(SYS_move_mount, s->mount_fds[i], "", AT_FDCWD, s->mount_targets[i],
                        MOVE_MOUNT_F_EMPTY_PATH_) < 0)
                return -1;
    }
    if (s->chroot) {
        *step = S_CHROOT;
        if (chroot(s->chroot) < 0 || chdir("/") < 0) return -1;
    }
    if (s->cwd && chdir(s->cwd) < 0) { *step = S_CWD; return -1; }
    if (s->umask >= 0) umask((mode_t)s->umask);
    if (s->switch_user) {
        uid_t r, e, sv;
        gid_t gr, ge, gs;
        /* Raw system calls, never glibc's wrappers: in a vfork child glibc would "broadcast"
         * the change to the threads of the process it believes it is (the parent's), which
         * is why CPython never vforks for a user switch. The kernel changes this task only:
         * here, the whole child. */
        if (syscall(SYS_setgroups, (size_t)s->ngroups, s->groups) < 0) {
            *step = S_GROUPS;
            return -1;
        }
        if (syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0) { *step = S_GID; return -1; }
        if (syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0) { *step = S_UID; return -1; }
        *step = S_VERIFY;
        if (syscall(SYS_getresuid, &r, &e, &sv) < 0 || syscall(SYS_getresgid, &gr, &ge, &gs) < 0)
            return -1;
        if (r != s->uid || e != s->uid || sv != s->uid || gr != s->gid || ge != s->gid ||
            gs != s->gid) { errno = EPERM; return -1; }
        {
            gid_t now[256];
            int n = (int)syscall(SYS_getgroups, 256, now), j, k;
            if (n < 0) return -1;
            for (j = 0; j < n; j++) {          /* every group held was asked for ... */
                for (k = 0; k < s->ngroups && s->groups[k] != now[j]; k++) ;
                if (k == s->ngroups) { errno = EPERM; return -1; }
            }
            for (k = 0; k < s->ngroups; k++) { /* ... and every group asked for is held */
                for (j = 0; j < n && now[j] != s->groups[k]; j++) ;
                if (j == n) { errno = EPERM; return -1; }
            }
        }
        if (s->uid != 0 && syscall(SYS_setuid, 0) == 0) {
            *step = S_REGAIN;
            errno = EPERM;
            return -1;
        }
    }
    if (s->limit_caps && geteuid() == 0) {
        int cap;
        struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        *step = S_BOUNDING;
        for (cap = 0; cap <= s->last_cap && cap < 64; cap++) {
            if (s->caps_keep & (UINT64_C(1) << cap)) continue;
            if (prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 &&
                prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
                return -1;
        }
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        *step = S_CAPS;
        if (syscall(SYS_capget, &header, data) < 0) return -1;
        for (i = 0; i < 2; i++) {
            uint32_t m = (uint32_t)(s->caps_keep >> (32 * i));
            data[i].effective &= m;
            data[i].permitted &= m;
            data[i].inheritable &= m;
        }
        if (syscall(SYS_capset, &header, data) < 0) return -1;
    }
    /* no_new_privs always, and always before the filter and the domain (DESIGN 2). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) { *step = S_NNP; return -1; }
    if (s->seccomp_len > 0) {
        struct sock_fprog prog = {s->seccomp_len, (struct sock_filter *)s->seccomp};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
            *step = S_SECCOMP;
            return -1;
        }
    }
    if (s->ruleset_fd >= 0 &&
        syscall(SYS_landlock_restrict_self, s->ruleset_fd, s->restrict_flags) < 0) {
        *step = S_LANDLOCK;
        return -1;
    }
    return 0;
}

static void report_and_exit(int fd, int step, int err)
{
    int msg[2] = {step, err};
    ssize_t n;
    do {
        n = write(fd, msg, sizeof msg);
    } while (n < 0 && errno == EINTR);
    _exit(255);
}

/* The vfork child: shares the parent's memory, so it writes nothing but its own stack. */
static void child(const struct spec *s, const sigset_t *old_mask)
{
    int step = S_SIGNALS, sig, i, fd, errpipe = s->errpipe, src[3], saved = 0;
    struct sigaction sa;
    Py_ssize_t k;

    /* Python's handlers must not run here: every handled signal back to its default, and
     * SIGPIPE/SIGXFSZ too (Python ignores them; subprocess restores them the same way). */
    for (sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        if (sigaction(sig, NULL, &sa) != 0) continue;
        if (sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigemptyset(&sa.sa_mask);
            sigaction(sig, &sa, NULL);
        }
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGXFSZ, &sa, NULL);
    if (sigprocmask(SIG_SETMASK, old_mask, NULL) < 0) goto fail;

    step = S_STDIO;
    if (errpipe < 3) {
        errpipe = fcntl(errpipe, F_DUPFD_CLOEXEC, 3);
        if (errpipe < 0) _exit(255);
    }
    for (i = 0; i < 3; i++) {
        src[i] = s->stdio[i];
        if (src[i] >= 0 && src[i] < 3 && src[i] != i) {
            src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 3);
            if (src[i] < 0) goto fail;
        }
    }
    for (i = 0; i < 3; i++) {
        if (src[i] < 0) continue;
        if (src[i] == i) {
            if (fcntl(i, F_SETFD, 0) < 0) goto fail;
        } else if (dup2(src[i], i) < 0) {
            goto fail;
        }
    }

    /* Every descriptor from 3 up is closed at exec, except those passed on purpose. */
    step = S_FDS;
    fd = 3;
    for (k = 0; k < s->nkeep; k++) {
        int keep = s->keep[k];
        if (keep < fd) continue;
        if (keep > fd && syscall(SYS_close_range, fd, keep - 1, CLOSE_RANGE_CLOEXEC) < 0)
            goto fail;
        if (fcntl(keep, F_SETFD, 0) < 0) goto fail;
        fd = keep + 1;
    }
    if (syscall(SYS_close_range, fd, ~0U, CLOSE_RANGE_CLOEXEC) < 0) goto fail;

    if (apply_layers(s, &step) < 0) goto fail;

    step = S_EXEC;
    for (i = 0; s->executables[i]; i++) {
        execve(s->executables[i], s->argv, s->envp);
        if (errno != ENOENT && errno != ENOTDIR && saved == 0) saved = errno;
    }
    if (saved) errno = saved;
fail:
    report_and_exit(errpipe, step, errno);
}

/* --- conversions (parent side, before vfork) ----------------------------------------- */

static void free_strings(char **v)
{
    PyMem_Free(v);
}

/* A NULL-terminated char* array pointing into the bytes objects of `seq` (kept alive by the
 * caller's reference to the returned `keep` list). */
static char **strings(PyObject *seq, const char *what, PyObject **keep)
{
    Py_ssize_t i, n;
    char **out;
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!out) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s: items must be bytes", what);
            goto bad;
        }
        if ((Py_ssize_t)strlen(PyBytes_AS_STRING(item)) != PyBytes_GET_SIZE(item)) {
            PyErr_Format(PyExc_ValueError, "%s: embedded NUL byte", what);
            goto bad;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    if (PyList_Append(*keep, fast) < 0) goto bad;
    Py_DECREF(fast);
    return out;
bad:
    Py_DECREF(fast);
    PyMem_Free(out);
    return NULL;
}

static int *ints(PyObject *seq, const char *what, Py_ssize_t *n_out)
{
    Py_ssize_t i, n;
    int *out;
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    out = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (!out) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) { Py_DECREF(fast); PyMem_Free(out); return NULL; }
        out[i] = (int)v;
    }
    Py_DECREF(fast);
    *n_out = n;
    return out;
}

struct owned {
    PyObject *keep;
    char **executables, **argv, **envp, **targets;
    int *keep_fds, *mount_fds;
    gid_t *groups;
};

static void release(struct owned *o)
{
    free_strings(o->executables);
    free_strings(o->argv);
    free_strings(o->envp);
    free_strings(o->targets);
    PyMem_Free(o->keep_fds);
    PyMem_Free(o->mount_fds);
    PyMem_Free(o->groups);
    Py_XDECREF(o->keep);
}

/* The layer arguments shared by spawn() and apply(), from keyword arguments. */
static int layers_from(struct spec *s, struct owned *o, PyObject *mounts, PyObject *chroot,
                       PyObject *cwd, PyObject *user, PyObject *seccomp)
{
    Py_ssize_t i, n;
    if (mounts != Py_None) {
        PyObject *fast = PySequence_Fast(mounts, "mounts");
        if (!fast) return -1;
        n = PySequence_Fast_GET_SIZE(fast);
        o->mount_fds = PyMem_Calloc((size_t)n + 1, sizeof(int));
        o->targets = PyMem_Calloc((size_t)n + 1, sizeof(char *));
        if (!o->mount_fds || !o->targets) { Py_DECREF(fast); PyErr_NoMemory(); return -1; }
        for (i = 0; i < n; i++) {
            int fd;
            PyObject *target;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iS", &fd, &target)) {
                Py_DECREF(fast);
                return -1;
            }
            o->mount_fds[i] = fd;
            o->targets[i] = PyBytes_AS_STRING(target);
        }
        if (PyList_Append(o->keep, fast) < 0) { Py_DECREF(fast); return -1; }
        Py_DECREF(fast);
        s->mount_fds = o->mount_fds;
        s->mount_targets = o->targets;
        s->nmounts = n;
    }
    if (chroot != Py_None) {
        if (!PyBytes_Check(chroot)) { PyErr_SetString(PyExc_TypeError, "chroot: bytes"); return -1; }
        s->chroot = PyBytes_AS_STRING(chroot);
    }
    if (cwd != Py_None) {
        if (!PyBytes_Check(cwd)) { PyErr_SetString(PyExc_TypeError, "cwd: bytes"); return -1; }
        s->cwd = PyBytes_AS_STRING(cwd);
    }
    if (user != Py_None) {
        unsigned int uid, gid;
        PyObject *groups;
        int *g;
        if (!PyArg_ParseTuple(user, "IIO", &uid, &gid, &groups)) return -1;
        g = ints(groups, "groups", &n);
        if (!g) return -1;
        o->groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
        if (!o->groups) { PyMem_Free(g); PyErr_NoMemory(); return -1; }
        for (i = 0; i < n; i++) o->groups[i] = (gid_t)g[i];
        PyMem_Free(g);
        s->switch_user = 1;
        s->uid = uid;
        s->gid = gid;
        s->groups = o->groups;
        s->ngroups = n;
    }
    if (seccomp != Py_None) {
        if (!PyBytes_Check(seccomp) || PyBytes_GET_SIZE(seccomp) % 8 ||
            PyBytes_GET_SIZE(seccomp) / 8 > 4096) {
            PyErr_SetString(PyExc_ValueError, "seccomp: a BPF program (bytes, 8 per insn)");
            return -1;
        }
        if (PyList_Append(o->keep, seccomp) < 0) return -1;
        s->seccomp = (const struct sock_filter *)PyBytes_AS_STRING(seccomp);
        s->seccomp_len = (unsigned short)(PyBytes_GET_SIZE(seccomp) / 8);
    }
    return 0;
}

PyDoc_STRVAR(spawn_doc,
"spawn(executables, argv, envp, *, stdin=-1, stdout=-1, stderr=-1, keep_fds=(), errpipe,\n"
"      setsid=False, netns=False, netns_fd=-1, mounts=None, chroot=None, cwd=None, umask=-1, user=None,\n"
"      limit_caps=False, caps_keep=0, last_cap=40, seccomp=None, ruleset_fd=-1,\n"
"      restrict_flags=0) -> pid\n\n"
"vfork, apply the layers in the child with system calls only, execve the first of\n"
"`executables` that exists. On failure the child writes (step, errno) as two native ints\n"
"to `errpipe` (which must be close-on-exec) and exits 255.");

static PyObject *py_spawn(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"executables", "argv", "envp", "stdin", "stdout", "stderr",
                            "keep_fds", "errpipe", "setsid", "netns", "netns_fd", "mounts",
                            "chroot",
                            "cwd", "umask", "user", "limit_caps", "caps_keep", "last_cap",
                            "seccomp", "ruleset_fd", "restrict_flags", NULL};
    PyObject *executables, *argv, *envp, *keep_fds = Py_None, *mounts = Py_None;
    PyObject *chroot = Py_None, *cwd = Py_None, *user = Py_None, *seccomp = Py_None;
    unsigned long long caps_keep = 0;
    struct spec s;
    struct owned o;
    sigset_t all, old;
    pid_t pid;
    int saved_errno;
    Py_ssize_t i;

    memset(&s, 0, sizeof s);
    memset(&o, 0, sizeof o);
    s.stdio[0] = s.stdio[1] = s.stdio[2] = -1;
    s.umask = -1;
    s.ruleset_fd = -1;
    s.last_cap = 40;
    s.errpipe = -1;
    s.netns_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|iiiO$ippiOOOiOpKiOiI:spawn", names,
            &executables, &argv, &envp, &s.stdio[0], &s.stdio[1], &s.stdio[2], &keep_fds,
            &s.errpipe, &s.setsid, &s.netns, &s.netns_fd, &mounts, &chroot, &cwd, &s.umask,
            &user,
            &s.limit_caps, &caps_keep, &s.last_cap, &seccomp, &s.ruleset_fd,
            &s.restrict_flags))
        return NULL;
    if (s.errpipe < 0) {
        PyErr_SetString(PyExc_ValueError, "spawn: errpipe is required");
        return NULL;
    }
    s.caps_keep = caps_keep;
    o.keep = PyList_New(0);
    if (!o.keep) return NULL;
    if (!(o.executables = strings(executables, "executables", &o.keep))) goto error;
    if (!o.executables[0]) { PyErr_SetString(PyExc_ValueError, "no executable"); goto error; }
    if (!(o.argv = strings(argv, "argv", &o.keep))) goto error;
    if (!o.argv[0]) { PyErr_SetString(PyExc_ValueError, "empty argv"); goto error; }
    if (!(o.envp = strings(envp, "envp", &o.keep))) goto error;
    if (keep_fds != Py_None) {
        if (!(o.keep_fds = ints(keep_fds, "keep_fds", &s.nkeep))) goto error;
        for (i = 1; i < s.nkeep; i++)
            if (o.keep_fds[i] <= o.keep_fds[i - 1]) {
                PyErr_SetString(PyExc_ValueError, "keep_fds: must be sorted, no repeats");
                goto error;
            }
        s.keep = o.keep_fds;
    }
    if (layers_from(&s, &o, mounts, chroot, cwd, user, seccomp) < 0) goto error;
    s.executables = o.executables;
    s.argv = o.argv;
    s.envp = o.envp;

    sigfillset(&all);
    if ((errno = pthread_sigmask(SIG_BLOCK, &all, &old)) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto error;
    }
    pid = vfork();
    if (pid == 0)
        child(&s, &old);              /* never returns */
    saved_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    release(&o);
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong((long)pid);
error:
    release(&o);
    return NULL;
}

PyDoc_STRVAR(apply_doc,
"apply(*, setsid=False, netns=False, chroot=None, cwd=None, user=None, limit_caps=False,\n"
"      caps_keep=0, last_cap=40, seccomp=None, ruleset_fd=-1, restrict_flags=0)\n\n"
"The layers of spawn(), in this process (a forked worker), without exec. Raises OSError\n"
"whose strerror names the step that failed. Not undoable.");

static PyObject *py_apply(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"setsid", "netns", "chroot", "cwd", "user", "limit_caps",
                            "caps_keep", "last_cap", "seccomp", "ruleset_fd",
                            "restrict_flags", NULL};
    PyObject *chroot = Py_None, *cwd = Py_None, *user = Py_None, *seccomp = Py_None;
    unsigned long long caps_keep = 0;
    struct spec s;
    struct owned o;
    int step = 0, rc;

    memset(&s, 0, sizeof s);
    memset(&o, 0, sizeof o);
    s.umask = -1;
    s.ruleset_fd = -1;
    s.netns_fd = -1;
    s.last_cap = 40;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$ppOOOpKiOiI:apply", names, &s.setsid,
            &s.netns, &chroot, &cwd, &user, &s.limit_caps, &caps_keep, &s.last_cap, &seccomp,
            &s.ruleset_fd, &s.restrict_flags))
        return NULL;
    s.caps_keep = caps_keep;
    o.keep = PyList_New(0);
    if (!o.keep) return NULL;
    if (layers_from(&s, &o, Py_None, chroot, cwd, user, seccomp) < 0) {
        release(&o);
        return NULL;
    }
    rc = apply_layers(&s, &step);
    if (rc < 0) {
        int err = errno;
        release(&o);
        PyErr_Format(PyExc_OSError, "%s: %s", step_names[step], strerror(err));
        return NULL;
    }
    release(&o);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(overlay_doc,
"detached_overlay(lower, upper, work) -> fd\n\n"
"An overlay mount (fsopen/fsconfig/fsmount) attached nowhere; the descriptor is\n"
"close-on-exec. Needs CAP_SYS_ADMIN and Linux 5.2.");

static PyObject *py_detached_overlay(PyObject *self, PyObject *args)
{
    const char *lower, *upper, *work;
    int fs, mnt;
    if (!PyArg_ParseTuple(args, "yyy:detached_overlay", &lower, &upper, &work)) return NULL;
    fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC_);
    if (fs < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING_, "lowerdir", lower, 0) < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING_, "upperdir", upper, 0) < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING_, "workdir", work, 0) < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE_, NULL, NULL, 0) < 0) {
        int err = errno;
        close(fs);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC_, 0);
    if (mnt < 0) {
        int err = errno;
        close(fs);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    close(fs);
    return PyLong_FromLong(mnt);
}

PyDoc_STRVAR(netns_doc,
"new_netns() -> fd\n\n"
"Move the calling thread (never the main thread) into a new network namespace and return a\n"
"close-on-exec descriptor of it, for spawn(netns_fd=...). The namespace is made ahead of\n"
"time, by a thread of its own, so the child only joins it.");

static PyObject *py_new_netns(PyObject *self, PyObject *unused)
{
    int fd;
    if (syscall(SYS_gettid) == getpid()) {
        PyErr_SetString(PyExc_RuntimeError, "new_netns: not on the main thread");
        return NULL;
    }
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS              /* ~0.4 ms of kernel work: let the orchestrator run */
    rc = unshare(CLONE_NEWNET);
    fd = rc < 0 ? -1 : open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0) err = errno;
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(fd);
}

PyDoc_STRVAR(add_path_rules_doc,
"add_path_rules(ruleset_fd, grants) -> list[int]\n\n"
"For each grant (dirfd, path, resolve, dir_rights, file_rights): open path O_PATH (with\n"
"openat2(dirfd, path, resolve) when dirfd >= 0, else open(path)), add a path_beneath rule\n"
"with dir_rights or file_rights (as the path is a directory or not; none: no rule), close.\n"
"One result per grant: 1 rule added, 0 no rights for this kind of file, -errno the open\n"
"failed, -1000-errno landlock_add_rule failed. The Python side decides what each means.");

struct path_beneath { uint64_t allowed; int32_t parent_fd; } __attribute__((packed));
struct open_how_ { uint64_t flags, mode, resolve; };

static PyObject *py_add_path_rules(PyObject *self, PyObject *args)
{
    int ruleset_fd;
    PyObject *grants, *fast, *out;
    Py_ssize_t i, n;
    if (!PyArg_ParseTuple(args, "iO:add_path_rules", &ruleset_fd, &grants)) return NULL;
    fast = PySequence_Fast(grants, "grants");
    if (!fast) return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    out = PyList_New(n);
    if (!out) { Py_DECREF(fast); return NULL; }
    for (i = 0; i < n; i++) {
        int dirfd, fd, result;
        const char *path;
        unsigned long long resolve, dir_rights, file_rights;
        struct stat st;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iyKKK", &dirfd, &path,
                              &resolve, &dir_rights, &file_rights)) {
            Py_DECREF(fast);
            Py_DECREF(out);
            return NULL;
        }
        if (dirfd >= 0) {
            struct open_how_ how = {O_PATH | O_CLOEXEC, 0, resolve};
            fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
        } else {
            fd = open(path, O_PATH | O_CLOEXEC);
        }
        if (fd < 0) {
            result = -errno;
        } else if (fstat(fd, &st) < 0) {
            result = -errno;
            close(fd);
        } else {
            uint64_t allowed = S_ISDIR(st.st_mode) ? dir_rights : file_rights;
            result = 0;
            if (allowed) {
                struct path_beneath attr = {allowed, fd};
                result = syscall(SYS_landlock_add_rule, ruleset_fd, 1, &attr, 0) < 0
                    ? -1000 - errno : 1;
            }
            close(fd);
        }
        {
            PyObject *value = PyLong_FromLong(result);
            if (!value) {
                Py_DECREF(fast);
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, i, value);
        }
    }
    Py_DECREF(fast);
    return out;
}

static PyMethodDef methods[] = {
    {"add_path_rules", py_add_path_rules, METH_VARARGS, add_path_rules_doc},
    {"new_netns", py_new_netns, METH_NOARGS, netns_doc},
    {"spawn", (PyCFunction)(void (*)(void))py_spawn, METH_VARARGS | METH_KEYWORDS, spawn_doc},
    {"apply", (PyCFunction)(void (*)(void))py_apply, METH_VARARGS | METH_KEYWORDS, apply_doc},
    {"detached_overlay", py_detached_overlay, METH_VARARGS, overlay_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pkgsandbox._native",
    "Enter a sandbox with system calls only (see the C source's header).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module), *steps;
    int i;
    if (!m) return NULL;
    steps = PyTuple_New(S_COUNT);
    if (!steps) { Py_DECREF(m); return NULL; }
    for (i = 0; i < S_COUNT; i++)
        PyTuple_SET_ITEM(steps, i, PyUnicode_FromString(step_names[i]));
    if (PyModule_AddObject(m, "STEPS", steps) < 0) { Py_DECREF(steps); Py_DECREF(m); return NULL; }
    return m;
}
