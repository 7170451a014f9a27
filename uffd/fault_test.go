package uffd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/internal/ramfile"
)

// TestMissingFaults serves hole-punched pages of a child's RAM with the
// controller's bytes: plain reads, a write fault, a pread into a missing
// page (a kernel write fault inside a syscall) and a pwrite from one (a
// kernel read fault).
func TestMissingFaults(t *testing.T) {
	const pages = 64
	c := startChild(t, childOpts{pages: pages})
	u, err := Attach(c.pid(), destFeatures)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	src := make([]byte, pages*PageSize)
	for p := range pages {
		pattern(p, 1, src[p*PageSize:(p+1)*PageSize])
	}
	// The source file the child preads from.
	fileData := make([]byte, PageSize)
	pattern(999, 9, fileData)
	if err := os.WriteFile(c.ram.Name()+".src", fileData, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ramfile.PunchHole(c.ram, 0, pages*PageSize); err != nil {
		t.Fatal(err)
	}
	r := Range{Start: c.addr, Len: pages * PageSize}
	if _, err := u.Register(r, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var faults []Msg
	stop := serveWith(t, u, func(m Msg) error {
		mu.Lock()
		faults = append(faults, m)
		mu.Unlock()
		page := m.Addr &^ (PageSize - 1)
		off := page - c.addr
		_, _, err := u.CopyRange(page, src[off:off+PageSize], 0)
		return err
	})
	// Reads of pages 0..39.
	var want strings.Builder
	var cmd strings.Builder
	want.WriteString("ok")
	cmd.WriteString("read")
	for p := range 40 {
		fmt.Fprintf(&cmd, " %d", p)
		fmt.Fprintf(&want, " %s", hex32(crcOf(src[p*PageSize:(p+1)*PageSize])))
	}
	if got := c.do("%s", cmd.String()); got != want.String() {
		t.Fatalf("child read served pages:\n got %s\nwant %s", got, want.String())
	}
	// A write fault: the child writes version 5 over page 40.
	if got := c.do("write 5 40"); got != "ok" {
		t.Fatal(got)
	}
	exp := make([]byte, PageSize)
	pattern(40, 5, exp)
	if !bytes.Equal(c.mem[40*PageSize:41*PageSize], exp) {
		t.Error("page 40 does not hold the child's write")
	}
	// pread(2) into missing page 41: the fault is raised inside the kernel.
	if got, w := c.do("pread 0 41"), "ok "+hex32(crcOf(fileData)); got != w {
		t.Fatalf("pread into missing page: %q, want %q", got, w)
	}
	// pwrite(2) from missing page 42: the kernel reads the page.
	if got := c.do("pwrite 42"); got != "ok" {
		t.Fatal(got)
	}
	out, err := os.ReadFile(c.ram.Name() + ".out")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, src[42*PageSize:43*PageSize]) {
		t.Error("pwrite from a missing page wrote other bytes than the served page")
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	sawWrite := false
	for _, m := range faults {
		if m.Addr < c.addr || m.Addr >= c.addr+pages*PageSize {
			t.Errorf("fault outside the registered range: %+v", m)
		}
		if m.TID == 0 {
			t.Errorf("fault without a thread id: %+v", m)
		}
		sawWrite = sawWrite || m.Write
	}
	if len(faults) < 43 {
		t.Errorf("%d faults, want one per touched page (43)", len(faults))
	}
	if !sawWrite {
		t.Error("no fault carried the write flag")
	}
	// The child's pages not touched are still holes (never faulted).
	if err := u.Unregister(r); err != nil {
		t.Fatal(err)
	}
}

// TestCloseWhileWaiting closes the controller's uffd while the child waits
// on a missing page: the kernel releases the child, and on shared memory it
// sees a zero page — the VM would run on wrong memory, which is why dmig
// never closes a destination uffd with faults outstanding.
func TestCloseWhileWaiting(t *testing.T) {
	c := startChild(t, childOpts{pages: 8})
	u, err := Attach(c.pid(), destFeatures)
	if err != nil {
		t.Fatal(err)
	}
	src := make([]byte, PageSize)
	pattern(2, 3, src)
	copy(c.mem[2*PageSize:], src) // the page had data...
	if err := ramfile.PunchHole(c.ram, 2*PageSize, PageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Register(Range{Start: c.page(2), Len: PageSize}, ModeMissing); err != nil {
		t.Fatal(err)
	}
	reply := make(chan string, 1)
	go func() {
		fmt.Fprintf(c.in, "read 2\n")
		s, _ := c.out.ReadString('\n')
		reply <- strings.TrimSpace(s)
	}()
	// Wait for the fault to be queued, without serving it.
	fds := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 10000); err != nil || n != 1 {
		t.Fatalf("no fault arrived: %d %v", n, err)
	}
	select {
	case s := <-reply:
		t.Fatalf("child answered %q while its page was missing", s)
	case <-time.After(50 * time.Millisecond):
	}
	start := time.Now()
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-reply:
		zero := make([]byte, PageSize)
		if want := "ok " + hex32(crcOf(zero)); s != want {
			t.Fatalf("child read %q after close, want a zero page %q", s, want)
		}
		t.Logf("child released %v after close, reading a zero page", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("child still blocked 5s after the uffd was closed")
	}
	if _, err := u.Copy(c.page(2), src, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("copy after close: %v, want ErrClosed", err)
	}
}

// selfRAM maps a fresh shm file of n pages into this process.
func selfRAM(t testing.TB, pages int) (*os.File, []byte) {
	t.Helper()
	f := newRAM(t, pages)
	mem, err := ramfile.Map(f, 0, pages*PageSize, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ramfile.Unmap(mem) })
	return f, mem
}

func addrOf(b []byte) uintptr { return uintptr(unsafePointer(b)) }

// TestCopyModes covers EEXIST, partial ranges, ZEROPAGE, WAKE and COPY with
// and without MODE_WP, in this process.
func TestCopyModes(t *testing.T) {
	const pages = 16
	f, mem := selfRAM(t, pages)
	u, err := Open(FeatureMissingShmem | DirtyFeatures)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	base := addrOf(mem)
	r := Range{Start: base, Len: pages * PageSize}
	if _, err := u.Register(r, ModeMissing|ModeWP); err != nil {
		t.Fatal(err)
	}
	src := make([]byte, 4*PageSize)
	for i := range 4 {
		pattern(i, 1, src[i*PageSize:(i+1)*PageSize])
	}
	// Pages 0-3 placed; placing page 1 again is EEXIST.
	if n, err := u.Copy(base, src, 0); err != nil || n != 4*PageSize {
		t.Fatalf("copy 4 pages: %d %v", n, err)
	}
	if _, err := u.Copy(base+PageSize, src[:PageSize], 0); !errors.Is(err, ErrExists) || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("copy onto a present page: %v, want ErrExists", err)
	}
	// Copy over 2..5 stops at 2; CopyRange skips 2 and 3 and places 4, 5.
	if n, err := u.Copy(base+2*PageSize, src, 0); !errors.Is(err, ErrExists) || n != 0 {
		t.Fatalf("copy over present pages: %d %v", n, err)
	}
	placed, present, err := u.CopyRange(base+2*PageSize, src, 0)
	if err != nil || placed != 2*PageSize || present != 2*PageSize {
		t.Fatalf("copy range: placed %d present %d err %v", placed, present, err)
	}
	if !bytes.Equal(mem[4*PageSize:6*PageSize], src[2*PageSize:]) {
		t.Error("copy range placed the wrong bytes")
	}
	// ZEROPAGE fills 6..7 with zeros; again is EEXIST.
	if n, err := u.ZeroPage(Range{Start: base + 6*PageSize, Len: 2 * PageSize}, false); err != nil || n != 2*PageSize {
		t.Fatalf("zeropage: %d %v", n, err)
	}
	if _, err := u.ZeroPage(Range{Start: base + 6*PageSize, Len: PageSize}, false); !errors.Is(err, ErrExists) {
		t.Fatalf("zeropage onto a present page: %v", err)
	}
	if !bytes.Equal(mem[6*PageSize:8*PageSize], make([]byte, 2*PageSize)) {
		t.Error("zeropage left non-zero bytes")
	}
	if err := u.Wake(r); err != nil {
		t.Fatal(err)
	}
	// Dirty tracking over pages placed with and without MODE_WP.
	tr, err := u.TrackDirty(r)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := u.Copy(base+8*PageSize, src[:PageSize], CopyWP); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Copy(base+9*PageSize, src[:PageSize], 0); err != nil {
		t.Fatal(err)
	}
	got, err := tr.Collect(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Range{{Start: base + 9*PageSize, Len: PageSize}}; !equalRanges(got, want) {
		t.Errorf("after COPY: written %v, want only the page copied without MODE_WP %v", got, want)
	}
	mem[8*PageSize] = 1 // a write to the MODE_WP page is tracked
	got, err = tr.Collect(got[:0])
	if err != nil {
		t.Fatal(err)
	}
	if want := []Range{{Start: base + 8*PageSize, Len: PageSize}}; !equalRanges(got, want) {
		t.Errorf("after a write to a MODE_WP page: written %v, want %v", got, want)
	}
	// Explicit WRITEPROTECT on and off.
	if err := u.WriteProtect(Range{Start: base, Len: PageSize}, false, false); err != nil {
		t.Fatal(err)
	}
	if err := u.WriteProtect(Range{Start: base, Len: PageSize}, true, false); err != nil {
		t.Fatal(err)
	}
	if err := u.Unregister(r); err != nil {
		t.Fatal(err)
	}
	_ = f
}

func equalRanges(a, b []Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRegisterBusy: a second uffd on a registered range gets EBUSY, with an
// error that says what to do.
func TestRegisterBusy(t *testing.T) {
	_, mem := selfRAM(t, 4)
	u1, err := Open(FeatureMissingShmem)
	if err != nil {
		t.Fatal(err)
	}
	defer u1.Close()
	u2, err := Open(FeatureMissingShmem)
	if err != nil {
		t.Fatal(err)
	}
	defer u2.Close()
	r := Range{Start: addrOf(mem), Len: 4 * PageSize}
	if _, err := u1.Register(r, ModeMissing); err != nil {
		t.Fatal(err)
	}
	_, err = u2.Register(r, ModeMissing)
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "another dmig") {
		t.Fatalf("register on a taken range: %v", err)
	}
	if _, err := u1.Register(Range{Start: addrOf(mem) + 1, Len: PageSize}, ModeMissing); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("register of an unaligned range: %v", err)
	}
}

