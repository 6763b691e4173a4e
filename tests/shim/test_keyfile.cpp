// tools/keyfile.hpp: the private parts memlock-discover searches for, read from keys that
// openssl and ssh-keygen write in every format they offer. The expected values come from
// `openssl pkey -text` (an independent parser), so a wrong field or byte order fails here.
#include <criterion/criterion.h>

#include <cctype>
#include <map>
#include <string>

#include "e2e.hpp"
#include "../../tools/keyfile.hpp"

using namespace memlock_test;

namespace {

// Runs a shell command in dir; asserts it worked.
void sh(const TempDir &dir, const std::string &cmd) {
    RunOptions o = plain_env({"sh", "-c", "cd " + shell_quote(dir.file(".")) + " && " + cmd});
    o.timeout_ms = 120000;
    const RunResult r = run_program(o);
    cr_assert(r.exited_with(0), "%s: %s", cmd.c_str(), r.describe().c_str());
}

keyfile::Key parse_file(const std::string &path) {
    const auto data = read_file(path);
    cr_assert(data, "cannot read %s", path.c_str());
    keyfile::Key key;
    const std::string why = keyfile::parse(*data, key);
    cr_assert(why.empty(), "%s: %s", path.c_str(), why.c_str());
    return key;
}

std::string why_not(const std::string &path) {
    const auto data = read_file(path);
    cr_assert(data, "cannot read %s", path.c_str());
    keyfile::Key key;
    return keyfile::parse(*data, key);
}

void expect_refused(const TempDir &dir, const std::string &file, const std::string &reason) {
    const std::string why = why_not(dir.file(file));
    cr_expect(why == reason, "%s: \"%s\", expected \"%s\"", file.c_str(), why.c_str(), reason.c_str());
}

// The fields of `openssl pkey -text -noout` ("prime1:", "priv:") as big-endian bytes, without
// leading zero bytes for numbers.
std::map<std::string, std::string> openssl_fields(const TempDir &dir, const std::string &file) {
    sh(dir, "openssl pkey -in " + file + " -text -noout > " + file + ".txt");
    const auto read = read_file(dir.file(file + ".txt"));
    cr_assert(read);
    const std::string &text = *read;
    std::map<std::string, std::string> out;
    std::string name;
    for (const auto &line : split_lines(text)) {
        if (!line.empty() && line[0] != ' ' && line.back() == ':') {
            name = line.substr(0, line.size() - 1);
            continue;
        }
        if (line.empty() || line[0] != ' ') {
            name.clear();
            continue;
        }
        for (std::size_t i = 0; i + 1 < line.size(); ++i)
            if (std::isxdigit(static_cast<unsigned char>(line[i])) && std::isxdigit(static_cast<unsigned char>(line[i + 1]))) {
                out[name].push_back(static_cast<char>(std::stoi(line.substr(i, 2), nullptr, 16)));
                ++i;
            }
    }
    return out;
}

std::string strip(const std::string &s) { return s.substr(std::min(s.find_first_not_of('\0'), s.size())); }

const keyfile::Component *part(const keyfile::Key &k, const std::string &name) {
    for (const auto &p : k.parts)
        if (p.name == name) return &p;
    return nullptr;
}

void expect_part(const keyfile::Key &k, const std::string &name, const std::string &want, bool number) {
    const keyfile::Component *p = part(k, name);
    cr_assert(p, "no component \"%s\" (%s)", name.c_str(), k.what.c_str());
    cr_expect(p->number == number, "%s: number %d", name.c_str(), p->number);
    cr_expect(p->bytes == want, "%s: %zu bytes, expected %zu (%s)", name.c_str(), p->bytes.size(), want.size(), k.what.c_str());
}

void expect_rsa(const keyfile::Key &k, const std::map<std::string, std::string> &f, bool crt_exponents = true) {
    cr_expect_str_eq(k.type.c_str(), "RSA");
    expect_part(k, "rsa d", strip(f.at("privateExponent")), true);
    expect_part(k, "rsa p", strip(f.at("prime1")), true);
    expect_part(k, "rsa q", strip(f.at("prime2")), true);
    expect_part(k, "rsa qinv", strip(f.at("coefficient")), true);
    if (crt_exponents) {
        expect_part(k, "rsa dp", strip(f.at("exponent1")), true);
        expect_part(k, "rsa dq", strip(f.at("exponent2")), true);
    }
}

}  // namespace

Test(keyfile, rsa_in_pkcs8_pkcs1_pem_and_der) {
    TempDir dir;
    sh(dir, "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out p8.pem 2>/dev/null"
            " && openssl pkey -in p8.pem -outform DER -out p8.der"
            " && openssl rsa -in p8.pem -traditional -out p1.pem 2>/dev/null"
            " && openssl rsa -in p8.pem -traditional -outform DER -out p1.der 2>/dev/null");
    const auto fields = openssl_fields(dir, "p8.pem");
    for (const char *file : {"p8.pem", "p8.der", "p1.pem", "p1.der"}) {
        const keyfile::Key k = parse_file(dir.file(file));
        expect_rsa(k, fields);
        cr_expect_str_eq(k.what.c_str(), "RSA-2048 d, p, q, dp, dq, qinv", "%s", file);
    }
}

Test(keyfile, the_private_key_of_a_file_with_a_certificate_first) {
    TempDir dir;
    sh(dir, "openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -subj /CN=t -days 1 -out cert.pem 2>/dev/null"
            " && cat cert.pem key.pem > both.pem");
    expect_rsa(parse_file(dir.file("both.pem")), openssl_fields(dir, "key.pem"));
}

