package uffd

// The test target: the test binary re-executes itself as a child that maps
// a shared file and obeys line commands on stdin. Its main goroutine is
// locked to the main thread (the one Attach seizes) and reads stdin with raw
// blocking read(2), so "blocked in a syscall" means exactly that, and an
// EINTR would be seen and counted rather than hidden by the runtime.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/ramfile"
)

const (
	childEnv     = "UFFD_TEST_CHILD"
	childRAMEnv  = "UFFD_TEST_RAM"
	childSpinEnv = "UFFD_TEST_SPIN"
)

func init() {
	// Keep the main goroutine on the main thread (tid == pid) in the child.
	runtime.LockOSThread()
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	// Like cilium/ebpf: a test run that leaks a uffd or a pagemap fd fails
	// (a leaked uffd keeps a target's faults pending).
	before := openFDs()
	code := m.Run()
	if after := openFDs(); code == 0 && len(after) > len(before) {
		fmt.Fprintf(os.Stderr, "fd leak: %d open before the tests, %d after: %v\n", len(before), len(after), after)
		code = 1
	}
	os.Exit(code)
}

// openFDs lists this process's open userfaultfds and pagemap files.
func openFDs() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if strings.Contains(l, "userfaultfd") || strings.HasSuffix(l, "/pagemap") {
			out = append(out, e.Name()+"->"+l)
		}
	}
	return out
}

// pattern fills a page with bytes derived from (page, version).
func pattern(page, version int, dst []byte) {
	x := uint64(page)*0x9E3779B97F4A7C15 + uint64(version)*0xBF58476D1CE4E5B9 + 1
	for i := 0; i+8 <= len(dst); i += 8 {
		x ^= x >> 31
		x *= 0x94D049BB133111EB
		x ^= x >> 29
		binary.LittleEndian.PutUint64(dst[i:], x)
	}
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }

func runChild() int {
	path := os.Getenv(childRAMEnv)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	st, _ := f.Stat()
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child mmap:", err)
		return 2
	}
	if os.Getenv(childSpinEnv) != "" {
		// Busy on the main thread until the controller sets word 1 of the
		// last page to 1 through its own mapping; count iterations in word 0.
		last := mem[len(mem)-PageSize:]
		for i := uint64(0); binary.LittleEndian.Uint64(last[8:]) != 1; i++ {
			binary.LittleEndian.PutUint64(last[:8], i)
		}
	}
	eintr := 0
	in := make([]byte, 0, 1<<16)
	buf := make([]byte, 4096)
	unix.SetNonblock(0, false)
	reply := func(s string) {
		b := []byte(s + "\n")
		for len(b) > 0 {
			n, err := unix.Write(1, b)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				os.Exit(2)
			}
			b = b[n:]
		}
	}
	for {
		i := strings.IndexByte(string(in), '\n')
		if i < 0 {
			n, err := unix.Read(0, buf)
			if errors.Is(err, unix.EINTR) {
				eintr++
				continue
			}
			if err != nil || n == 0 {
				return 0
			}
			in = append(in, buf[:n]...)
			continue
		}
		line := string(in[:i])
		in = in[i+1:]
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		args := make([]int, 0, len(f)-1)
		for _, a := range f[1:] {
			n, _ := strconv.Atoi(a)
			args = append(args, n)
		}
		page := func(p int) []byte { return mem[p*PageSize : (p+1)*PageSize] }
		switch f[0] {
		case "ping":
			reply(fmt.Sprintf("pong eintr=%d", eintr))
		case "read": // read P...: crc of each page
			var sb strings.Builder
			sb.WriteString("ok")
			for _, p := range args {
				fmt.Fprintf(&sb, " %08x", crcOf(page(p)))
			}
			reply(sb.String())
		case "write": // write V P...: fill pages with pattern(P, V)
			for _, p := range args[1:] {
				pattern(p, args[0], page(p))
			}
			reply("ok")
		case "pread": // pread FILEPAGE P: a kernel write into page P
			src, err := os.Open(path + ".src")
			if err != nil {
				reply("err " + err.Error())
				continue
			}
			_, err = unix.Pread(int(src.Fd()), page(args[1]), int64(args[0])*PageSize)
			src.Close()
			if err != nil {
				reply("err " + err.Error())
				continue
			}
			reply(fmt.Sprintf("ok %08x", crcOf(page(args[1]))))
		case "pwrite": // pwrite P: a kernel read from page P into path.out
			out, err := os.Create(path + ".out")
			if err != nil {
				reply("err " + err.Error())
				continue
			}
			_, err = unix.Pwrite(int(out.Fd()), page(args[0]), 0)
			out.Close()
			if err != nil {
				reply("err " + err.Error())
				continue
			}
			reply("ok")
		case "hammer": // hammer THREADS ITERS VERSION RANDOM: see hammer
			reply(hammer(mem, args[0], args[1], args[2], args[3] != 0))
		case "exit":
			return 0
		default:
			reply("err unknown command " + f[0])
		}
	}
}

