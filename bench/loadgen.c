/*
 * loadgen: a closed-loop request/response load generator for sockd's benchmark.
 *
 * One thread, one epoll set, N connections (or UDP sockets), each with exactly
 * one request in flight: send the request, wait for the complete answer, record
 * the round-trip latency, send the next one.  With --new-conn every request gets
 * a fresh connection (connect, send, read the answer, close).  Latencies go into
 * a 1 us histogram; the result is one JSON line on stdout.
 *
 *   loadgen --transport tcp|unix|udp --addr HOST:PORT|PATH --pattern ack|echo
 *           [--size BYTES] [--new-conn] [--conns N] [--duration S] [--warmup S]
 *           [--timeout-ms MS]
 *   loadgen --idle [--hold S] ...   open N connections (--duration bounds this), do one
 *                        round trip on each, print a JSON line, hold them until stdin
 *                        reaches EOF (or S seconds), close.
 *
 * Answers: ack over a stream is the 18 bytes "I got your message" per "hello\n";
 * ack over UDP is the 17 bytes "Got your message\n"; echo returns the request.
 * A wrong answer, an early close, a failed connect or a timeout is an error; the
 * connection (or UDP socket) is then replaced after a short back-off.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum transport { T_TCP, T_UNIX, T_UDP };
enum state { S_FREE, S_CONNECTING, S_SENDING, S_RECEIVING, S_IDLE, S_BACKOFF };

struct conn {
    int fd;
    enum state state;
    size_t sent;      /* bytes of the request written */
    size_t got;       /* bytes of the answer read */
    uint64_t t0;      /* request start (ns); for --new-conn, the connect() */
    uint64_t wake;    /* back-off end (ns) */
    uint64_t seq;
    char *req;        /* echo: this connection's request, tagged with its sequence number */
};

#define FINE_US 100000u            /* 1 us buckets below 100 ms */
#define COARSE 10000u              /* then 1 ms buckets up to ~10 s */
static uint32_t hist[FINE_US + COARSE];
static uint64_t hist_n, hist_sum_us, hist_max_us;

static enum transport transport = T_TCP;
static const char *addr_arg = "127.0.0.1:51717";
static int echo_pattern = 0, new_conn = 0, idle_mode = 0;
static size_t req_size = 6, ans_size = 18;
static int nconns = 32;
static double duration = 3.0, warmup = 0.5, hold = 120.0;
static int timeout_ms = 1000;
static char *request, *expected, *rbuf;
static struct sockaddr_storage server;
static socklen_t server_len;
static int epfd;
static struct conn *conns;
static uint64_t measure_start, measure_end;
static uint64_t n_errors, n_timeouts, n_connect_errors, n_bad_answers, n_closed, n_connects;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    printf("{\"ok\": false, \"error\": \"%s: %s\"}\n", what, strerror(errno));
    exit(2);
}

static void record(uint64_t ns) {
    uint64_t us = ns / 1000;
    size_t b = us < FINE_US ? us : FINE_US + ((us - FINE_US) / 1000 < COARSE - 1 ? (us - FINE_US) / 1000 : COARSE - 1);
    hist[b]++;
    hist_n++;
    hist_sum_us += us;
    if (us > hist_max_us) hist_max_us = us;
}

static double percentile(double q) {
    if (!hist_n) return 0;
    uint64_t want = (uint64_t)(q * (double)hist_n);
    if (want >= hist_n) want = hist_n - 1;
    uint64_t seen = 0;
    for (size_t b = 0; b < FINE_US + COARSE; b++) {
        seen += hist[b];
        if (seen > want) return b < FINE_US ? (double)b : (double)FINE_US + (double)(b - FINE_US) * 1000.0;
    }
    return (double)hist_max_us;
}

