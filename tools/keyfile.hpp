// keyfile.hpp - the private parts of an unencrypted private key file, read without libcrypto
// (so that memlock-discover needs nothing but libc on any system it is copied to).
//
// Reads PEM (one or more blocks; the first private key is used) or raw DER:
//   - "RSA PRIVATE KEY" (PKCS#1), "EC PRIVATE KEY" (SEC1), "PRIVATE KEY" (PKCS#8: RSA,
//     RSA-PSS, EC, DSA, DH, Ed25519, Ed448, X25519, X448, and any other algorithm whose key
//     is an INTEGER or an OCTET STRING);
//   - "OPENSSH PRIVATE KEY" (what ssh-keygen writes: ssh-rsa, ssh-ed25519, ecdsa-sha2-*),
//     when not encrypted with a passphrase.
// Encrypted keys are refused with that reason. Components are big-endian byte strings
// (numbers without leading zero bytes); raw keys are the bytes as stored.
#ifndef MEMLOCK_TOOLS_KEYFILE_HPP
#define MEMLOCK_TOOLS_KEYFILE_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace keyfile {

struct Component {
    std::string name;   // "rsa p", "EC private scalar", "ED25519 private key"
    std::string bytes;  // big-endian for numbers
    bool number;        // a number (kept in memory in either byte order), not raw bytes
};

struct Key {
    std::string type;  // "RSA", "EC", "ED25519", ...
    std::string what;  // for the report: "RSA-2048 d, p, q, dp, dq, qinv"
    std::vector<Component> parts;
};

namespace detail {

// A DER reader over [p, end): one tag-length-value at a time (definite lengths only).
struct Der {
    const unsigned char *p, *end;

