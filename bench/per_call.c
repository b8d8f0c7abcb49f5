/* Cost per SSL call: a TLS client and server in one process, joined by an in-memory BIO pair (no
 * sockets, no kernel I/O), exchanging a small HTTP/1.1 request and response in a loop:
 * SSL_write(client) SSL_read(server) SSL_write(server) SSL_read(client) = 4 SSL calls an iteration.
 *
 *   per_call CERT KEY ITERATIONS [--wait]
 * Handshakes, prints "ready PID", and with --wait blocks until a line arrives on stdin (so probes can be
 * attached first), then prints one JSON line:
 * {"iterations":N,"calls":4N,"ns_per_call":wall,"cpu_ns_per_call":cpu,"runq_wait_ns_per_call":w,"seconds":S}
 * (runq_wait: time runnable but waiting for a CPU, from /proc/self/schedstat).
 */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "per_call: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time of this process (user + system: uprobe handling counts as system time of the caller), so
 * other load on the machine does not inflate the figure the way it inflates wall time */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* time spent runnable but waiting for a CPU (second field of /proc/self/schedstat), seconds */
static double runq_wait(void) {
    unsigned long long run = 0, wait = 0;
    FILE *f = fopen("/proc/self/schedstat", "r");
    if (!f) return 0;
    if (fscanf(f, "%llu %llu", &run, &wait) != 2) wait = 0;
    fclose(f);
    return wait / 1e9;
}

static void read_all(SSL *s, char *buf, int want) {
    int got = 0;
    while (got < want) {
        int n = SSL_read(s, buf + got, want - got);
        if (n <= 0) die("SSL_read");
        got += n;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: per_call CERT KEY ITERATIONS [--wait]\n");
        return 2;
    }
    long iters = atol(argv[3]);
    int wait = argc > 4 && strcmp(argv[4], "--wait") == 0;

    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    if (!sctx || !cctx) die("SSL_CTX_new");
    if (SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1) die("certificate");
    if (SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1) die("key");
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);

    SSL *srv = SSL_new(sctx), *cli = SSL_new(cctx);
    BIO *b1, *b2;
    if (!BIO_new_bio_pair(&b1, 1 << 16, &b2, 1 << 16)) die("BIO_new_bio_pair");
    SSL_set_bio(cli, b1, b1);
    SSL_set_bio(srv, b2, b2);
    SSL_set_connect_state(cli);
    SSL_set_accept_state(srv);
    for (int i = 0; i < 100; i++) {
        int rc = SSL_do_handshake(cli), rs = SSL_do_handshake(srv);
        if (rc == 1 && rs == 1) break;
        if (i == 99) die("handshake");
    }

    static const char req_body[] =
        "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"messages\":[{\"role\":\"user\"}]}";
    static const char resp_body[] =
        "{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}";
    char req[512], resp[512];
    int reqlen = snprintf(req, sizeof req,
                          "POST /v1/messages HTTP/1.1\r\nHost: bench.local\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n%s", strlen(req_body), req_body);
    int resplen = snprintf(resp, sizeof resp,
                           "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                           strlen(resp_body), resp_body);
    char buf[4096];

    /* one warm-up exchange (session tickets, buffers) */
    if (SSL_write(cli, req, reqlen) != reqlen) die("SSL_write");
    read_all(srv, buf, reqlen);
    if (SSL_write(srv, resp, resplen) != resplen) die("SSL_write");
    read_all(cli, buf, resplen);

    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (wait) {
        char line[64];
        if (!fgets(line, sizeof line, stdin)) return 1;
    }
    double t0 = now(), c0 = cpu_now(), w0 = runq_wait();
    for (long i = 0; i < iters; i++) {
        if (SSL_write(cli, req, reqlen) != reqlen) die("SSL_write");
        read_all(srv, buf, reqlen);
        if (SSL_write(srv, resp, resplen) != resplen) die("SSL_write");
        read_all(cli, buf, resplen);
    }
    double dt = now() - t0, dc = cpu_now() - c0, dw = runq_wait() - w0;
    printf("{\"iterations\":%ld,\"calls\":%ld,\"ns_per_call\":%.1f,\"cpu_ns_per_call\":%.1f,"
           "\"runq_wait_ns_per_call\":%.1f,\"seconds\":%.3f}\n",
           iters, 4 * iters, dt * 1e9 / (4.0 * iters), dc * 1e9 / (4.0 * iters), dw * 1e9 / (4.0 * iters), dt);
    fflush(stdout);
    SSL_free(cli);
    SSL_free(srv);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    return 0;
}
