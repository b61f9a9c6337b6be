/* The stand-in child of scripts/bench.sh's supervision section: `standin --config FILE` reads
 * the first `listen = "HOST:PORT"` line of a node config, listens there and answers every
 * request with `200 ok` (so GET /readyz and /healthz succeed), one connection at a time, until
 * a signal ends it. It costs next to nothing to start, so the figures measure the supervisor
 * (fork, exec, readiness, restart) rather than the node's own start-up; the real node is
 * measured beside it. Built by bench.sh with `cc -O2` into the run's temporary dir. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(const char *config) {
    FILE *f = fopen(config, "r");
    if (!f) {
        perror(config);
        return -1;
    }
    char line[512], host[256];
    int port = -1;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, " listen = \"%255[^:]:%d\"", host, &port) == 2) break;
        port = -1;
    }
    fclose(f);
    if (port < 0) {
        fprintf(stderr, "%s: no listen = \"HOST:PORT\" line\n", config);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        listen(fd, 128)) {
        fprintf(stderr, "listening on %s:%d: ", host, port);
        perror("");
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    const char *config = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
    if (!config) {
        fprintf(stderr, "usage: %s --config FILE\n", argv[0]);
        return 2;
    }
    int fd = listen_on(config);
    if (fd < 0) return 1;
    static const char reply[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
        "Connection: close\r\n\r\nok\n";
    char buf[4096];
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        /* One read is the whole request line and headers of a probe on loopback. */
        if (read(c, buf, sizeof buf) > 0 && write(c, reply, sizeof reply - 1) < 0) {
            /* the client went away: nothing to do */
        }
        close(c);
    }
}
