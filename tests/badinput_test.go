package tests

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dmig/dmig/dbrestore"
	"github.com/dmig/dmig/internal/report"
	"github.com/dmig/dmig/precopy"
	"github.com/dmig/dmig/vmm/proc"
	"github.com/dmig/dmig/wire"
)

const smallGuest = 64 << 20

// A destination that speaks garbage: the source aborts at once, the guest
// runs on with its memory intact.
func TestGarbageDestination(t *testing.T) {
	g := startSource(t, guestOpts{size: smallGuest, writeRate: 5000})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n garbage garbage garbage"))
			c.Close()
		}
	}()
	rep, err := runSource(t, g, ln.Addr().String(), precopy.ModeHybrid, filepath.Join(t.TempDir(), "s"), nil)
	if err == nil || rep.Outcome != report.Aborted || !errors.Is(err, wire.ErrMagic) {
		t.Fatalf("migration to a garbage peer: outcome %s, err %v; want aborted with wire.ErrMagic", rep.Outcome, err)
	}
	checkSourceRuns(t, g)
}

// A peer that sends garbage to a destination is turned away before any
// guest is created, and the destination goes on to accept a real migration.
func TestGarbageSource(t *testing.T) {
	d := startDest(t, destOpts{})
	for _, junk := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "DMIG\x00\x63garbage", strings.Repeat("\xff", 4096)} {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(junk))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		c.Read(buf) // the refusal, or EOF
		c.Close()
	}
	select {
	case tt := <-d.targets:
		t.Fatalf("garbage made the destination create guest %v", tt.Paths())
	default:
	}
	g := startSource(t, guestOpts{size: smallGuest, writeRate: 5000})
	stats := filepath.Join(t.TempDir(), "dst.stats")
	rep, err := migrate(t, g, d.addr, precopy.ModeHybrid, stats)
	if err != nil {
		t.Fatalf("migration after garbage: %v", err)
	}
	if err := <-d.result; err != nil {
		t.Fatal(err)
	}
	tt := <-d.targets
	waitGuestHealthy(t, tt, stats)
	t.Logf("after garbage: %s in %.0f ms", rep.Outcome, rep.TotalMS)
}

// Two migrations of one guest at once: the second is refused as busy and
// the first completes.
func TestSecondMigrationRefused(t *testing.T) {
	g := startSource(t, guestOpts{size: 256 << 20, writeRate: 5000, fill: 1})
	d := startDest(t, destOpts{})
	p := startProxy(t, d.addr, 50<<20)
	stats := filepath.Join(t.TempDir(), "dst.stats")
	first := make(chan error, 1)
	go func() {
		_, err := migrate(t, g, p.addr(), precopy.ModeHybrid, stats)
		first <- err
	}()
	waitForwarded(t, p, 10<<20)
	rep, err := migrate(t, g, p.addr(), precopy.ModeHybrid, stats+"2")
	if !errors.Is(err, precopy.ErrBusy) || rep.Outcome != report.Aborted {
		t.Fatalf("second migration of the same guest: %v (outcome %s), want precopy.ErrBusy", err, rep.Outcome)
	}
	if err := <-first; err != nil {
		t.Fatalf("first migration: %v", err)
	}
	if err := <-d.result; err != nil {
		t.Fatal(err)
	}
	waitGuestHealthy(t, <-d.targets, stats)
}

// Bad source input: an unknown pid, a RAM file the guest does not map, a
// file that is not a whole number of pages. Each is a clear error and the
// guest runs on.
func TestBadSourceInput(t *testing.T) {
	g := startSource(t, guestOpts{size: smallGuest, writeRate: 5000})
	if _, err := proc.NewSource(1<<22+12345, []string{g.ram}, nil); err == nil || !strings.Contains(err.Error(), "guest pid") {
		t.Errorf("unknown pid: %v", err)
	}
	other := filepath.Join(g.dir, "other")
	if err := os.WriteFile(other, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDest(t, destOpts{})
	rep, err := migrateRAM(t, g, []string{other}, d.addr)
	if err == nil || !strings.Contains(err.Error(), "does not map RAM block") || rep.Outcome != report.Aborted {
		t.Errorf("RAM file the guest does not map: %v", err)
	}
	odd := filepath.Join(g.dir, "odd")
	if err := os.WriteFile(odd, make([]byte, 5000), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := migrateRAM(t, g, []string{odd}, d.addr); err == nil || !strings.Contains(err.Error(), "whole number of pages") {
		t.Errorf("RAM file of 5000 bytes: %v", err)
	}
	checkSourceRuns(t, g)
	// The CLI says so with its usage status.
	out, err := exec.Command(dmigBin, "migrate", "--to", d.addr, "--pid", "99999999", "--ram", g.ram).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "guest pid") {
		t.Errorf("dmig migrate of an unknown pid: exit %v, output %s", err, out)
	}
}

func migrateRAM(t *testing.T, g *srcGuest, ram []string, to string) (*report.Report, error) {
	t.Helper()
	src, err := proc.NewSource(g.pid(), ram, destCommand(filepath.Join(t.TempDir(), "s")))
	if err != nil {
		return &report.Report{Outcome: report.Aborted}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return precopy.Run(ctx, precopy.Config{To: to, Logger: testLogger(t, "source")}, src)
}

// A destination whose RAM directory cannot hold the guest (a full disk)
// refuses before creating anything; the source guest runs on.
func TestDestinationFull(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=32m"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := wire.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	go func() {
		result <- dbrestore.Serve(ctx, l, dbrestore.Config{Logger: testLogger(t, "dest"), NewGuest: func(h *wire.Hello) (dbrestore.Guest, error) {
			return proc.NewTarget(filepath.Join(dir, "g"), h.Command)
		}}, true, nil)
	}()
	g := startSource(t, guestOpts{size: smallGuest, writeRate: 5000})
	rep, err := migrate(t, g, l.Addr().String(), precopy.ModeHybrid, filepath.Join(t.TempDir(), "s"))
	if err == nil || rep.Outcome != report.Aborted || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("migration to a full destination: outcome %s, err %v", rep.Outcome, err)
	}
	if err := <-result; !errors.Is(err, proc.ErrNoSpace) {
		t.Errorf("destination: %v, want proc.ErrNoSpace", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "g")); len(ents) != 0 {
		t.Errorf("full destination left files: %v", ents)
	}
	checkSourceRuns(t, g)
}

