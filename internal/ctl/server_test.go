package ctl

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmig/dmig/internal/bandwidth"
	"github.com/dmig/dmig/internal/report"
)

func live(name string, goSent bool) func() report.Live {
	return func() report.Live {
		return report.Live{Role: report.RoleSource, Guest: name, Session: hex.EncodeToString([]byte(name)), Phase: report.PhasePrecopy,
			GoSent: goSent, Started: time.Now().Add(-time.Second), Left: report.PagesLeft{Data: 10}}
	}
}

// TestServerListCancel: entries are listed by every name, a cancel reaches
// the migration's Cancel with the reason, a refusal comes back as a
// RefusedError, and a stale socket is removed.
func TestServerListCancel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	s, err := Listen(dir, "migrate", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, p := range []string{dir, s.Path()} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]os.FileMode{dir: 0o700, s.Path(): 0o600}[p]; st.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	var got error
	s.Add(Registration{Names: []string{"pid:42"}, Live: live("ram0:42", false), Cancel: func(r error) error { got = r; return nil }})
	s.Add(Registration{Live: live("vm2", true), Cancel: func(error) error { return ErrPastGo }})
	// A dead process's socket: a file nothing listens on.
	stale := filepath.Join(dir, "migrate-999999.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()

	ctx := context.Background()
	es, err := List(ctx, dir)
	if err != nil || len(es) != 2 {
		t.Fatalf("list: %v, %+v", err, es)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale socket left: %v", err)
	}
	for _, name := range []string{"pid:42", "ram0:42", "72616D30"} {
		if m := Match(es, name); len(m) != 1 || m[0].Guest != "ram0:42" {
			t.Fatalf("match %q: %+v", name, m)
		}
	}
	if m := Match(es, "0123"); len(m) != 0 {
		t.Fatalf("a 4-digit session prefix matched %+v", m)
	}
	e := Match(es, "pid:42")[0]
	if !e.Cancellable || e.Command != "migrate" || e.PID != os.Getpid() {
		t.Fatalf("entry %+v", e)
	}
	if _, err := Cancel(ctx, e, "maintenance"); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(got, ErrCancelled) || !strings.Contains(got.Error(), "maintenance") {
		t.Fatalf("cancel reason %v", got)
	}
	vm2 := Match(es, "vm2")[0]
	var refused *RefusedError
	if _, err := Cancel(ctx, vm2, ""); !errors.As(err, &refused) || !strings.Contains(err.Error(), "go was sent") {
		t.Fatalf("cancel after go: %v", err)
	}
	if vm2.Cancellable {
		t.Fatalf("entry after go says cancellable: %+v", vm2)
	}
}

// TestListenSweeps: a starting process removes the sockets of dead ones
// and leaves the live ones.
func TestListenSweeps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	live, err := Listen(dir, "serve", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	stale := filepath.Join(dir, "drain-999999.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	s, err := Listen(dir, "migrate", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale socket left: %v", err)
	}
	if _, err := os.Stat(live.Path()); err != nil {
		t.Fatalf("a live socket was removed: %v", err)
	}
}

// TestServerEnd: an ended entry is listed with its outcome for the
// linger, then goes; without a linger it goes at once.
func TestServerEnd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	s, err := Listen(dir, "serve", Options{Linger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := s.Add(Registration{Live: live("g", false)})
	h.End(report.Aborted, errors.New("source aborted"))
	es, err := List(context.Background(), dir)
	if err != nil || len(es) != 1 || es[0].Outcome != "aborted" || es[0].Error != "source aborted" || es[0].Cancellable {
		t.Fatalf("ended entry: %v, %+v", err, es)
	}
	if _, err := Cancel(context.Background(), es[0], ""); err == nil {
		t.Fatal("an ended migration accepted a cancel")
	}
	s.linger = 0
	if es := s.list(time.Now()); len(es) != 0 {
		t.Fatalf("entry past its linger still listed: %+v", es)
	}
}

// TestListenRefusesOpenDir: a directory others may enter is refused, not
// chmodded behind the operator's back.
func TestListenRefusesOpenDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if s, err := Listen(dir, "migrate", Options{}); err == nil || !strings.Contains(err.Error(), "chmod 0700") {
		s.Close()
		t.Fatalf("listen in a 0755 directory: %v", err)
	}
}

