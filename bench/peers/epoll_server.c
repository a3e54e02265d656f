/*
 * epoll_server: the practical ceiling for sockd's benchmark.
 *
 * One thread, one level-triggered epoll set, non-blocking sockets.  Serves the
 * sockets tutorial's ack (a stream message ends at "\n" or after 255 bytes and is
 * answered with the 18 bytes "I got your message"; a datagram is answered with the
 * 17 bytes "Got your message\n") and echo (RFC 862), over TCP, UDP and Unix
 * stream sockets.  Reading stops while a connection's answers cannot be written.
 *
 *   epoll_server --ack tcp:PORT[:interface=ADDR] --ack udp:PORT --ack unix:PATH
 *                --echo tcp:PORT --echo udp:PORT --echo unix:PATH
 *
 * Prints "SERVICE listening on TRANSPORT ADDR" per listener, like sockd.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum kind { K_STREAM_LISTENER, K_DGRAM, K_CONN };
enum service { ACK, ECHO };

static const char STREAM_ANSWER[] = "I got your message";   /* 18 bytes */
static const char DGRAM_ANSWER[] = "Got your message\n";    /* 17 bytes */
#define MAX_MESSAGE 255

struct endpoint {
    enum kind kind;
    enum service service;
    int fd;
    int is_tcp;
};

struct conn {
    enum kind kind; /* K_CONN; first, like struct endpoint */
    enum service service;
    int fd;
    int pending;      /* ack: bytes of a message not yet ended */
    char *out;        /* answers not yet written */
    size_t outlen, outoff, outcap;
    int blocked;      /* waiting for EPOLLOUT, not reading */
};

static int epfd;
static char buf[65536];
static volatile sig_atomic_t stopping;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void close_conn(struct conn *c) {
    close(c->fd);
    free(c->out);
    free(c);
}

static int queue_out(struct conn *c, const char *data, size_t len) {
    if (c->outlen + len > c->outcap) {
        size_t cap = c->outcap ? c->outcap : 4096;
        while (cap < c->outlen + len) cap *= 2;
        char *p = realloc(c->out, cap);
        if (!p) return -1;
        c->out = p;
        c->outcap = cap;
    }
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
    return 0;
}

/* Write what is queued; 0 when all gone, 1 when blocked, -1 on error. */
static int flush_out(struct conn *c) {
    while (c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 1;
            return -1;
        }
        c->outoff += (size_t)n;
    }
    c->outoff = c->outlen = 0;
    return 0;
}

/* Send data straight away when nothing is queued; queue the rest. */
static int send_now(struct conn *c, const char *data, size_t len) {
    if (c->outlen == 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN) return -1;
            n = 0;
        }
        if ((size_t)n == len) return 0;
        data += n;
        len -= (size_t)n;
    }
    return queue_out(c, data, len) < 0 ? -1 : 1;
}

static void set_blocked(struct conn *c, int blocked) {
    if (c->blocked == blocked) return;
    c->blocked = blocked;
    struct epoll_event ev = {.events = blocked ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_conn(struct conn *c, uint32_t events) {
    if (c->blocked) {
        int r = flush_out(c);
        if (r < 0) { close_conn(c); return; }
        if (r == 0) set_blocked(c, 0);
        return;
    }
    (void)events;
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
        /* EOF: answer a partial ack message the way the tutorial's server would, then close. */
        if (n == 0 && c->service == ACK && c->pending) send_now(c, STREAM_ANSWER, 18);
        close_conn(c);
        return;
    }
    int r;
    if (c->service == ECHO) {
        r = send_now(c, buf, (size_t)n);
    } else {
        /* Count the messages this read ends: each "\n", or each MAX_MESSAGE bytes without one. */
        size_t answers = 0;
        const char *p = buf, *end = buf + n;
        while (p < end) {
            size_t room = (size_t)(MAX_MESSAGE - c->pending), avail = (size_t)(end - p);
            size_t scan = avail < room ? avail : room;
            const char *nl = memchr(p, '\n', scan);
            if (nl) { answers++; c->pending = 0; p = nl + 1; }
            else if (scan == room) { answers++; c->pending = 0; p += room; }
            else { c->pending += (int)scan; p = end; }
        }
        r = 0;
        if (answers == 1) {
            r = send_now(c, STREAM_ANSWER, 18);
        } else if (answers > 1) {
            char *many = malloc(answers * 18);
            if (!many) { close_conn(c); return; }
            for (size_t i = 0; i < answers; i++) memcpy(many + i * 18, STREAM_ANSWER, 18);
            r = send_now(c, many, answers * 18);
            free(many);
        }
    }
    if (r < 0) { close_conn(c); return; }
    if (r > 0) set_blocked(c, 1);
}

static void on_accept(struct endpoint *e) {
    for (int i = 0; i < 64; i++) {
        int fd = accept4(e->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or EMFILE and the like: try again on the next event */
        if (e->is_tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); return; }
        c->kind = K_CONN;
        c->service = e->service;
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) close_conn(c);
    }
}