// TestProgressCountsAppliedBatches: before switchover the destination
// reports the pre-copy batches it has applied (the source waits for them
// before pausing its guest), counting every bulk connection's.
func TestProgressCountsAppliedBatches(t *testing.T) {
	d := startDest(t, destOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stats := filepath.Join(t.TempDir(), "dst.stats")
	h := wire.Hello{Mode: "precopy", Guest: "progress", BulkConns: 2,
		Blocks: []wire.Block{{Name: "ram0", Size: 1 << 20}}, Command: destCommand(stats)}
	s, err := wire.Dial(ctx, d.addr, h)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	page := make([]byte, wire.PageSize)
	for i := range 3 {
		var b wire.PageBatch
		b.Reset(0, 1)
		page[0] = byte(i + 1)
		b.AddData(uint64(i), page)
		if err := s.Bulk[i%2].WriteFrame(ctx, &b); err != nil {
			t.Fatal(err)
		}
	}
	for {
		m, err := s.Control.ReadFrame(ctx)
		if err != nil {
			t.Fatalf("no Progress counting the 3 batches: %v", err)
		}
		p, ok := m.(*wire.Progress)
		if !ok {
			t.Fatalf("destination sent %v before switchover, want Progress", m.Type())
		}
		if p.Batches > 3 {
			t.Fatalf("Progress counts %d batches applied, 3 were sent", p.Batches)
		}
		if p.Batches == 3 {
			break
		}
	}
	if err := s.Control.WriteFrame(ctx, &wire.Abort{Reason: "test done"}); err != nil {
		t.Fatal(err)
	}
	if err := <-d.result; err == nil {
		t.Fatal("destination session succeeded after the source aborted")
	}
	tt := <-d.targets
	select {
	case <-tt.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("destination guest of the aborted session still alive")
	}
}

// TestLateBatchFailsSessionOnly: a misbehaving source sends a pre-copy
// batch (a storage reference) after its Switchover, when the restore has
// already been carried over. The destination fails that session with a
// protocol error and runs on; it does not crash (which would take every
// session of the serve, and post-copy guests' pages, with it).
func TestLateBatchFailsSessionOnly(t *testing.T) {
	d := startDest(t, destOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stats := filepath.Join(t.TempDir(), "dst.stats")
	h := wire.Hello{Mode: "hybrid", Guest: "late-batch", BulkConns: 1, Flags: wire.FlagStorageRefs | wire.FlagPostcopy,
		Blocks: []wire.Block{{Name: "ram0", Size: 1 << 20}}, Command: destCommand(stats)}
	s, err := wire.Dial(ctx, d.addr, h)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Control.WriteFrame(ctx, &wire.IterationEnd{Iteration: 1, Batches: []uint64{0}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Control.WriteFrame(ctx, &wire.Switchover{Iteration: 1}); err != nil {
		t.Fatal(err)
	}
	// Let the destination carry its restore over before the late batch.
	time.Sleep(300 * time.Millisecond)
	var b wire.PageBatch
	b.Reset(0, 1)
	b.AddRef(3, wire.Ref{Disk: 1, Offset: 4096})
	if err := s.Bulk[0].WriteFrame(ctx, &b); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := s.Control.ReadFrame(ctx)
		if err != nil {
			t.Fatalf("destination closed without an error message: %v", err)
		}
		// Error before Ready; after it (the destination may be waiting for
		// Go), Abort: its guest never ran, so the source may resume.
		if e, ok := m.(*wire.Error); ok {
			if e.Code != wire.ErrorProtocol || !strings.Contains(e.Message, "after the switchover's last") {
				t.Fatalf("destination error %v %q, want a protocol error about the late batch", e.Code, e.Message)
			}
			break
		}
		if a, ok := m.(*wire.Abort); ok {
			if !strings.Contains(a.Reason, "after the switchover's last") || !strings.Contains(a.Reason, "never resumed") {
				t.Fatalf("destination abort %q, want the late batch, and that its guest never resumed", a.Reason)
			}
			break
		}
	}
	if err := <-d.result; err == nil || !strings.Contains(err.Error(), "after the switchover's last") {
		t.Fatalf("destination session: %v, want the late batch's protocol error", err)
	}
	tt := <-d.targets
	select {
	case <-tt.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("destination guest of the failed session still alive")
	}
}