Test(keyfile, ec_in_sec1_and_pkcs8) {
    TempDir dir;
    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p8.pem 2>/dev/null"
            " && openssl ec -in p8.pem -out sec1.pem 2>/dev/null && openssl ec -in p8.pem -outform DER -out sec1.der 2>/dev/null");
    const std::string priv = strip(openssl_fields(dir, "p8.pem").at("priv"));
    for (const char *file : {"p8.pem", "sec1.pem", "sec1.der"}) {
        const keyfile::Key k = parse_file(dir.file(file));
        cr_expect_str_eq(k.type.c_str(), "EC", "%s", file);
        expect_part(k, "EC private scalar", priv, true);
    }
}

Test(keyfile, edwards_and_montgomery_raw_keys) {
    TempDir dir;
    for (const char *alg : {"ED25519", "X25519", "ED448", "X448"}) {
        const std::string file = std::string(alg) + ".pem";
        sh(dir, std::string("openssl genpkey -algorithm ") + alg + " -out " + file);
        const keyfile::Key k = parse_file(dir.file(file));
        cr_expect_str_eq(k.type.c_str(), alg);
        expect_part(k, std::string(alg) + " private key", openssl_fields(dir, file).at("priv"), false);
    }
}

Test(keyfile, dsa_private_scalar) {
    TempDir dir;
    sh(dir, "openssl genpkey -genparam -algorithm DSA -pkeyopt dsa_paramgen_bits:2048 -out params.pem 2>/dev/null"
            " && openssl genpkey -paramfile params.pem -out dsa.pem 2>/dev/null");
    const keyfile::Key k = parse_file(dir.file("dsa.pem"));
    cr_expect_str_eq(k.type.c_str(), "DSA");
    expect_part(k, "DSA private scalar", strip(openssl_fields(dir, "dsa.pem").at("priv")), true);
}

// ssh-keygen's own format (host keys, user keys): the same numbers as the PEM it came from.
Test(keyfile, openssh_format_rsa_ecdsa_ed25519) {
    TempDir dir;
    sh(dir, "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem 2>/dev/null"
            " && openssl rsa -in rsa.pem -traditional -out rsa_ssh 2>/dev/null && chmod 600 rsa_ssh"
            " && ssh-keygen -q -p -N '' -f rsa_ssh > /dev/null && grep -q 'BEGIN OPENSSH PRIVATE KEY' rsa_ssh");
    const keyfile::Key rsa = parse_file(dir.file("rsa_ssh"));
    expect_rsa(rsa, openssl_fields(dir, "rsa.pem"), false);
    cr_expect_str_eq(rsa.what.c_str(), "RSA-2048 d, p, q, qinv (OpenSSH format)");

    sh(dir, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem 2>/dev/null"
            " && openssl ec -in ec.pem -out ec_ssh 2>/dev/null && chmod 600 ec_ssh && ssh-keygen -q -p -N '' -f ec_ssh > /dev/null"
            " && grep -q 'BEGIN OPENSSH PRIVATE KEY' ec_ssh");
    expect_part(parse_file(dir.file("ec_ssh")), "EC private scalar", strip(openssl_fields(dir, "ec.pem").at("priv")), true);

    // Ed25519: OpenSSH stores the 32-byte seed followed by the public key; the seed is the key.
    sh(dir, "ssh-keygen -q -t ed25519 -N '' -f ed_ssh");
    const keyfile::Key ed = parse_file(dir.file("ed_ssh"));
    cr_expect_str_eq(ed.type.c_str(), "ED25519");
    const keyfile::Component *seed = part(ed, "ED25519 private key");
    cr_assert(seed && seed->bytes.size() == 32 && !seed->number);
}

Test(keyfile, encrypted_and_foreign_files_are_refused_with_the_reason) {
    TempDir dir;
    sh(dir, "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out k.pem 2>/dev/null"
            " && openssl pkey -in k.pem -aes256 -passout pass:secret -out enc8.pem"
            " && openssl rsa -in k.pem -traditional -aes256 -passout pass:secret -out enc1.pem 2>/dev/null"
            " && ssh-keygen -q -t ed25519 -N 'a passphrase' -f enc_ssh"
            " && openssl req -x509 -key k.pem -subj /CN=t -days 1 -out cert.pem"
            " && printf 'hello, world, not a key at all\\n' > text");
    expect_refused(dir, "enc8.pem", "encrypted with a passphrase");
    expect_refused(dir, "enc1.pem", "encrypted with a passphrase");
    expect_refused(dir, "enc_ssh", "encrypted with a passphrase (OpenSSH cipher aes256-ctr)");
    expect_refused(dir, "cert.pem", "no private key in its PEM blocks");
    expect_refused(dir, "text", "not a private key in PEM, DER or OpenSSH format");
    // Truncated files: every prefix of a DER key fails cleanly (no read past the end).
    sh(dir, "openssl pkey -in k.pem -outform DER -out k.der");
    const auto read = read_file(dir.file("k.der"));
    cr_assert(read);
    const std::string &der = *read;
    for (std::size_t n = 0; n < der.size(); n += 7) {
        keyfile::Key k;
        cr_expect(!keyfile::parse(der.substr(0, n), k).empty(), "a %zu-byte prefix parsed", n);
    }
}
