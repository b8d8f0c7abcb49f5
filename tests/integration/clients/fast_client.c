/* A TLS client that sends its request as soon after it starts running as it can: connect to
 * 127.0.0.1:PORT, handshake (no certificate check: the loopback mock server), SSL_write one
 * Messages API request, read the answer until the server closes, exit. For the tests of
 * "a program exec'd by a traced process is probed before its first instruction".
 *
 * usage: fast_client PORT
 * prints: "<x-mock-record-id> <microseconds from main() to the SSL_write>"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    long long t0 = now_us();
    if (argc < 2)
        return 2;
    int port = atoi(argv[1]);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "handshake failed\n");
        return 1;
    }
    const char *body = "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":16,\"stream\":false,"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"fast\"}]}";
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     "x-api-key: sk-ant-api03-fastfastfastfast\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n%s", port, strlen(body), body);
    long long t1 = now_us();
    if (SSL_write(ssl, req, n) != n) {
        fprintf(stderr, "write failed\n");
        return 1;
    }
    static char resp[1 << 16];
    size_t got = 0;
    for (;;) {
        int r = SSL_read(ssl, resp + got, (int)(sizeof(resp) - 1 - got));
        if (r <= 0)
            break;
        got += r;
        if (got >= sizeof(resp) - 1)
            break;
    }
    resp[got] = 0;
    const char *id = strcasestr(resp, "x-mock-record-id:");
    char rid[64] = "?";
    if (id)
        sscanf(id + strlen("x-mock-record-id:"), " %63[^\r\n]", rid);
    printf("%s %lld\n", rid, t1 - t0);
    SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return strstr(resp, "HTTP/1.1 200") == resp ? 0 : 1;
}