static void on_datagram(struct endpoint *e) {
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(e->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) return;
        if (e->service == ACK) sendto(e->fd, DGRAM_ANSWER, 17, 0, (struct sockaddr *)&from, fromlen);
        else sendto(e->fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fromlen);
    }
}

static void add_listener(enum service service, const char *desc) {
    char kind[8] = {0}, rest[256] = {0};
    const char *colon = strchr(desc, ':');
    if (!colon || colon - desc >= (long)sizeof kind || strlen(colon + 1) >= sizeof rest) {
        fprintf(stderr, "bad description %s\n", desc);
        exit(64);
    }
    memcpy(kind, desc, (size_t)(colon - desc));
    strcpy(rest, colon + 1);
    const char *name = service == ACK ? "ack" : "echo";
    struct endpoint *e = calloc(1, sizeof *e);
    e->service = service;
    if (!strcmp(kind, "unix")) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        if (strlen(rest) >= sizeof un.sun_path) { fprintf(stderr, "path too long\n"); exit(64); }
        strcpy(un.sun_path, rest);
        unlink(rest);
        e->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (e->fd < 0 || bind(e->fd, (struct sockaddr *)&un, sizeof un) < 0) die(rest);
        if (listen(e->fd, 4096) < 0) die("listen");
        e->kind = K_STREAM_LISTENER;
        printf("%s listening on unix %s\n", name, rest);
    } else {
        int udp = !strcmp(kind, "udp");
        if (!udp && strcmp(kind, "tcp")) { fprintf(stderr, "bad description %s\n", desc); exit(64); }
        const char *iface = "127.0.0.1";
        char *opt = strchr(rest, ':');
        if (opt) {
            *opt++ = 0;
            if (!strncmp(opt, "interface=", 10)) iface = opt + 10;
        }
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(rest))};
        if (inet_pton(AF_INET, iface, &in.sin_addr) != 1) { fprintf(stderr, "bad interface %s\n", iface); exit(64); }
        e->fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(e->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (e->fd < 0 || bind(e->fd, (struct sockaddr *)&in, sizeof in) < 0) die("bind");
        if (!udp && listen(e->fd, 4096) < 0) die("listen");
        socklen_t len = sizeof in;
        getsockname(e->fd, (struct sockaddr *)&in, &len);
        e->kind = udp ? K_DGRAM : K_STREAM_LISTENER;
        e->is_tcp = !udp;
        printf("%s listening on %s %s:%d\n", name, udp ? "udp" : "tcp", iface, ntohs(in.sin_port));
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = e};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, e->fd, &ev) < 0) die("epoll_ctl");
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--ack")) add_listener(ACK, argv[i + 1]);
        else if (!strcmp(argv[i], "--echo")) add_listener(ECHO, argv[i + 1]);
        else { fprintf(stderr, "usage: epoll_server [--ack DESC] [--echo DESC] ...\n"); return 64; }
    }
    fflush(stdout);
    struct epoll_event evs[256];
    while (!stopping) {
        int n = epoll_wait(epfd, evs, 256, 500);
        for (int i = 0; i < n; i++) {
            enum kind *k = evs[i].data.ptr;
            if (*k == K_STREAM_LISTENER) on_accept(evs[i].data.ptr);
            else if (*k == K_DGRAM) on_datagram(evs[i].data.ptr);
            else on_conn(evs[i].data.ptr, evs[i].events);
        }
    }
    return 0;
}