    bool next(unsigned &tag, Der &value) {
        if (end - p < 2) return false;
        tag = *p++;
        std::size_t len = *p++;
        if (len & 0x80) {
            const std::size_t n = len & 0x7f;
            if (n == 0 || n > 4 || static_cast<std::size_t>(end - p) < n) return false;
            len = 0;
            for (std::size_t i = 0; i < n; ++i) len = len << 8 | *p++;
        }
        if (static_cast<std::size_t>(end - p) < len) return false;
        value = Der{p, p + len};
        p += len;
        return true;
    }
    // The next element, which must have `want` as its tag.
    bool expect(unsigned want, Der &value) {
        unsigned tag = 0;
        return next(tag, value) && tag == want;
    }
    std::string bytes() const { return std::string(reinterpret_cast<const char *>(p), static_cast<std::size_t>(end - p)); }
};

enum : unsigned { kInteger = 0x02, kOctets = 0x04, kOid = 0x06, kSequence = 0x30 };

// An INTEGER's magnitude, big-endian, without leading zero bytes.
inline std::string number(const Der &v) {
    const unsigned char *p = v.p;
    while (p < v.end && *p == 0) ++p;
    return std::string(reinterpret_cast<const char *>(p), static_cast<std::size_t>(v.end - p));
}

inline unsigned bits_of(const std::string &be) {
    if (be.empty()) return 0;
    unsigned bits = static_cast<unsigned>(be.size() - 1) * 8;
    for (unsigned c = static_cast<unsigned char>(be[0]); c; c >>= 1) ++bits;
    return bits;
}

// PKCS#1 RSAPrivateKey: version, n, e, d, p, q, dp, dq, qinv.
inline bool rsa(Der body, const std::string &type, Key &out) {
    static const char *const names[] = {"n", "e", "d", "p", "q", "dp", "dq", "qinv"};
    Der seq{nullptr, nullptr}, v{nullptr, nullptr};
    if (!body.expect(kSequence, seq) || !seq.expect(kInteger, v)) return false;
    std::string n;
    for (const char *name : names) {
        if (!seq.expect(kInteger, v)) return false;
        const std::string value = number(v);
        if (name[0] == 'n' && !name[1]) n = value;
        else if (name[0] != 'e') out.parts.push_back({std::string("rsa ") + name, value, true});
    }
    out.type = type;
    out.what = type + "-" + std::to_string(bits_of(n)) + " d, p, q, dp, dq, qinv";
    return true;
}

// SEC1 ECPrivateKey: version 1, the private scalar as an OCTET STRING, optional parameters.
inline bool ec(Der body, Key &out) {
    Der seq{nullptr, nullptr}, v{nullptr, nullptr};
    if (!body.expect(kSequence, seq) || !seq.expect(kInteger, v) || !seq.expect(kOctets, v)) return false;
    out.type = "EC";
    out.what = "EC private scalar";
    out.parts.push_back({"EC private scalar", number(v), true});
    return true;
}

// The name of a key algorithm's OID (its DER contents).
inline std::string algorithm(const std::string &oid) {
    static const struct {
        const char *der, *name;
    } known[] = {
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01", "RSA"}, {"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x0a", "RSA-PSS"},
        {"\x2a\x86\x48\xce\x3d\x02\x01", "EC"},          {"\x2a\x86\x48\xce\x38\x04\x01", "DSA"},
        {"\x2a\x86\x48\x86\xf7\x0d\x01\x03\x01", "DH"},  {"\x2a\x86\x48\xce\x3e\x02\x01", "DHX"},
        {"\x2b\x65\x6e", "X25519"},                      {"\x2b\x65\x6f", "X448"},
        {"\x2b\x65\x70", "ED25519"},                     {"\x2b\x65\x71", "ED448"},
    };
    for (const auto &k : known)
        if (oid == k.der) return k.name;
    return "key";
}

// PKCS#8 PrivateKeyInfo / OneAsymmetricKey: version, algorithm, the key in an OCTET STRING.
inline bool pkcs8(Der body, Key &out) {
    Der seq{nullptr, nullptr}, v{nullptr, nullptr}, alg{nullptr, nullptr}, oid{nullptr, nullptr}, key{nullptr, nullptr};
    if (!body.expect(kSequence, seq) || !seq.expect(kInteger, v) || !seq.expect(kSequence, alg) ||
        !alg.expect(kOid, oid) || !seq.expect(kOctets, key))
        return false;
    const std::string type = algorithm(oid.bytes());
    if (type == "RSA" || type == "RSA-PSS") return rsa(key, type, out);
    if (type == "EC") return ec(key, out);
    unsigned tag = 0;
    Der inner = key, value{nullptr, nullptr};
    if (!inner.next(tag, value)) return false;
    out.type = type;
    if (tag == kInteger) {  // DSA, DH: the private exponent
        out.what = type + " private scalar";
        out.parts.push_back({out.what, number(value), true});
        return true;
    }
    if (tag == kOctets) {  // Edwards and Montgomery curves: the raw private key
        out.what = type + " raw private key";
        out.parts.push_back({type + " private key", value.bytes(), false});
        return true;
    }
    return false;
}

inline std::string base64(const std::string &text) {
    std::string out;
    unsigned acc = 0;
    int bits = 0;
    for (const char c : text) {
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else continue;  // line breaks, padding
        acc = (acc << 6 | static_cast<unsigned>(v)) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>(acc >> bits & 0xff));
        }
    }
    return out;
}

// An OpenSSH "string" or "mpint" (uint32 length, bytes) at `at`.
inline bool ssh_string(const std::string &b, std::size_t &at, std::string &out) {
    if (b.size() - at < 4 || at > b.size()) return false;
    const std::size_t len = std::size_t{static_cast<unsigned char>(b[at])} << 24 |
                            std::size_t{static_cast<unsigned char>(b[at + 1])} << 16 |
                            std::size_t{static_cast<unsigned char>(b[at + 2])} << 8 | static_cast<unsigned char>(b[at + 3]);
    at += 4;
    if (b.size() - at < len) return false;
    out = b.substr(at, len);
    at += len;
    return true;
}

inline std::string strip_zeros(const std::string &s) {
    std::size_t i = 0;
    while (i < s.size() && s[i] == 0) ++i;
    return s.substr(i);
}

