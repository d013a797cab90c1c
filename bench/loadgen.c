/*
 * A load generator that behaves like Postfix: N persistent connections, one request outstanding
 * on each, the next sent as soon as the reply is complete. One thread, epoll, no allocation on
 * the hot path, so that it costs far less per request than the connector it measures.
 *
 *   loadgen --mode tcp|socketmap|policy|http --port P [--host 127.0.0.1] [--conns N]
 *           [--warmup S] [--duration S] [--keys K]      (K = 0: every key unique)
 *           [--path /lookup/30]                          (http: GET PATH?key=K, to measure the
 *                                                         API alone: answers must be chunked)
 *           [--zipf S]                                   (with --keys K: key i drawn with weight
 *                                                         1/(i+1)^S, as hot keys are; the keys
 *                                                         used while measuring are counted)
 *           [--think-ms T]                               (each connection waits T ms after a
 *                                                         reply before its next request: a
 *                                                         paced load instead of a closed loop)
 *           [--reconnect]                                (a connection the server closes after a
 *                                                         reply is opened again and the request
 *                                                         resent, as Postfix does; counted)
 *   loadgen --stub --mode M --port P                     (a trivial server answering at once,
 *                                                         to measure the generator's own capacity)
 *
 * Prints one JSON object: requests, req_per_s, errors, latency percentiles in ms.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { TCP, SOCKETMAP, POLICY, HTTP };

#define BUF 8192
#define BUCKETS 1000000 /* 10 us each: up to 10 s */

struct conn {
    int fd;
    int inbuf;
    int reqlen;
    uint64_t due; /* with --think-ms: when the next request goes out; 0 once it has */
    uint64_t sent_at;
    uint64_t seq;
    char buf[BUF];
    char req[1024];
};

static enum mode mode;
static const char *http_path = "/";
static long hist[BUCKETS];
static long measured, errors, overflow, reconnects;
static double *zipf_cdf; /* with --zipf: cumulative weights of the keys, the last 1.0 */
static unsigned char *used; /* with --keys: which keys were asked while measuring */
static long distinct;
static int measuring;
static uint64_t max_ns;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int parse_mode(const char *name) {
    if (!strcmp(name, "tcp")) return TCP;
    if (!strcmp(name, "socketmap")) return SOCKETMAP;
    if (!strcmp(name, "policy")) return POLICY;
    if (!strcmp(name, "http")) return HTTP;
    fprintf(stderr, "unknown mode %s\n", name);
    exit(2);
}

/* Length of the complete reply at the start of buf, or 0 if it is not complete yet. */
static int reply_length(const char *buf, int len) {
    if (mode == HTTP) { /* a chunked answer ends with the last chunk and no trailers */
        const char *end = memmem(buf, len, "\r\n0\r\n\r\n", 7);
        return end ? (int)(end - buf) + 7 : 0;
    }
    if (mode == TCP) {
        const char *nl = memchr(buf, '\n', len);
        return nl ? (int)(nl - buf) + 1 : 0;
    }
    if (mode == SOCKETMAP) {
        int n = 0, i = 0;
        while (i < len && buf[i] >= '0' && buf[i] <= '9') n = n * 10 + (buf[i++] - '0');
        if (i >= len) return 0;
        return len >= i + 1 + n + 1 ? i + 1 + n + 1 : 0;
    }
    for (int i = 1; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\n') return i + 1;
    return 0;
}

static int reply_ok(const char *buf, int len) {
    if (mode == HTTP) return len > 12 && !memcmp(buf, "HTTP/1.1 200", 12);
    if (mode == TCP) return len > 4 && !memcmp(buf, "200 ", 4);
    if (mode == SOCKETMAP) {
        const char *colon = memchr(buf, ':', len);
        return colon && len - (colon - buf) > 3 && !memcmp(colon + 1, "OK ", 3);
    }
    return len > 7 && !memcmp(buf, "action=", 7) && memcmp(buf, "action=DEFER_IF_PERMIT", 22);
}

static long zipf_draw(long keys, unsigned *rng) {
    double u = (double)rand_r(rng) / ((double)RAND_MAX + 1.0);
    long low = 0, high = keys - 1;
    while (low < high) {
        long mid = (low + high) / 2;
        if (zipf_cdf[mid] <= u) low = mid + 1; else high = mid;
    }
    return low;
}

static int format_request(char *out, int conn_index, uint64_t seq, long keys, unsigned *rng) {
    char key[96];
    if (keys > 0) {
        long k = zipf_cdf ? zipf_draw(keys, rng) : (long)(rand_r(rng) % keys);
        if (measuring && !used[k]) { used[k] = 1; distinct++; }
        snprintf(key, sizeof key, "hot%ld@example.com", k);
    } else
        snprintf(key, sizeof key, "u%d-%lu@example.com", conn_index, (unsigned long)seq);
    if (mode == TCP) return sprintf(out, "get %s\n", key);
    if (mode == HTTP)
        return sprintf(out, "GET %s?key=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", http_path, key);
    if (mode == SOCKETMAP) {
        char payload[128];
        int n = snprintf(payload, sizeof payload, "map %s", key);
        return sprintf(out, "%d:%s,", n, payload);
    }
    return sprintf(out,
                   "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
                   "client_address=192.0.2.1\nclient_name=client.example\nhelo_name=client.example\n"
                   "sender=sender@example.org\nrecipient=%s\nrecipient_count=0\nqueue_id=\n"
                   "instance=%x.%lu\nsize=1234\n\n",
                   key, conn_index, (unsigned long)seq);
}

static void send_all(int fd, const char *data, int len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        data += n;
        len -= (int)n;
    }
}

