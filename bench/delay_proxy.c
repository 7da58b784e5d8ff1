/* A TCP proxy that delays every chunk it forwards by a fixed time, in both directions:
 * what a network between the app and PostgreSQL adds. One thread, epoll and a timerfd;
 * its CPU time stays a small fraction of the app's (bench/endpoints.py reports it).
 *
 *   delay_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_DELAY_US
 *
 * Both on 127.0.0.1. Chunks are queued in one FIFO: the delay is constant, so the FIFO
 * is also in order of due time. Built by bench/endpoints.py with `cc -O2`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct pair {
    int fd[2];     /* 0: client (the app), 1: upstream (PostgreSQL) */
    int closed;    /* a side has ended: both are closed once the queue has passed */
    int queued;    /* chunks of this pair still in the FIFO */
} pair;

typedef struct side {  /* epoll data: which pair, which fd */
    pair *p;
    int i;
} side;

typedef struct chunk {
    struct chunk *next;
    uint64_t due;
    pair *p;
    int to;        /* index of the destination fd; -1: close the pair */
    size_t len;
    char data[];
} chunk;

static chunk *head, *tail;
static int timer;
static uint64_t delay_ns;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void arm(void) {
    struct itimerspec spec = {0};
    if (head) {
        spec.it_value.tv_sec = head->due / 1000000000u;
        spec.it_value.tv_nsec = head->due % 1000000000u;
        if (!spec.it_value.tv_sec && !spec.it_value.tv_nsec) spec.it_value.tv_nsec = 1;
    }
    timerfd_settime(timer, TFD_TIMER_ABSTIME, &spec, NULL);
}

static void enqueue(pair *p, int to, const char *data, size_t len) {
    chunk *c = malloc(sizeof(chunk) + len);
    c->next = NULL;
    c->due = now_ns() + delay_ns;
    c->p = p;
    c->to = to;
    c->len = len;
    memcpy(c->data, data, len);
    p->queued++;
    int was_empty = head == NULL;
    if (tail) tail->next = c; else head = c;
    tail = c;
    if (was_empty) arm();
}

static void finish(pair *p) {
    if (p->closed == 2 && p->queued == 0) {
        close(p->fd[0]);
        close(p->fd[1]);
        p->closed = 3;  /* not freed: an event of this batch may still name it */
    }
}

static void deliver(void) {
    uint64_t now = now_ns();
    while (head && head->due <= now) {
        chunk *c = head;
        head = c->next;
        if (!head) tail = NULL;
        pair *p = c->p;
        p->queued--;
        if (c->to < 0) {
            if (p->closed < 2) {
                shutdown(p->fd[0], SHUT_RDWR);
                shutdown(p->fd[1], SHUT_RDWR);
                p->closed = 2;
            }
        } else if (p->closed < 2) {
            size_t sent = 0;  /* blocking sockets: the peers always read */
            while (sent < c->len) {
                ssize_t n = send(p->fd[c->to], c->data + sent, c->len - sent, MSG_NOSIGNAL);
                if (n <= 0) break;
                sent += (size_t)n;
            }
        }
        free(c);
        finish(p);
    }
    arm();
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT ONE_WAY_DELAY_US\n", argv[0]);
        return 2;
    }
    int listen_port = atoi(argv[1]), upstream_port = atoi(argv[2]);
    delay_ns = (uint64_t)atoll(argv[3]) * 1000u;

    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(listen_port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 512)) {
        perror("listen");
        return 1;
    }
    struct sockaddr_in upstream = addr;
    upstream.sin_port = htons(upstream_port);

    int ep = epoll_create1(0);
    timer = timerfd_create(CLOCK_MONOTONIC, 0);
    static side listener_side = {NULL, -1}, timer_side = {NULL, -2};
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_side};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    ev.data.ptr = &timer_side;
    epoll_ctl(ep, EPOLL_CTL_ADD, timer, &ev);

    static char buffer[65536];
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int k = 0; k < n; k++) {
            side *s = events[k].data.ptr;
            if (s->i == -1) {
                int client = accept(listener, NULL, NULL);
                if (client < 0) continue;
                int server = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(server, (struct sockaddr *)&upstream, sizeof upstream)) {
                    close(client);
                    close(server);
                    continue;
                }
                pair *p = calloc(1, sizeof(pair));
                p->fd[0] = client;
                p->fd[1] = server;
                for (int i = 0; i < 2; i++) {
                    setsockopt(p->fd[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    side *own = malloc(sizeof(side));  /* freed with the process */
                    own->p = p;
                    own->i = i;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = own};
                    epoll_ctl(ep, EPOLL_CTL_ADD, p->fd[i], &e);
                }
            } else if (s->i == -2) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0) { /* spurious */ }
                deliver();
            } else {
                pair *p = s->p;
                if (p->closed) continue;
                ssize_t got = recv(p->fd[s->i], buffer, sizeof buffer, 0);
                if (got > 0) {
                    enqueue(p, 1 - s->i, buffer, (size_t)got);
                } else {
                    /* One side ended: stop reading both, close once the queue is through. */
                    epoll_ctl(ep, EPOLL_CTL_DEL, p->fd[0], NULL);
                    epoll_ctl(ep, EPOLL_CTL_DEL, p->fd[1], NULL);
                    p->closed = 1;
                    enqueue(p, -1, NULL, 0);
                }
            }
        }
    }
}