// openssh-key-v1: magic, cipher, kdf, kdf options, key count, public keys, then the private
// block: two check words and, per key, its type and fields.
inline std::string openssh(const std::string &b, Key &out) {
    static const char magic[] = "openssh-key-v1";
    if (b.compare(0, sizeof magic, std::string(magic, sizeof magic)) != 0) return "not an OpenSSH private key";
    std::size_t at = sizeof magic;
    std::string cipher, kdf, opts, count, pub, priv;
    if (!ssh_string(b, at, cipher) || !ssh_string(b, at, kdf) || !ssh_string(b, at, opts)) return "a damaged OpenSSH key";
    if (cipher != "none") return "encrypted with a passphrase (OpenSSH cipher " + cipher + ")";
    if (b.size() - at < 4) return "a damaged OpenSSH key";
    at += 4;  // the number of keys: the first is used
    if (!ssh_string(b, at, pub) || !ssh_string(b, at, priv)) return "a damaged OpenSSH key";
    std::size_t p = 8;  // the check words
    std::string type;
    if (priv.size() < p || !ssh_string(priv, p, type)) return "a damaged OpenSSH key";
    std::vector<std::string> f;
    auto take = [&](int n) {
        for (std::string s; n-- > 0 && ssh_string(priv, p, s);) f.push_back(s);
        return f.size();
    };
    if (type == "ssh-rsa") {
        if (take(6) != 6) return "a damaged OpenSSH key";  // n, e, d, iqmp, p, q
        out.type = "RSA";
        out.what = "RSA-" + std::to_string(bits_of(strip_zeros(f[0]))) + " d, p, q, qinv (OpenSSH format)";
        out.parts = {{"rsa d", strip_zeros(f[2]), true},
                     {"rsa p", strip_zeros(f[4]), true},
                     {"rsa q", strip_zeros(f[5]), true},
                     {"rsa qinv", strip_zeros(f[3]), true}};
        return "";
    }
    if (type == "ssh-ed25519") {
        if (take(2) != 2 || f[1].size() != 64) return "a damaged OpenSSH key";  // public, seed || public
        out.type = "ED25519";
        out.what = "ED25519 raw private key (OpenSSH format)";
        out.parts = {{"ED25519 private key", f[1].substr(0, 32), false}};
        return "";
    }
    if (type.rfind("ecdsa-sha2-", 0) == 0) {
        if (take(3) != 3) return "a damaged OpenSSH key";  // curve, public point, scalar
        out.type = "EC";
        out.what = "EC private scalar (OpenSSH format)";
        out.parts = {{"EC private scalar", strip_zeros(f[2]), true}};
        return "";
    }
    return "an OpenSSH key of type " + type + ", which this tool cannot read";
}

}  // namespace detail

// Reads the private parts of the key in `data`. Returns "" or why it could not.
inline std::string parse(const std::string &data, Key &out) {
    using namespace detail;
    out = Key();
    std::string der = data, label;
    if (data.find("-----BEGIN ") != std::string::npos) {
        std::size_t at = 0;
        for (;;) {
            const std::size_t begin = data.find("-----BEGIN ", at);
            if (begin == std::string::npos) return "no private key in its PEM blocks";
            const std::size_t label_end = data.find("-----", begin + 11);
            if (label_end == std::string::npos) return "a damaged PEM block";
            label = data.substr(begin + 11, label_end - begin - 11);
            const std::size_t end = data.find("-----END " + label + "-----", label_end);
            if (end == std::string::npos) return "a PEM block without its END line";
            at = end;
            if (label.find("PRIVATE KEY") == std::string::npos) continue;  // certificates, parameters
            const std::string body = data.substr(label_end + 5, end - label_end - 5);
            if (label.find("ENCRYPTED") != std::string::npos || body.find("ENCRYPTED") != std::string::npos)
                return "encrypted with a passphrase";
            der = base64(body);
            break;
        }
        if (label == "OPENSSH PRIVATE KEY") return openssh(der, out);
    }
    Der in{reinterpret_cast<const unsigned char *>(der.data()), reinterpret_cast<const unsigned char *>(der.data()) + der.size()};
    if (label == "RSA PRIVATE KEY") return rsa(in, "RSA", out) ? "" : "a damaged RSA key";
    if (label == "EC PRIVATE KEY") return ec(in, out) ? "" : "a damaged EC key";
    if (label == "PRIVATE KEY") return pkcs8(in, out) ? "" : "a damaged or unknown PKCS#8 key";
    if (!label.empty()) return "a PEM block of type \"" + label + "\", which this tool cannot read";
    // DER: whichever structure it parses as.
    for (int form = 0; form < 3; ++form) {
        out = Key();
        if (form == 0 ? pkcs8(in, out) : form == 1 ? rsa(in, "RSA", out) : ec(in, out)) return "";
    }
    out = Key();
    return "not a private key in PEM, DER or OpenSSH format";
}

}  // namespace keyfile

#endif  // MEMLOCK_TOOLS_KEYFILE_HPP