static double percentile(double p) {
    long target = (long)(p * (double)measured), seen = 0;
    for (long i = 0; i < BUCKETS; i++) {
        seen += hist[i];
        if (seen > target) return (double)i * 0.01;
    }
    return (double)BUCKETS * 0.01;
}

static void open_conn(int ep, const struct sockaddr_in *addr, struct conn *cs, int i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr)) die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    cs[i].fd = fd;
    cs[i].inbuf = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void stub(int port) __attribute__((noreturn));
static void stub(int port) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) die("stub listen");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char bufs[65536][1024];
    static int lens[65536];
    const char *reply = mode == TCP ? "200 value\n" : mode == SOCKETMAP ? "8:OK value," : "action=DUNNO\n\n";
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0 || c >= 65536) continue;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                lens[c] = 0;
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                continue;
            }
            ssize_t r = read(fd, bufs[fd] + lens[fd], 1024 - lens[fd]);
            if (r <= 0) { close(fd); continue; }
            lens[fd] += (int)r;
            int len;
            /* requests are framed like replies closely enough for the stub: \n, netstring, \n\n */
            while ((len = reply_length(bufs[fd], lens[fd])) > 0) {
                send_all(fd, reply, (int)strlen(reply));
                memmove(bufs[fd], bufs[fd] + len, lens[fd] - len);
                lens[fd] -= len;
            }
        }
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, conns = 100, is_stub = 0, reconnect = 0;
    double warmup = 2, duration = 10, zipf = 0, think_ms = 0;
    long keys = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--stub")) { is_stub = 1; continue; }
        if (!strcmp(argv[i], "--reconnect")) { reconnect = 1; continue; }
        if (i + 1 >= argc) { fprintf(stderr, "%s needs a value\n", argv[i]); return 2; }
        const char *v = argv[++i];
        if (!strcmp(argv[i - 1], "--mode")) mode = parse_mode(v);
        else if (!strcmp(argv[i - 1], "--host")) host = v;
        else if (!strcmp(argv[i - 1], "--port")) port = atoi(v);
        else if (!strcmp(argv[i - 1], "--conns")) conns = atoi(v);
        else if (!strcmp(argv[i - 1], "--warmup")) warmup = atof(v);
        else if (!strcmp(argv[i - 1], "--duration")) duration = atof(v);
        else if (!strcmp(argv[i - 1], "--keys")) keys = atol(v);
        else if (!strcmp(argv[i - 1], "--path")) http_path = v;
        else if (!strcmp(argv[i - 1], "--zipf")) zipf = atof(v);
        else if (!strcmp(argv[i - 1], "--think-ms")) think_ms = atof(v);
        else { fprintf(stderr, "unknown option %s\n", argv[i - 1]); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (is_stub) stub(port);

    struct conn *cs = calloc(conns, sizeof *cs);
    int ep = epoll_create1(0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    unsigned rng = (unsigned)getpid();
    if (keys > 0) {
        used = calloc((size_t)keys, 1);
        if (zipf > 0) {
            zipf_cdf = malloc((size_t)keys * sizeof *zipf_cdf);
            double total = 0;
            for (long k = 0; k < keys; k++) total += 1.0 / pow((double)(k + 1), zipf);
            double sum = 0;
            for (long k = 0; k < keys; k++) {
                sum += 1.0 / pow((double)(k + 1), zipf) / total;
                zipf_cdf[k] = sum;
            }
            zipf_cdf[keys - 1] = 1.0;
        }
    }
    for (int i = 0; i < conns; i++) open_conn(ep, &addr, cs, i);
    uint64_t start = now_ns();
    uint64_t measure_from = start + (uint64_t)(warmup * 1e9);
    uint64_t stop_at = measure_from + (uint64_t)(duration * 1e9);
    for (int i = 0; i < conns; i++) {
        cs[i].reqlen = format_request(cs[i].req, i, cs[i].seq++, keys, &rng);
        cs[i].sent_at = now_ns();
        send_all(cs[i].fd, cs[i].req, cs[i].reqlen);
    }
    struct epoll_event events[1024];
    uint64_t now = start;
    while (now < stop_at) {
        int n = epoll_wait(ep, events, 1024, think_ms > 0 ? 1 : 100);
        now = now_ns();
        measuring = now >= measure_from;
        if (think_ms > 0) {
            for (int i = 0; i < conns; i++) {
                if (cs[i].due && cs[i].due <= now) {
                    cs[i].due = 0;
                    cs[i].reqlen = format_request(cs[i].req, i, cs[i].seq++, keys, &rng);
                    cs[i].sent_at = now;
                    send_all(cs[i].fd, cs[i].req, cs[i].reqlen);
                }
            }
        }
        for (int e = 0; e < n; e++) {
            struct conn *c = &cs[events[e].data.u32];
            ssize_t r = read(c->fd, c->buf + c->inbuf, BUF - c->inbuf);
            if (r <= 0) {
                if (!reconnect || c->inbuf) {
                    fprintf(stderr, "connection %u closed by the server\n", events[e].data.u32);
                    return 1;
                }
                close(c->fd);  /* after a whole reply: the request just sent went nowhere */
                open_conn(ep, &addr, cs, (int)events[e].data.u32);
                send_all(c->fd, c->req, c->reqlen);
                if (now >= measure_from && now < stop_at) reconnects++;
                continue;
            }
            c->inbuf += (int)r;
            int len = reply_length(c->buf, c->inbuf);
            if (len == 0) {
                if (c->inbuf == BUF) { fprintf(stderr, "reply too long\n"); return 1; }
                continue;
            }
            if (c->sent_at >= measure_from && now < stop_at) {
                uint64_t ns = now - c->sent_at;
                uint64_t bucket = ns / 10000;
                if (bucket >= BUCKETS) overflow++; else hist[bucket]++;
                if (ns > max_ns) max_ns = ns;
                measured++;
                if (!reply_ok(c->buf, len)) errors++;
            }
            memmove(c->buf, c->buf + len, c->inbuf - len);
            c->inbuf -= len;
            if (think_ms > 0) {
                c->due = now + (uint64_t)(think_ms * 1e6);
                continue;
            }
            c->reqlen = format_request(c->req, (int)events[e].data.u32, c->seq++, keys, &rng);
            c->sent_at = now_ns();
            send_all(c->fd, c->req, c->reqlen);
        }
    }
    printf("{\"requests\": %ld, \"req_per_s\": %.1f, \"errors\": %ld, \"over_10s\": %ld, "
           "\"reconnects\": %ld, \"distinct_keys\": %ld, "
           "\"p50_ms\": %.2f, \"p90_ms\": %.2f, \"p99_ms\": %.2f, \"p999_ms\": %.2f, "
           "\"max_ms\": %.2f}\n",
           measured, (double)measured / duration, errors, overflow, reconnects, distinct,
           percentile(0.5),
           percentile(0.9), percentile(0.99), percentile(0.999), (double)max_ns / 1e6);
    return 0;
}