static void parse_addr(void) {
    memset(&server, 0, sizeof server);
    if (transport == T_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&server;
        un->sun_family = AF_UNIX;
        if (strlen(addr_arg) >= sizeof un->sun_path) { errno = ENAMETOOLONG; die("unix path"); }
        strcpy(un->sun_path, addr_arg);
        server_len = sizeof *un;
        return;
    }
    char host[128];
    const char *colon = strrchr(addr_arg, ':');
    if (!colon || (size_t)(colon - addr_arg) >= sizeof host) { errno = EINVAL; die("address"); }
    memcpy(host, addr_arg, (size_t)(colon - addr_arg));
    host[colon - addr_arg] = 0;
    char *h = host;
    if (h[0] == '[') { h++; h[strlen(h) - 1] = 0; }
    int port = atoi(colon + 1);
    struct sockaddr_in *in4 = (struct sockaddr_in *)&server;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&server;
    if (inet_pton(AF_INET, h, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        server_len = sizeof *in4;
    } else if (inet_pton(AF_INET6, h, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        server_len = sizeof *in6;
    } else {
        errno = EINVAL;
        die("address");
    }
}

static void arm(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void drop(struct conn *c, uint64_t now) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = S_BACKOFF;
    c->wake = now + 2000000ull; /* 2 ms: a dead server must not turn the loop into a busy spin */
}

static void fail(struct conn *c, uint64_t now, uint64_t *counter) {
    n_errors++;
    if (counter) (*counter)++;
    drop(c, now);
}

static void start_request(struct conn *c, uint64_t now);

static void open_conn(struct conn *c, uint64_t now) {
    int family = ((struct sockaddr *)&server)->sa_family;
    int type = transport == T_UDP ? SOCK_DGRAM : SOCK_STREAM;
    int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { fail(c, now, &n_connect_errors); return; }
    if (transport == T_TCP) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->fd = fd;
    c->t0 = now;
    n_connects++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    int r = connect(fd, (struct sockaddr *)&server, server_len);
    if (r < 0 && errno != EINPROGRESS && errno != EAGAIN) { fail(c, now, &n_connect_errors); return; }
    if (r == 0) {
        ev.events = EPOLLIN;
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        start_request(c, now);
        return;
    }
    /* Unix sockets say EAGAIN when the backlog is full: treat it as a failed connect. */
    if (errno == EAGAIN) { fail(c, now, &n_connect_errors); return; }
    c->state = S_CONNECTING;
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void try_send(struct conn *c, uint64_t now) {
    while (c->sent < req_size) {
        ssize_t n = send(c->fd, c->req + c->sent, req_size - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) { arm(c, EPOLLIN | EPOLLOUT); c->state = S_SENDING; return; }
            fail(c, now, &n_closed);
            return;
        }
        c->sent += (size_t)n;
    }
    if (c->state == S_SENDING) arm(c, EPOLLIN);
    c->state = S_RECEIVING;
}

static void start_request(struct conn *c, uint64_t now) {
    c->sent = c->got = 0;
    if (!new_conn) c->t0 = now;
    c->seq++;
    if (echo_pattern && req_size >= 17) {
        char tag[17];
        snprintf(tag, sizeof tag, "%016llx", (unsigned long long)c->seq);
        memcpy(c->req, tag, 16);
    }
    /* Not armed for EPOLLOUT: try_send arms it (and says S_SENDING) only if a send would block. */
    c->state = S_RECEIVING;
    try_send(c, now);
}

static void answered(struct conn *c, uint64_t now) {
    if (now >= measure_start && now < measure_end) record(now - c->t0);
    if (idle_mode) { c->state = S_IDLE; return; }
    if (new_conn) {
        close(c->fd);
        c->fd = -1;
        open_conn(c, now);
    } else {
        start_request(c, now);
    }
}

static void on_readable(struct conn *c, uint64_t now) {
    for (;;) {
        size_t room = ans_size - c->got;
        /* Read a little more than expected so an over-long answer is noticed. */
        ssize_t n = recv(c->fd, rbuf, room + 64, 0);
        if (n < 0) {
            if (errno == EAGAIN) return;
            fail(c, now, &n_closed);
            return;
        }
        if (n == 0) { fail(c, now, &n_closed); return; }
        if (transport == T_UDP) {
            if ((size_t)n != ans_size || memcmp(rbuf, echo_pattern ? c->req : expected, ans_size) != 0) {
                fail(c, now, &n_bad_answers);
                return;
            }
            c->got = ans_size;
        } else {
            const char *want = (echo_pattern ? c->req : expected) + c->got;
            if ((size_t)n > room || memcmp(rbuf, want, (size_t)n) != 0) { fail(c, now, &n_bad_answers); return; }
            c->got += (size_t)n;
        }
        if (c->got == ans_size) { answered(c, now); return; }
    }
}

static void on_event(struct conn *c, uint32_t events, uint64_t now) {
    if (c->fd < 0) return;
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { fail(c, now, &n_connect_errors); return; }
        arm(c, EPOLLIN);
        start_request(c, now);
        return;
    }
    if (c->state == S_SENDING && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        try_send(c, now);
        if (c->fd < 0) return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (c->state == S_IDLE) {
            /* The server closed an idle connection (or sent something unasked). */
            char b[64];
            ssize_t n = recv(c->fd, b, sizeof b, 0);
            if (n == 0 || (n < 0 && errno != EAGAIN)) fail(c, now, &n_closed);
            return;
        }
        if (c->state == S_RECEIVING || c->state == S_SENDING) on_readable(c, now);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen --transport tcp|unix|udp --addr HOST:PORT|PATH --pattern ack|echo [--size N]"
                    " [--new-conn] [--conns N] [--duration S] [--warmup S] [--timeout-ms MS] [--idle [--hold S]]\n");
    exit(64);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--new-conn")) { new_conn = 1; continue; }
        if (!strcmp(a, "--idle")) { idle_mode = 1; continue; }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--transport")) transport = !strcmp(v, "udp") ? T_UDP : !strcmp(v, "unix") ? T_UNIX : T_TCP;
        else if (!strcmp(a, "--addr")) addr_arg = v;
        else if (!strcmp(a, "--pattern")) echo_pattern = !strcmp(v, "echo");
        else if (!strcmp(a, "--size")) req_size = (size_t)atol(v);
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--timeout-ms")) timeout_ms = atoi(v);
        else if (!strcmp(a, "--hold")) hold = atof(v);
        else usage();
    }
    if (nconns < 1 || req_size < 1 || req_size > (1u << 24) || duration <= 0 || duration > 600) usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    parse_addr();

    if (echo_pattern) {
        ans_size = req_size;
        request = malloc(req_size);
        expected = malloc(req_size);
        for (size_t i = 0; i < req_size; i++) request[i] = (char)('a' + i % 26);
        request[req_size - 1] = '\n';
        memcpy(expected, request, req_size);
    } else {
        req_size = 6;
        request = strdup("hello\n");
        const char *answer = transport == T_UDP ? "Got your message\n" : "I got your message";
        ans_size = strlen(answer);
        expected = strdup(answer);
    }
    rbuf = malloc(ans_size + 64);
    conns = calloc((size_t)nconns, sizeof *conns);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!request || !expected || !rbuf || !conns || epfd < 0) die("setup");

    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t t_begin = now_ns();
    uint64_t timeout_ns = (uint64_t)timeout_ms * 1000000ull;
    uint64_t deadline;
    if (idle_mode) {
        measure_start = t_begin;
        measure_end = t_begin + (uint64_t)(duration * 1e9);
        deadline = measure_end;
    } else {
        measure_start = t_begin + (uint64_t)(warmup * 1e9);
        measure_end = measure_start + (uint64_t)(duration * 1e9);
        deadline = measure_end;
    }
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].req = request;
        if (echo_pattern) {
            if (!(conns[i].req = malloc(req_size))) die("malloc");
            memcpy(conns[i].req, request, req_size);
        }
    }
    /* Idle mode opens connections at most 256 at a time so a backlog is not flooded. */
    int opened = 0;
    int max_opening = idle_mode ? 256 : nconns;
    struct epoll_event evs[256];
    uint64_t last_scan = t_begin;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline) break;
        if (idle_mode) {
            int busy = 0;
            for (int i = 0; i < opened; i++) busy += conns[i].state != S_IDLE && conns[i].state != S_BACKOFF;
            while (opened < nconns && busy < max_opening) { open_conn(&conns[opened++], now); busy++; }
        } else {
            while (opened < nconns) open_conn(&conns[opened++], now);
        }
        int n = epoll_wait(epfd, evs, 256, 2);
        now = now_ns();
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events, now);
        if (now - last_scan >= 2000000ull) {
            last_scan = now;
            int idle_total = 0, given_up = 0;
            for (int i = 0; i < opened; i++) {
                struct conn *c = &conns[i];
                if (c->state == S_BACKOFF) {
                    if (idle_mode) { given_up++; continue; }
                    if (now >= c->wake) open_conn(c, now);
                } else if (c->state == S_IDLE) {
                    idle_total++;
                } else if (c->fd >= 0 && now - c->t0 > timeout_ns) {
                    fail(c, now, &n_timeouts);
                }
            }
            if (idle_mode && opened == nconns && idle_total + given_up == nconns) break;
        }
    }
    uint64_t t_end = now_ns();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)
               + ((double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) + (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec)) / 1e6;

    if (idle_mode) {
        int idle_total = 0;
        for (int i = 0; i < nconns; i++) idle_total += conns[i].state == S_IDLE;
        printf("{\"ok\": true, \"idle\": true, \"connected\": %d, \"wanted\": %d, \"errors\": %llu, \"seconds\": %.3f}\n",
               idle_total, nconns, (unsigned long long)n_errors, (double)(t_end - t_begin) / 1e9);
        fflush(stdout);
        /* Hold the connections until the driver closes our stdin, or --hold seconds at most. */
        struct pollfd p = {.fd = 0, .events = POLLIN};
        uint64_t hold_end = now_ns() + (uint64_t)(hold * 1e9);
        while (now_ns() < hold_end) {
            int r = poll(&p, 1, 100);
            if (r > 0) {
                char b[64];
                if (read(0, b, sizeof b) <= 0) break;
            }
        }
        for (int i = 0; i < nconns; i++) if (conns[i].fd >= 0) close(conns[i].fd);
        return 0;
    }
    for (int i = 0; i < nconns; i++) if (conns[i].fd >= 0) close(conns[i].fd);
    double window = (double)((t_end < measure_end ? t_end : measure_end) - measure_start) / 1e9;
    printf("{\"ok\": true, \"transport\": \"%s\", \"pattern\": \"%s\", \"size\": %zu, \"new_conn\": %s, \"conns\": %d, "
           "\"window_s\": %.3f, \"requests\": %llu, \"rate\": %.1f, \"mean_us\": %.1f, \"p50_us\": %.0f, \"p90_us\": %.0f, "
           "\"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %llu, \"errors\": %llu, \"timeouts\": %llu, "
           "\"connect_errors\": %llu, \"bad_answers\": %llu, \"closed\": %llu, \"connects\": %llu, \"client_cpu_s\": %.3f}\n",
           transport == T_UDP ? "udp" : transport == T_UNIX ? "unix" : "tcp", echo_pattern ? "echo" : "ack", req_size,
           new_conn ? "true" : "false", nconns, window, (unsigned long long)hist_n, window > 0 ? (double)hist_n / window : 0.0,
           hist_n ? (double)hist_sum_us / (double)hist_n : 0.0, percentile(0.50), percentile(0.90), percentile(0.99),
           percentile(0.999), (unsigned long long)hist_max_us, (unsigned long long)n_errors,
           (unsigned long long)n_timeouts, (unsigned long long)n_connect_errors, (unsigned long long)n_bad_answers,
           (unsigned long long)n_closed, (unsigned long long)n_connects, cpu);
    return 0;
}