// TestManyFaults hammers one uffd with many threads of the child faulting
// at once, often on the same pages, with two resolvers: every read must see
// the right bytes, and nothing may deadlock.
//
// The faulting threads are in another process on purpose: a Go thread
// blocked on a missing page cannot be preempted, so a process that serves
// its own faults deadlocks as soon as its garbage collector stops the world.
func TestManyFaults(t *testing.T) {
	const pages = 2048
	c := startChild(t, childOpts{pages: pages})
	src := make([]byte, pages*PageSize)
	for p := range pages {
		pattern(p, 2, src[p*PageSize:(p+1)*PageSize])
	}
	u, err := Attach(c.pid(), destFeatures)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := ramfile.PunchHole(c.ram, 0, pages*PageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Register(Range{Start: c.addr, Len: pages * PageSize}, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var stats ServeStats
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- u.Serve(ctx, copyFrom(u, c.addr, src), ServeConfig{Workers: 2}, &stats)
	}()
	got := c.do("hammer 32 400 2 1")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "ok reads=12800 bad=0 ") {
		t.Fatalf("hammer: %s", got)
	}
	t.Logf("%s; faults %d, duplicates %d", got, stats.Faults.Load(), stats.Duplicates.Load())
	if stats.Faults.Load() == 0 || stats.Faults.Load() > pages {
		t.Errorf("%d faults served for %d pages", stats.Faults.Load(), pages)
	}
}

