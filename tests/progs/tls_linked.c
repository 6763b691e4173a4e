/* tls_linked PORT CERT KEY - an HTTPS server with OpenSSL linked in (libssl.a, libcrypto.a):
 * no libcrypto.so is loaded, as in programs that ship their own OpenSSL (Node.js's official
 * builds, vendors' daemons). It reads its key the usual way (SSL_CTX_use_PrivateKey_file) and
 * answers every request on 127.0.0.1:PORT with "linked https ok", one connection at a time,
 * until it is killed. scripts/keyproof.py counts the key's copies in its dumps. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, (struct sockaddr *)&at, sizeof at) || listen(fd, 16)) {
        perror("tls_linked: listen");
        exit(1);
    }
    return fd;
}

/* Reads the request's head (up to its blank line) and answers it. */
static void serve(SSL *ssl) {
    char buf[4096];
    size_t have = 0;
    while (have < sizeof buf - 1) {
        int n = SSL_read(ssl, buf + have, (int)(sizeof buf - 1 - have));
        if (n <= 0) return;
        have += (size_t)n;
        buf[have] = '\0';
        if (strstr(buf, "\r\n\r\n")) break;
    }
    static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\nlinked https ok";
    SSL_write(ssl, reply, (int)(sizeof reply - 1));
    SSL_shutdown(ssl);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: tls_linked PORT CERT KEY\n");
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[2]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[3], SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    int fd = listen_on(atoi(argv[1]));
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        SSL *ssl = SSL_new(ctx);
        SSL_set_fd(ssl, c);
        if (SSL_accept(ssl) == 1) serve(ssl);
        SSL_free(ssl);
        close(c);
    }
}
