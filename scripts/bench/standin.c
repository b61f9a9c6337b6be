/* The stand-in child of scripts/bench.sh's supervision section: `standin --config FILE` reads
 * the first `listen = "HOST:PORT"` line of a node config, listens there and answers every
 * request with `200 ok` (so GET /readyz and /healthz succeed) until a signal ends it.
 *
 * It serves the way a real dwbase-node (hyper) does, so that a supervisor's probes cost what
 * they cost against the node: many connections at once (one epoll loop, non-blocking
 * sockets), HTTP/1.1 keep-alive (the connection stays open across requests; `Content-Length`
 * on every reply; pipelined requests answered in order), `Connection: close` honoured, and an
 * HTTP/1.0 request closed after its reply unless it asks for keep-alive. A request body of
 * `Content-Length` bytes is skipped; a chunked body (no probe sends one) or a header block
 * over 8 KiB is answered and the connection closed. It costs next to nothing to start, so the
 * figures measure the supervisor (fork, exec, readiness, restart) rather than the node's own
 * start-up; the real node is measured beside it. Built by bench.sh with `cc -O2` into the
 * run's temporary dir. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem, accept4 */
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_CAP 8192  /* one request's line and headers, at most */
#define OUT_CAP 4096 /* replies not yet taken by the peer */

struct conn {
    int fd;
    int closing;     /* close once `out` is written */
    size_t in_len;   /* bytes in `in` */
    size_t skip;     /* body bytes of the current request still to drop */
    size_t out_len;  /* bytes in `out` not written yet */
    size_t out_off;  /* of which the first `out_off` are written */
    char in[IN_CAP];
    char out[OUT_CAP];
};

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
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        listen(fd, 1024)) {
        fprintf(stderr, "listening on %s:%d: ", host, port);
        perror("");
        return -1;
    }
    return fd;
}

/* The value of header `name` (case-insensitive) in the header block [h, end), or NULL; its
 * length in *len (trailing blanks cut). */
static const char *header(const char *h, const char *end, const char *name, size_t *len) {
    size_t n = strlen(name);
    while (h < end) {
        const char *eol = memchr(h, '\n', (size_t)(end - h));
        if (!eol) eol = end;
        if ((size_t)(eol - h) > n && h[n] == ':' && !strncasecmp(h, name, n)) {
            const char *v = h + n + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            const char *e = eol;
            while (e > v && isspace((unsigned char)e[-1])) e--;
            *len = (size_t)(e - v);
            return v;
        }
        h = eol + 1;
    }
    return NULL;
}

/* Whether the comma-separated header value [v, v+len) holds `token` (case-insensitive). */
static int has_token(const char *v, size_t len, const char *token) {
    size_t n = strlen(token);
    const char *end = v + len;
    while (v < end) {
        while (v < end && (*v == ' ' || *v == ',')) v++;
        const char *e = v;
        while (e < end && *e != ',') e++;
        const char *t = e;
        while (t > v && t[-1] == ' ') t--;
        if ((size_t)(t - v) == n && !strncasecmp(v, token, n)) return 1;
        v = e;
    }
    return 0;
}

static void reply(struct conn *c, int status, int head_only) {
    static const char body[] = "ok\n";
    const char *reason = status == 200 ? "OK" : "Request Header Fields Too Large";
    int n = snprintf(c->out + c->out_len, OUT_CAP - c->out_len,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s",
                     status, reason, sizeof body - 1, c->closing ? "Connection: close\r\n" : "",
                     head_only ? "" : body);
    if (n > 0 && (size_t)n < OUT_CAP - c->out_len) c->out_len += (size_t)n;
}

/* Answers the whole requests buffered in `c->in`, while there is room for their replies. */
static void serve(struct conn *c) {
    for (;;) {
        if (c->skip) {
            size_t k = c->skip < c->in_len ? c->skip : c->in_len;
            memmove(c->in, c->in + k, c->in_len - k);
            c->in_len -= k;
            c->skip -= k;
            if (c->skip) return;
        }
        if (c->closing || OUT_CAP - c->out_len < 256) return;
        char *h = memmem(c->in, c->in_len, "\r\n\r\n", 4);
        if (!h) {
            if (c->in_len == IN_CAP) {
                c->closing = 1;
                reply(c, 431, 0);
            }
            return;
        }
        size_t used = (size_t)(h + 4 - c->in);
        const char *eol = memchr(c->in, '\n', used);
        const char *hdrs = eol ? eol + 1 : h;
        int http10 = eol && eol - c->in >= 9 && !memcmp(eol - 9, "HTTP/1.0", 8);
        int head_only = c->in_len >= 5 && !memcmp(c->in, "HEAD ", 5);
        size_t len;
        const char *conn = header(hdrs, h + 2, "Connection", &len);
        if (conn ? has_token(conn, len, "close") || (http10 && !has_token(conn, len, "keep-alive"))
                 : http10)
            c->closing = 1;
        if (header(hdrs, h + 2, "Transfer-Encoding", &len)) c->closing = 1;
        const char *cl = header(hdrs, h + 2, "Content-Length", &len);
        if (cl) c->skip = strtoull(cl, NULL, 10);
        reply(c, 200, head_only);
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

/* Writes what it can of `c->out`: 0 all written, 1 the rest waits for EPOLLOUT, -1 error. */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno == EAGAIN ? 1 : -1;
        c->out_off += (size_t)w;
    }
    c->out_len = c->out_off = 0;
    return 0;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Reads, answers and writes for one ready connection; closes it when done. */
static void on_ready(int ep, struct conn *c, unsigned events) {
    int eof = (events & (EPOLLERR | EPOLLHUP)) != 0;
    while (!eof && !c->closing && c->in_len < IN_CAP) {
        ssize_t r = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
        if (r > 0) {
            c->in_len += (size_t)r;
            serve(c);
            if (c->out_len && flush_out(c) != 0) break; /* the peer is not reading: wait */
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            eof = 1;
        } else if (errno == EAGAIN) {
            break;
        }
    }
    int pending;
    for (;;) {
        pending = flush_out(c);
        if (pending) break;
        serve(c); /* requests held back while the replies had no room */
        if (!c->out_len) break;
    }
    if (pending < 0 || (!pending && (c->closing || eof))) {
        drop(ep, c);
        return;
    }
    /* While the peer does not take its replies, read no more of its requests. */
    struct epoll_event ev = {.events = pending ? EPOLLOUT : EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

int main(int argc, char **argv) {
    const char *config = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
    if (!config) {
        fprintf(stderr, "usage: %s --config FILE\n", argv[0]);
        return 2;
    }
    int lfd = listen_on(config);
    if (lfd < 0) return 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev)) {
        perror("epoll");
        return 1;
    }
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c) {
                on_ready(ep, c, evs[i].events);
                continue;
            }
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) break; /* EAGAIN: all taken; EMFILE & co: try again later */
                c = malloc(sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                c->closing = 0;
                c->in_len = c->skip = c->out_len = c->out_off = 0;
                struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) drop(ep, c);
            }
        }
    }
}
