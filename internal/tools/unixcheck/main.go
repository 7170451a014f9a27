// Command unixcheck fails if a file outside the kernel-facing packages
// imports golang.org/x/sys/unix. Raw kernel calls belong in few places, each
// with its structs and errno translation, so that the engines (precopy,
// dbrestore, wire policy, cmd) call typed functions and never the kernel.
// `make lint` runs it: go run ./internal/tools/unixcheck.
//
// It reads the non-test Go files of every package of the module (go list)
// and their import clauses; test files may use unix to set up and probe.
package main

import (
	"encoding/json"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

const unixPath = "golang.org/x/sys/unix"

// allowed are the packages (directories) and single files that may import
// x/sys/unix, relative to the module root, each with why.
var allowed = map[string]string{
	// The kernel-facing packages: this is what they are for.
	"uffd":             "userfaultfd, ptrace, PAGEMAP_SCAN",
	"guest":            "FIEMAP, /proc/PID/pagemap, sockets of the guest agent",
	"internal/ramfile": "mmap, fallocate, SEEK_DATA, flock of RAM files",
	// The process side: a VMM driver whose guests are processes, and the
	// test guest, which plays a VMM.
	"internal/keeper":    "pidfd_open, pidfd_send_signal and poll: guests named by a handle a reused pid cannot fool",
	"vmm/proc":           "pidfd_open and poll for exits, signals, statfs of RAM files",
	"internal/testguest": "it is a guest: maps its RAM, stops itself, preadv/pwritev",
	// Single calls elsewhere, where a wrapper package would add a layer and
	// no clarity.
	"wire/readv_linux.go":            "readv into a batch of page buffers: the socket read path",
	"layout/prefetch_linux.go":       "posix_fadvise WILLNEED, cachestat, O_DIRECT: a restore batch's reads of shared storage queued at once, or past the page cache",
	"wire/sockopt_linux.go":          "TCP_USER_TIMEOUT, SIOCOUTQ, MSG_PEEK: a link that went down without a reset fails in seconds; a session in setup whose source hung up is dropped",
	"internal/drain/state.go":        "flock of the drain state file, with EINTR and EWOULDBLOCK",
	"internal/ctl/peercred_linux.go": "SO_PEERCRED of a control connection: only root or the migration's own user is answered",
	"vmm/qemu/discover.go":           "SO_PEERCRED of the QMP socket; dev/inode of QEMU's memfds",
	"vmm/qemu/dest.go":               "dev/inode and user xattrs of disk files (shared-storage check)",
}

type pkg struct {
	Dir, ImportPath string
	GoFiles         []string
	Imports         []string
	Module          *struct{ Dir string }
}

func main() {
	bad, err := check()
	if err != nil {
		fmt.Fprintln(os.Stderr, "unixcheck:", err)
		os.Exit(2)
	}
	if len(bad) > 0 {
		fmt.Fprintf(os.Stderr, "%s imported outside the kernel-facing packages (internal/tools/unixcheck lists them):\n", unixPath)
		for _, f := range bad {
			fmt.Fprintln(os.Stderr, "\t"+f)
		}
		fmt.Fprintln(os.Stderr, "call uffd, guest or internal/ramfile instead, or add the file to the allowlist saying why")
		os.Exit(1)
	}
}

func check() ([]string, error) {
	out, err := exec.Command("go", "list", "-json", "./...").Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var bad []string
	used := map[string]bool{}
	fset := token.NewFileSet()
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decode go list: %w", err)
		}
		if p.Module == nil {
			continue
		}
		rel, err := filepath.Rel(p.Module.Dir, p.Dir)
		if err != nil {
			return nil, err
		}
		rel = filepath.ToSlash(rel)
		if _, ok := allowed[rel]; ok {
			used[rel] = slices.Contains(p.Imports, unixPath)
			continue
		}
		for _, name := range p.GoFiles {
			file := rel + "/" + name
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.ImportsOnly)
			if err != nil {
				return nil, err
			}
			for _, imp := range f.Imports {
				if path, _ := strconv.Unquote(imp.Path.Value); path != unixPath {
					continue
				}
				if _, ok := allowed[file]; ok {
					used[file] = true
				} else {
					bad = append(bad, file)
				}
			}
		}
	}
	// An entry that no longer imports unix is dropped, so that the list
	// stays the list of what does.
	for entry := range allowed {
		if !used[entry] {
			bad = append(bad, entry+" (allowed, but imports no unix now: remove it from the list)")
		}
	}
	sort.Strings(bad)
	return bad, nil
}