// TestServerSetBandwidth: set-bandwidth changes the entry's bucket, which
// status then shows with the change counted; an entry without a bucket,
// a rate below the smallest cap and an ended migration are refused with
// the reason, the cap left as it was.
func TestServerSetBandwidth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ctl")
	s, err := Listen(dir, "drain", Options{Linger: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	total := bandwidth.New(50_000_000, nil, nil)
	l := bandwidth.New(8_000_000, nil, total)
	h := s.Add(Registration{Names: []string{"db-a"}, Live: live("ram0:1", false), Bandwidth: l})
	s.Add(Registration{Live: live("dst", false)})
	ctx := context.Background()
	es, err := List(ctx, dir)
	if err != nil || len(es) != 2 {
		t.Fatalf("list: %v, %+v", err, es)
	}
	e := Match(es, "db-a")[0]
	if e.MaxBandwidth == nil || *e.MaxBandwidth != 8_000_000 || e.SharedMaxBandwidth != 50_000_000 || e.BandwidthChanges != 0 {
		t.Fatalf("entry %+v", e)
	}
	if _, err := SetBandwidth(ctx, e, 1000); err == nil || !strings.Contains(err.Error(), "smallest cap") || l.Rate() != 8_000_000 {
		t.Fatalf("set-bandwidth 1000: %v, cap %d", err, l.Rate())
	}
	got, err := SetBandwidth(ctx, e, 20_000_000)
	if err != nil || l.Rate() != 20_000_000 || got.MaxBandwidth == nil || *got.MaxBandwidth != 20_000_000 || got.BandwidthChanges != 1 {
		t.Fatalf("set-bandwidth 20M: %v, cap %d, entry %+v", err, l.Rate(), got)
	}
	if got, err := SetBandwidth(ctx, e, 0); err != nil || l.Rate() != 0 || *got.MaxBandwidth != 0 {
		t.Fatalf("set-bandwidth 0: %v, cap %d", err, l.Rate())
	}
	dst := Match(es, "dst")[0]
	var refused *RefusedError
	if _, err := SetBandwidth(ctx, dst, 20_000_000); !errors.As(err, &refused) || !strings.Contains(err.Error(), ErrNoCap.Error()) || dst.MaxBandwidth != nil {
		t.Fatalf("set-bandwidth of an entry without a cap: %v (%+v)", err, dst)
	}
	if _, err := SetTotal(ctx, dir, os.Getpid(), 60_000_000); err == nil || !strings.Contains(err.Error(), "no total cap") {
		t.Fatalf("set-bandwidth of a total before there is one: %v", err)
	}
	s.SetTotal(total)
	if from, err := SetTotal(ctx, dir, os.Getpid(), 60_000_000); err != nil || from != 50_000_000 || total.Rate() != 60_000_000 || l.SharedRate() != 60_000_000 {
		t.Fatalf("set-bandwidth of the total: %v, from %d, now %d", err, from, total.Rate())
	}
	if _, err := SetTotal(ctx, dir, 999999, 60_000_000); !errors.Is(err, ErrNotFound) {
		t.Fatalf("set-bandwidth of a drain that is not there: %v", err)
	}
	h.End(report.Completed, nil)
	if _, err := SetBandwidth(ctx, e, 20_000_000); !errors.As(err, &refused) || !strings.Contains(err.Error(), "already ended") || l.Rate() != 0 {
		t.Fatalf("set-bandwidth after the end: %v, cap %d", err, l.Rate())
	}
}
