package layout

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
	"time"
)

func TestServeFetch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var takes atomic.Uint64
	get := func(ctx context.Context) (*Layout, error) {
		n := takes.Add(1)
		if n == 3 {
			return nil, errors.New("mysqld went away")
		}
		return &Layout{Generation: n, Disks: disks("vda"), Runs: []Run{{GuestPage: n, Pages: 4, Offset: 8192}}}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, get) }()

	l, err := Fetch(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if want := (&Layout{Generation: 1, Disks: disks("vda"), Runs: []Run{{GuestPage: 1, Pages: 4, Offset: 8192}}}); !reflect.DeepEqual(l, want) {
		t.Errorf("Fetch = %+v, want %+v", l, want)
	}

	// One connection, several requests: without refresh the cached layout
	// comes back and get is not called.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i, c := range []struct {
		refresh bool
		gen     uint64
		err     error
	}{
		{false, 1, nil},
		{true, 2, nil},
		{false, 2, nil},
		{true, 0, ErrRemote},
		{false, 2, nil}, // a failed take keeps the last good layout
		{true, 4, nil},
	} {
		l, err := Request(ctx, conn, c.refresh)
		if !errors.Is(err, c.err) || err == nil && l.Generation != c.gen {
			t.Errorf("request %d (refresh %v): %+v, %v; want generation %d, %v", i, c.refresh, l, err, c.gen, c.err)
		}
		if err != nil && c.err == ErrRemote && err.Error() != "layout server error: mysqld went away" {
			t.Errorf("remote error text: %q", err)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := Fetch(context.Background(), ln.Addr().String()); err == nil {
		t.Errorf("Fetch after Serve returned: no error")
	}
}

func TestServeConnResyncs(t *testing.T) {
	srv := NewServer(func(context.Context) (*Layout, error) {
		return &Layout{Generation: 9}, nil
	})
	a, b := net.Pipe()
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(ctx, b) }()

	// Noise, a partial magic, a request of an unknown version, then a
	// real request: one response, to the real request.
	if _, err := fmt.Fprint(a, "garbage DML DMLQ\x07\x01"); err != nil {
		t.Fatal(err)
	}
	l, err := Request(ctx, a, true)
	if err != nil || l.Generation != 9 {
		t.Fatalf("Request after noise = %+v, %v", l, err)
	}
	a.Close()
	if err := <-done; err != nil {
		t.Errorf("ServeConn at end of stream = %v, want nil", err)
	}
}

func TestRequestCancel(t *testing.T) {
	a, b := net.Pipe() // nobody answers on b
	defer a.Close()
	defer b.Close()
	go func() { // swallow the request
		buf := make([]byte, 64)
		b.Read(buf)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Request(ctx, a, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Request with no answer = %v, want DeadlineExceeded", err)
	}
}

func TestRequestRejectsBadResponse(t *testing.T) {
	for _, c := range []struct {
		name string
		resp []byte
		want error
	}{
		{"unknown status", []byte{7, 0, 0, 0, 0}, ErrMalformed},
		{"huge layout", []byte{0, 0x7f, 0xff, 0xff, 0xff}, ErrTooLarge},
		{"huge error", []byte{1, 0, 0x10, 0, 1}, ErrTooLarge},
		{"bad layout", append([]byte{0, 0, 0, 0, 9}, "DMLY\x01xxxx"...), ErrChecksum},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			go func() {
				defer b.Close()
				buf := make([]byte, reqSize)
				b.Read(buf)
				b.Write(c.resp)
			}()
			if _, err := Request(context.Background(), a, false); !errors.Is(err, c.want) {
				t.Errorf("Request = %v, want %v", err, c.want)
			}
		})
	}
}

// TestFetchUnix: a QEMU guest's virtio-serial port is a unix socket on the
// host; "unix:PATH" reaches it.
func TestFetchUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	want := &Layout{Generation: 7, Disks: disks("vda"), Runs: []Run{{GuestPage: 9, Pages: 2, Offset: 4096}}}
	go Serve(ctx, ln, func(context.Context) (*Layout, error) { return want, nil })
	l, err := Fetch(ctx, "unix:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(l, want) {
		t.Fatalf("Fetch(unix:) = %+v, want %+v", l, want)
	}
	if _, err := Fetch(ctx, "unix:"+path+".missing"); err == nil {
		t.Fatal("Fetch from a missing socket succeeded")
	}
}

// TestServerMaxAgeRefresh: a server refreshed in the background answers a
// request without the refresh flag from its cache, unless the cache is
// older than MaxAge.
func TestServerMaxAgeRefresh(t *testing.T) {
	var takes atomic.Uint64
	s := NewServer(func(context.Context) (*Layout, error) {
		n := takes.Add(1)
		return &Layout{Generation: n, Disks: disks("vda")}, nil
	})
	s.MaxAge = 200 * time.Millisecond
	ctx := context.Background()
	if err := s.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "l.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.Serve(cctx, ln)
	get := func(refresh bool) uint64 {
		t.Helper()
		l, err := FetchWith(ctx, "unix:"+path, refresh)
		if err != nil {
			t.Fatal(err)
		}
		return l.Generation
	}
	if g := get(false); g != 1 || takes.Load() != 1 {
		t.Fatalf("cached request: generation %d after %d takes, want the background one (1)", g, takes.Load())
	}
	time.Sleep(300 * time.Millisecond)
	if g := get(false); g != 2 {
		t.Fatalf("request past MaxAge: generation %d, want a new take (2)", g)
	}
	if g := get(true); g != 3 {
		t.Fatalf("refresh: generation %d, want 3", g)
	}
}
