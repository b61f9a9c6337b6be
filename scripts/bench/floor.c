/* The floor of scripts/bench.sh's supervision figures: the least a supervisor can do.
 *
 *   floor FIFO PROG CONFIG...
 *
 * waits until a line is written to FIFO, then starts `PROG --config CONFIG` for every CONFIG
 * (posix_spawn, each in its own process group, output to /dev/null) and restarts any of them
 * at once when it exits — no state, no logs, no probes. The harness drives it exactly like the
 * real supervisors (the same fork, ready and kill -9 → new pid measurements), so each figure
 * is judged against what fork+exec and the harness itself cost on this machine.
 * Built by bench.sh with `cc -O2` into the run's temporary dir. */
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static pid_t start(const char *prog, const char *config) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    char *argv[] = {(char *)prog, "--config", (char *)config, NULL};
    pid_t pid = -1;
    int err = posix_spawn(&pid, prog, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (err) {
        fprintf(stderr, "floor: starting %s: %s\n", prog, strerror(err));
        return -1;
    }
    return pid;
}

static volatile sig_atomic_t stopping;

static void on_term(int sig) {
    (void)sig;
    stopping = 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s FIFO PROG CONFIG...\n", argv[0]);
        return 2;
    }
    const char *prog = argv[2];
    int n = argc - 3;
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    FILE *go = fopen(argv[1], "r"); /* blocks until the harness opens it for writing */
    char line[64];
    if (!go || !fgets(line, sizeof line, go)) {
        perror(argv[1]);
        return 1;
    }
    fclose(go);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (int i = 0; i < n; i++) pids[i] = start(prog, argv[3 + i]);
    while (!stopping) {
        int status;
        pid_t dead = waitpid(-1, &status, 0);
        if (dead < 0) continue; /* EINTR: a signal, see the loop condition */
        for (int i = 0; i < n; i++)
            if (pids[i] == dead && !stopping) pids[i] = start(prog, argv[3 + i]);
    }
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) kill(-pids[i], SIGTERM);
    while (waitpid(-1, NULL, 0) > 0) {
    }
    return 0;
}
