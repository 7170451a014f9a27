// Package testvm is test support for QEMU guests: it builds the guest
// image (vmm/qemu/image/build.sh) and puts guests on a bridge of their
// own. Tests only: it fails the test on error.
package testvm

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	// The guest's MariaDB.
	_ "github.com/go-sql-driver/mysql"
)

// Image is a guest image to boot, and its kernel.
type Image struct {
	Path, Kernel, Initrd string
	// Dmig is the dmig binary written into the image (the guest agent).
	Dmig string
}

// source is this package's directory, to find the repository from tests
// in any package.
func source() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// BuildImage builds dmig and the guest image (the base is cached per
// machine, see build.sh) and returns a private copy in dir to boot.
func BuildImage(t testing.TB, dir string) Image {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is needed (.ci/run installs qemu-system-x86): %v", err)
	}
	root := filepath.Join(source(), "..", "..")
	bin := filepath.Join(dir, "dmig")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dmig")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build dmig for the guest: %v\n%s", err, out)
	}
	cmd := exec.Command("bash", filepath.Join(root, "vmm", "qemu", "image", "build.sh"), "--dmig", bin, filepath.Join(dir, "guest.raw"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build guest image: %v", err)
	}
	img := Image{Dmig: bin}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "image":
			img.Path = v
		case "kernel":
			img.Kernel = v
		case "initrd":
			img.Initrd = v
		}
	}
	if img.Path == "" || img.Kernel == "" || img.Initrd == "" {
		t.Fatalf("build.sh printed %q", out)
	}
	return img
}

// Bridge is a host bridge for test guests: the host is .1 of its /24.
type Bridge struct {
	Name string
	// Script attaches a new tap to the bridge (QEMU's script=).
	Script string
	prefix string // "10.77.N."
}

// NewBridge creates a bridge with a name and subnet of this test process,
// removed when the test ends.
func NewBridge(t testing.TB, dir string) *Bridge {
	t.Helper()
	n := os.Getpid() % 200
	b := &Bridge{Name: fmt.Sprintf("dmigbr%d", os.Getpid()%100000), prefix: fmt.Sprintf("10.77.%d.", n+1)}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	_ = exec.Command("ip", "link", "del", b.Name).Run() // a leftover of a killed run
	run("link", "add", b.Name, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", b.Name).Run() })
	run("addr", "add", b.prefix+"1/24", "dev", b.Name)
	run("link", "set", b.Name, "up")
	b.Script = filepath.Join(dir, "ifup-"+b.Name)
	script := fmt.Sprintf("#!/bin/sh\nip link set \"$1\" master %s && ip link set \"$1\" up\n", b.Name)
	if err := os.WriteFile(b.Script, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return b
}

// Addr is the address of host i on the bridge (1 is the host).
func (b *Bridge) Addr(i int) string { return fmt.Sprintf("%s%d", b.prefix, i) }

// CIDR is Addr(i) with the bridge's prefix length.
func (b *Bridge) CIDR(i int) string { return b.Addr(i) + "/24" }

// WaitSQL waits for MariaDB to answer at addr (host or host:port).
func WaitSQL(ctx context.Context, t testing.TB, addr string) *sql.DB {
	t.Helper()
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "3306")
	}
	host, port, _ := net.SplitHostPort(addr)
	db, err := sql.Open("mysql", fmt.Sprintf("dmig:dmig@tcp(%s)/sbtest?timeout=5s&readTimeout=60s&writeTimeout=60s", net.JoinHostPort(host, port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for {
		var one int
		err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
		if err == nil {
			return db
		}
		select {
		case <-ctx.Done():
			t.Fatalf("mariadb at %s never answered: %v", addr, err)
		case <-time.After(time.Second):
		}
	}
}

// KillUnder kills every process whose command line mentions dir: the
// QEMUs a test's dmig started (detached, as destinations are) outlive it
// otherwise.
func KillUnder(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