// child is a running test target.
type child struct {
	t    testing.TB
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	ram  *os.File
	mem  []byte // the controller's own mapping of the RAM file
	addr uintptr
	once sync.Once
}

type childOpts struct {
	pages int
	spin  bool
	uid   int // run as this uid if non-zero
}

// newRAM creates a shared-memory file of n pages, removed at cleanup.
func newRAM(t testing.TB, pages int) *os.File {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "dmig-uffd-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		os.Remove(f.Name())
		os.Remove(f.Name() + ".src")
		os.Remove(f.Name() + ".out")
	})
	if err := f.Truncate(int64(pages) * PageSize); err != nil {
		t.Fatal(err)
	}
	return f
}

func startChild(t testing.TB, o childOpts) *child {
	t.Helper()
	if o.pages == 0 {
		o.pages = 64
	}
	ram := newRAM(t, o.pages)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if o.uid != 0 {
		exe = copyExecutable(t, exe)
		if err := os.Chmod(ram.Name(), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", childRAMEnv+"="+ram.Name())
	if o.spin {
		cmd.Env = append(cmd.Env, childSpinEnv+"=1")
	}
	if o.uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(o.uid), Gid: uint32(o.uid)}}
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := ramfile.Map(ram, 0, o.pages*PageSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, in: in, out: bufio.NewReader(out), ram: ram, mem: mem}
	t.Cleanup(c.stop)
	// Wait until the child has mapped the file, then find the mapping the
	// way dmig finds a VMM's RAM.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms, err := ramfile.FileMappings(cmd.Process.Pid, ram.Name())
		if err == nil && len(ms) == 1 {
			c.addr = ms[0].Start
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never mapped %s (err %v, %d mappings)", ram.Name(), err, len(ms))
		}
		time.Sleep(2 * time.Millisecond)
	}
	return c
}

// copyExecutable copies the test binary where another uid can run it.
func copyExecutable(t testing.TB, exe string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dmig-uffd-exe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst := dir + "/uffd.test"
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) page(p int) uintptr { return c.addr + uintptr(p)*PageSize }

// do sends a command and returns the reply line.
func (c *child) do(format string, args ...any) string {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.in, format+"\n", args...); err != nil {
		c.t.Fatalf("send to child: %v", err)
	}
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			c.t.Fatalf("read from child: %v", r.err)
		}
		return r.s
	case <-time.After(30 * time.Second):
		c.t.Fatalf("child did not answer %q within 30s", fmt.Sprintf(format, args...))
	}
	return ""
}

// fds lists the child's open fds as "N -> target".
func (c *child) fds() map[string]string {
	c.t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", c.pid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		l, _ := os.Readlink(dir + "/" + e.Name())
		out[e.Name()] = l
	}
	return out
}

// state is the process state letter from /proc/PID/stat (R, S, T, ...).
func (c *child) state() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.pid()))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return strings.Fields(s[i+1:])[0]
}

func (c *child) stop() {
	c.once.Do(func() {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		ramfile.Unmap(c.mem)
	})
}

// hammer reads pages of mem from threads OS threads at once and checks each
// against pattern(page, version). With random, each thread reads iters
// random pages (threads often collide on a page); otherwise thread k reads
// pages k, k+threads, ... in order (every read a distinct page). It reports
// read latencies. Nothing on the read path allocates, so the faulting
// threads never wait for this process's garbage collector.
func hammer(mem []byte, threads, iters, version int, random bool) string {
	pages := len(mem) / PageSize
	want := make([]uint32, pages)
	buf := make([]byte, PageSize)
	for p := range pages {
		pattern(p, version, buf)
		want[p] = crcOf(buf)
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	lat := make([][]time.Duration, threads)
	bad := make([]int, threads)
	var wg sync.WaitGroup
	start := time.Now()
	for th := range threads {
		lat[th] = make([]time.Duration, 0, iters)
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			x := uint64(th)*0x9E3779B97F4A7C15 + 1
			for i := range iters {
				var p int
				if random {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
					p = int(x % uint64(pages))
				} else {
					p = th + i*threads
					if p >= pages {
						break
					}
				}
				t0 := time.Now()
				c := crc32.Checksum(mem[p*PageSize:(p+1)*PageSize], table)
				lat[th] = append(lat[th], time.Since(t0))
				if c != want[p] {
					bad[th]++
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	nbad := 0
	for th := range threads {
		all = append(all, lat[th]...)
		nbad += bad[th]
	}
	slices.Sort(all)
	if len(all) == 0 {
		return "err no reads"
	}
	return fmt.Sprintf("ok reads=%d bad=%d ns=%d p50=%d p99=%d", len(all), nbad, elapsed.Nanoseconds(),
		all[len(all)/2].Nanoseconds(), all[len(all)*99/100].Nanoseconds())
}
