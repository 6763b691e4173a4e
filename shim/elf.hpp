// elf.hpp - ElfView: a read-only, bounds-checked view of an ELF64 file on disk.
//
// Used by the caller rules (callers.cpp) to index function names and sonames, and by
// memlock-discover to name the frames of recorded call stacks. It maps the file privately
// and never trusts an offset it has not checked.
#ifndef MEMLOCK_SHIM_ELF_HPP
#define MEMLOCK_SHIM_ELF_HPP

#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace mlshim {

class ElfView {
public:
    explicit ElfView(const std::string &path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        map(fd);
        ::close(fd);
    }
    // The file open for reading on fd (a regular file, else no view); fd stays the caller's.
    explicit ElfView(int fd) { map(fd); }
    ~ElfView() { unmap(); }
    ElfView(const ElfView &) = delete;
    ElfView &operator=(const ElfView &) = delete;

    bool ok() const { return sections_ != nullptr; }

    template <typename T> const T *at(std::size_t off) const {
        return data_ && off <= size_ && size_ - off >= sizeof(T) ? reinterpret_cast<const T *>(data_ + off) : nullptr;
    }
    template <typename T> const T *array(std::size_t off, std::size_t n) const {
        return data_ && off <= size_ && n <= (size_ - off) / sizeof(T) ? reinterpret_cast<const T *>(data_ + off)
                                                                        : nullptr;
    }
    // A NUL-terminated string at `off` inside section `strtab`, or nullptr.
    const char *string(unsigned strtab, std::size_t off) const {
        if (strtab >= nsections_) return nullptr;
        const ElfW(Shdr) &s = sections_[strtab];
        if (off >= s.sh_size || s.sh_offset > size_ || s.sh_size > size_ - s.sh_offset) return nullptr;
        const char *p = reinterpret_cast<const char *>(data_ + s.sh_offset + off);
        return std::memchr(p, 0, s.sh_size - off) ? p : nullptr;
    }

    // Calls f(sym, name) for every defined function symbol (sized or not) of the symbol tables
    // of type `type` (SHT_DYNSYM, SHT_SYMTAB), or of both when `type` is 0.
    template <typename F> void each_defined_function(unsigned type, F f) const {
        for (unsigned i = 0; i < nsections_; ++i) {
            const ElfW(Shdr) &s = sections_[i];
            if (type ? s.sh_type != type : s.sh_type != SHT_SYMTAB && s.sh_type != SHT_DYNSYM) continue;
            const auto *syms = array<ElfW(Sym)>(s.sh_offset, s.sh_size / sizeof(ElfW(Sym)));
            if (!syms) continue;
            for (std::size_t k = 0; k < s.sh_size / sizeof(ElfW(Sym)); ++k) {
                const ElfW(Sym) &sym = syms[k];
                unsigned sym_type = ELF64_ST_TYPE(sym.st_info);
                if ((sym_type != STT_FUNC && sym_type != STT_GNU_IFUNC) || sym.st_shndx == SHN_UNDEF) continue;
                if (const char *name = string(s.sh_link, sym.st_name)) f(sym, name);
            }
        }
    }

    // Calls f(name, value, size) for every defined function symbol of .dynsym and .symtab with
    // a size.
    template <typename F> void each_function(F f) const {
        each_defined_function(0, [&](const ElfW(Sym) &sym, const char *name) {
            if (sym.st_size != 0) f(name, sym.st_value, sym.st_size);
        });
    }

    // Calls f(name) for every function .dynsym defines global or weak, for other objects to bind
    // to (a name with several versions once for each).
    template <typename F> void each_exported_function(F f) const {
        each_defined_function(SHT_DYNSYM, [&](const ElfW(Sym) &sym, const char *name) {
            const unsigned bind = ELF64_ST_BIND(sym.st_info);
            if (bind == STB_GLOBAL || bind == STB_WEAK) f(name);
        });
    }