// TestRemoveEvent: madvise(MADV_REMOVE) on a registered range is reported
// as a REMOVE event with its bounds.
func TestRemoveEvent(t *testing.T) {
	_, mem := selfRAM(t, 8)
	u, err := Open(FeatureMissingShmem | FeatureEventRemove | FeatureEventUnmap)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	base := addrOf(mem)
	if _, err := u.Register(Range{Start: base, Len: 8 * PageSize}, ModeMissing); err != nil {
		t.Fatal(err)
	}
	events := make(chan Msg, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- u.Serve(ctx, HandlerFunc(func(context.Context, Msg) error { return errors.New("no fault expected") }),
			ServeConfig{Event: func(m Msg) error { events <- m; return nil }}, nil)
	}()
	if err := unix.Madvise(mem[2*PageSize:4*PageSize], unix.MADV_REMOVE); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-events:
		if m.Kind != EventRemove || m.Start != base+2*PageSize || m.End != base+4*PageSize {
			t.Errorf("event %+v, want remove [%#x, %#x)", m, base+2*PageSize, base+4*PageSize)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no remove event")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestProbe(t *testing.T) {
	have, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	// dmig needs these; Linux >= 6.7 has all of them, so their absence on
	// such a kernel is a failure, not a skip.
	need := FeatureMissingShmem | DirtyFeatures | FeatureThreadID
	if !have.Has(need) {
		t.Fatalf("kernel offers %v, missing %v", have, need&^have)
	}
	if _, err := Open(FeatureMissingShmem | Feature(1<<62)); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("handshake asking for an unknown feature: %v, want ErrNotSupported", err)
	}
}