    // Does .dynsym define the function `name` (global or weak), for other objects to bind to?
    bool exports_function(const char *name) const {
        bool found = false;
        each_exported_function([&](const char *sym_name) { found |= std::strcmp(sym_name, name) == 0; });
        return found;
    }

    // Does the file have a .symtab (local symbols)? Stripped binaries have only .dynsym.
    bool has_symtab() const {
        for (unsigned i = 0; i < nsections_; ++i)
            if (sections_[i].sh_type == SHT_SYMTAB) return true;
        return false;
    }

    // The program headers, or nullptr (n = 0).
    const ElfW(Phdr) *phdrs(unsigned &n) const {
        const auto *eh = at<ElfW(Ehdr)>(0);
        const ElfW(Phdr) *ph = eh && eh->e_phentsize == sizeof(ElfW(Phdr)) ? array<ElfW(Phdr)>(eh->e_phoff, eh->e_phnum) : nullptr;
        n = ph ? eh->e_phnum : 0;
        return ph;
    }

    // Does the dynamic segment (PT_DYNAMIC, as the loader reads it) hold an entry `tag`?
    bool has_dynamic_tag(ElfW(Sxword) tag) const {
        unsigned n = 0;
        const ElfW(Phdr) *ph = phdrs(n);
        for (unsigned i = 0; i < n; ++i) {
            if (ph[i].p_type != PT_DYNAMIC) continue;
            const std::size_t count = ph[i].p_filesz / sizeof(ElfW(Dyn));
            const auto *dyn = array<ElfW(Dyn)>(ph[i].p_offset, count);
            for (std::size_t k = 0; dyn && k < count && dyn[k].d_tag != DT_NULL; ++k)
                if (dyn[k].d_tag == tag) return true;
        }
        return false;
    }

    // f(name) for each dynamic entry `tag` (DT_SONAME, DT_NEEDED...) naming a string, in order;
    // stops when f returns false.
    template <typename F> void each_dynamic_string(ElfW(Sxword) tag, F f) const {
        for (unsigned i = 0; i < nsections_; ++i) {
            const ElfW(Shdr) &s = sections_[i];
            if (s.sh_type != SHT_DYNAMIC) continue;
            const auto *dyn = array<ElfW(Dyn)>(s.sh_offset, s.sh_size / sizeof(ElfW(Dyn)));
            for (std::size_t k = 0; dyn && k < s.sh_size / sizeof(ElfW(Dyn)) && dyn[k].d_tag != DT_NULL; ++k)
                if (dyn[k].d_tag == tag)
                    if (const char *n = string(s.sh_link, dyn[k].d_un.d_val); n && !f(n)) return;
        }
    }

    // DT_SONAME, or "".
    std::string soname() const {
        std::string name;
        each_dynamic_string(DT_SONAME, [&](const char *n) { return name = n, false; });
        return name;
    }

private:
    void map(int fd) {
        struct stat st;
        if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= static_cast<off_t>(sizeof(ElfW(Ehdr)))) {
            void *m = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
            if (m != MAP_FAILED) {
                data_ = static_cast<const unsigned char *>(m);
                size_ = static_cast<std::size_t>(st.st_size);
            }
        }
        const auto *eh = at<ElfW(Ehdr)>(0);
        if (!eh || std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
            eh->e_shentsize != sizeof(ElfW(Shdr)) || !array<ElfW(Shdr)>(eh->e_shoff, eh->e_shnum)) {
            unmap();
            return;
        }
        sections_ = array<ElfW(Shdr)>(eh->e_shoff, eh->e_shnum);
        nsections_ = eh->e_shnum;
    }
    void unmap() {
        if (data_) ::munmap(const_cast<unsigned char *>(data_), size_);
        data_ = nullptr;
        sections_ = nullptr;
    }
    const unsigned char *data_ = nullptr;
    std::size_t size_ = 0;
    const ElfW(Shdr) *sections_ = nullptr;
    unsigned nsections_ = 0;
};

}  // namespace mlshim

#endif  // MEMLOCK_SHIM_ELF_HPP
